"""Thread settings and a description of the machine and libraries, for the JSON record.

Threads are set through each library's API, never through environment
variables: the suite reads the environment and changes nothing in it.
"""
from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

#: Distributions whose versions go into the record (missing ones are recorded as None).
DISTRIBUTIONS = (
    "vqcore", "numpy", "numba", "scipy", "scikit-learn", "faiss-cpu", "torch",
    "vector-quantize-pytorch", "einops", "threadpoolctl",
)

#: Environment variables that change threading or JIT caching; recorded as found.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
    "NUMBA_THREADING_LAYER", "NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT", "VQCORE_CACHE_DIR",
)

# threadpoolctl applies limits to the libraries loaded when it is called, so the
# limiter is re-created before each implementation (torch or faiss may have loaded
# their own OpenMP since); keeping a reference keeps the limits in force.
_limits = None


def _torch_before_numba_threads() -> None:
    """Import torch, if installed, before numba starts its OpenMP threads.

    A vqtorch program always has: ``import vqtorch`` loads torch first. The other order
    (numba's OpenMP pool started, then torch imported) leaves torch's single-threaded
    elementwise kernels 5-80x slower on this machine (a tanh of 16,384 floats: median
    4 ms instead of 0.05 ms, in a plain script), which would time the process, not the layer.
    """
    if "torch" not in sys.modules:
        try:
            import torch  # noqa: F401
        except ImportError:
            pass


def apply_threads(threads: int) -> None:
    """Give numba, BLAS/OpenMP, torch and faiss ``threads`` threads each, where loaded.

    numba's OpenMP pool can reset torch's thread count (see DESIGN.md), hence
    this is called before every implementation rather than once.
    """
    global _limits
    _torch_before_numba_threads()
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    _limits = threadpool_limits(limits=threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(threads)


def thread_snapshot() -> dict:
    """Thread counts as each loaded library reports them right now."""
    import numba
    from threadpoolctl import threadpool_info

    snapshot = {
        "numba": numba.get_num_threads(),
        "numba_threading_layer": _numba_layer(),
        "threadpoolctl": [
            {key: info.get(key) for key in ("user_api", "internal_api", "num_threads", "version", "filepath")}
            for info in threadpool_info()
        ],
    }
    if "torch" in sys.modules:
        snapshot["torch"] = sys.modules["torch"].get_num_threads()
    if "faiss" in sys.modules:
        snapshot["faiss"] = sys.modules["faiss"].omp_get_max_threads()
    return snapshot


def _numba_layer():
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return None


def load_average() -> list:
    """The 1, 5 and 15 minute load averages (other processes competing for the cores)."""
    try:
        return list(os.getloadavg())
    except OSError:
        return [math.nan] * 3


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or platform's best guess."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    """Installed versions of the libraries compared, None where absent."""
    found = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    if found["vqcore"] is None:  # a checkout used in place, not pip-installed
        try:
            found["vqcore"] = __import__("vqcore").__version__
        except (ImportError, AttributeError):
            pass
    return found


def source_revision() -> dict:
    """The checkout's git commit and whether it has uncommitted changes (read-only git calls)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args):
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def describe(threads: int) -> dict:
    """Everything needed to interpret the timings later: machine, threads, versions."""
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads_requested": threads,
        "threads": thread_snapshot(),
        "environment_variables": {name: os.environ.get(name) for name in THREAD_VARIABLES},
        "versions": versions(),
        "source": source_revision(),
    }
