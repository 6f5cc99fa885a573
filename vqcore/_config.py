"""Settings shared by every kernel: JIT flags and BLAS threading.

Numba's ``cache=True`` writes compiled kernels next to the sources
(``__pycache__``); when that directory is read-only, numba falls back to a
per-user cache (``~/.cache/numba`` on Linux), and ``NUMBA_CACHE_DIR``
overrides both.  So an installed, read-only package still caches.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import numba

# Fast-math without ``nnan``/``ninf``: reductions may be reassociated (so they
# vectorise) while NaN/Inf checks keep working.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


def jit(*args, parallel=False, exact=False, **kwargs):
    """``numba.njit`` with the project's flags: cached, fast-math, GIL released.

    ``exact=True`` compiles without fast-math, for kernels whose every operation must round
    as the same numpy/torch op does (no contraction into fused multiply-adds, no reciprocals),
    and with numpy's division semantics (x / 0 is inf, not an exception), whose branch-free
    divide vectorises.
    """
    if exact:
        kwargs.setdefault("error_model", "numpy")
    return numba.njit(*args, cache=True, nogil=True, fastmath=False if exact else set(FASTMATH),
                      parallel=parallel, **kwargs)


_controller = None
_controller_lock = threading.Lock()


def _blas_controller():
    # Created lazily and only after scipy's BLAS (the one numba's np.dot calls)
    # is loaded: a controller only sees libraries loaded before it was made.
    global _controller
    if _controller is None:
        with _controller_lock:
            if _controller is None:
                import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS numba uses)
                from threadpoolctl import ThreadpoolController

                _controller = ThreadpoolController().select(user_api="blas")
    return _controller


_limit_lock = threading.Lock()
_limit_holders = 0
_limit_context = None


@contextmanager
def single_threaded_blas():
    """Hold BLAS to one thread while numba's threads each call it on their own block.

    Without this every thread's GEMM would start its own BLAS thread pool and
    oversubscribe the cores.  Safe when several Python threads search at once:
    the first to enter saves the BLAS setting and the last to leave restores
    it (a plain nested limit per thread would restore in the wrong order and
    could leave BLAS at one thread).
    """
    global _limit_holders, _limit_context
    with _limit_lock:
        if _limit_holders == 0:
            _limit_context = _blas_controller().limit(limits=1)
        _limit_holders += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_holders -= 1
            if _limit_holders == 0:
                _limit_context.restore_original_limits()
                _limit_context = None


def num_threads() -> int:
    """Threads the parallel kernels use (numba's setting)."""
    return numba.get_num_threads()
