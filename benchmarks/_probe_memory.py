"""Child process for the memory workload: peak resident memory of one nearest-code search.

Usage: ``python -m benchmarks._probe_memory IMPL N D K THREADS``; prints one JSON line.
Runs alone in a fresh process so that other workloads' allocations do not blur
the peak. The kernel is warmed up on a small slice first so that JIT
compilation memory is not counted.
"""
from __future__ import annotations

import gc
import json
import resource
import sys

import numpy as np

from .core import Unavailable
from .environment import apply_threads
from .peers import gaussian, require


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} missing from /proc/self/status")


def _reset_peak() -> str:
    """Reset the kernel's peak-RSS mark to the current RSS; name the method used."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # "5" resets VmHWM (Linux >= 4.0)
        return "VmHWM after clear_refs"
    except OSError:
        return "ru_maxrss (peak since start: an upper bound)"


def _peak_kib(method: str) -> int:
    if method.startswith("VmHWM"):
        return _status_kib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _search(impl: str, codebook):
    if impl == "vqcore":
        nearest = require("vqcore", "nearest")
        return lambda x: nearest(x, codebook)
    if impl == "faiss":
        faiss = require("faiss")
        index = faiss.IndexFlatL2(codebook.shape[1])
        index.add(codebook)
        return lambda x: index.search(x, 1)
    raise ValueError(f"impl={impl!r} is not known; use 'vqcore' or 'faiss'.")


def probe(impl: str, n: int, d: int, k: int, threads: int) -> dict:
    """Peak RSS growth of one search over the resident inputs, in bytes."""
    rng = np.random.default_rng(0)
    x, codebook = gaussian(rng, n, d), gaussian(rng, k, d)
    search = _search(impl, codebook)
    apply_threads(threads)
    search(x[:512])
    gc.collect()
    method = _reset_peak()
    before = _status_kib("VmRSS") * 1024
    output = search(x)
    peak = _peak_kib(method) * 1024
    outputs = output if isinstance(output, tuple) else (output,)
    output_bytes = sum(np.asarray(part).nbytes for part in outputs)
    return {
        "status": "ok",
        "method": method,
        "input_bytes": x.nbytes + codebook.nbytes,
        "output_bytes": output_bytes,
        "rss_before_bytes": before,
        "peak_growth_bytes": peak - before,
        "extra_bytes": peak - before - output_bytes,
    }


def main(argv: list[str]) -> None:
    impl, n, d, k, threads = argv[0], *map(int, argv[1:5])
    try:
        result = probe(impl, n, d, k, threads)
    except Unavailable as exc:
        result = {"status": "not available", "reason": str(exc)}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
