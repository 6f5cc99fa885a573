"""Thread counts for ranks that share a node.

Under ``mpiexec`` every rank starts numba, torch and BLAS pools sized to the
whole machine, so ``p`` ranks on one node run ``p x cores`` threads.  numba's
pool also resets torch's thread count when it starts.  This module picks one
count per rank -- cores divided by the ranks on this node -- and applies it to
all three pools.
"""
from __future__ import annotations

import os
import sys

__all__ = ["configure_threads", "configure_threads_once", "local_ranks"]

ENV_VAR = "VQCORE_NUM_THREADS"
# MPICH (Hydra) and Open MPI export the number of ranks on this node.
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")

_configured = False


def local_ranks() -> int | None:
    """Number of ranks the MPI launcher placed on this node, or None outside one."""
    for name in _LOCAL_SIZE_VARS:
        value = os.environ.get(name)
        if value and value.isdigit() and int(value) > 0:
            return int(value)
    return None


def _available_cores() -> tuple[int, bool]:
    """Cores this process may run on, and whether the launcher pinned it to a subset."""
    total = os.cpu_count() or 1
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return total, False
    return allowed, allowed < total


def _default_threads() -> int | None:
    """The count implied by the environment, or None when nothing asks for one."""
    value = os.environ.get(ENV_VAR)
    if value is not None:
        if not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"{ENV_VAR}={value!r} must be a positive integer, e.g. {ENV_VAR}=4")
        return int(value)
    ranks = local_ranks()
    if ranks is None:
        return None
    cores, pinned = _available_cores()
    # A launcher that pinned this rank already gave it its share of the node.
    return cores if pinned else max(1, cores // ranks)


def configure_threads(n: int | None = None) -> int:
    """Set the numba, BLAS and (if imported) torch thread counts.

    Parameters
    ----------
    n : int, optional
        Threads per process.  Default: the ``VQCORE_NUM_THREADS`` environment
        variable if set; else, under an MPI launcher, ``max(1, cores //
        local_ranks)`` with the local rank count from ``MPI_LOCALNRANKS``
        (MPICH) or ``OMPI_COMM_WORLD_LOCAL_SIZE`` (Open MPI); else nothing is
        changed.

    Returns
    -------
    int
        The numba thread count now in effect.  numba cannot grow past the
        pool size fixed at start-up (``NUMBA_NUM_THREADS``), so a larger ``n``
        is capped there for numba, while torch and BLAS get ``n``.

    Raises
    ------
    ValueError
        If ``n`` or ``VQCORE_NUM_THREADS`` is not a positive integer.

    Notes
    -----
    torch is only touched when it is already imported, so numpy-only processes
    never import it.  numba's count applies to the calling thread.
    """
    global _configured
    import numba

    if n is None:
        n = _default_threads()
    elif isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} threads must be a positive integer or None")
    _configured = True
    if n is None:
        return numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    return numba.get_num_threads()


def configure_threads_once() -> int | None:
    """Apply the environment's default once per process; later calls do nothing.

    Called when a distributed communicator is built, so a count the user set
    with :func:`configure_threads` beforehand is kept.
    """
    if _configured:
        return None
    return configure_threads()
