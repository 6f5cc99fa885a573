"""GF/s of the bf16 dot engine (``vqcore.kernels.bf16.dot``) against numpy fp32 and torch bf16.

``python -m benchmarks._probe_bf16 [--repeats 5] [--emulated] [--shapes 0,1]``

For every shape ``(n, d, k)`` each engine computes all ``n x k`` scores; rows
are processed in chunks whose output fits 256 MiB (one reused buffer per
engine), as a blocked search would.  Throughput is ``2 n d k / seconds``,
best of ``--repeats`` runs after one warm-up run.  Engines:

* ``vqcore bf16``: :func:`~vqcore.kernels.bf16.dot` (``vdpbf16ps``, fp32
  output); only where ``HAS_BF16``.  Converting ``x`` to bf16 pairs is timed
  separately (``to_bf16_pairs``), since a search converts each row once.
* ``numpy fp32``: ``np.matmul(x, c.T, out=...)``.
* ``torch bf16``: ``torch.matmul`` on bfloat16 tensors (oneDNN, bf16 output);
  skipped without torch, and on CPUs without native bf16 (``avx512_bf16`` or
  AMX), where torch falls back to a scalar path about 100x slower than fp32.
* ``vqcore emulated`` (``--emulated``): the exact emulation of the
  instruction, for CPUs without it (slow; for reference only).

Timings on a shared machine are indicative.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

SHAPES = [(65_536, 256, 1_024), (65_536, 256, 8_192), (262_144, 64, 512), (65_536, 48, 4_096)]
MAX_OUT_BYTES = 256 << 20


def _best_of(fn, repeats):
    fn()  # warm-up: compilation, page faults, thread pools
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _chunks(n, k):
    rows = max(1, min(n, MAX_OUT_BYTES // (4 * k)))
    return [(r, min(n, r + rows)) for r in range(0, n, rows)], rows


def _native_bf16():
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    return bool(features.get("avx512bf16", False) or features.get("amx-bf16", False))


def _engines(x, c, emulated):
    """Name -> zero-argument callable computing every score of x against c."""
    from vqcore.kernels import bf16

    n, d = x.shape
    k = c.shape[0]
    chunks, rows = _chunks(n, k)
    engines = {}

    buf = np.empty((rows, k), dtype=np.float32)
    ct = np.ascontiguousarray(c.T)

    def numpy_fp32():
        for r0, r1 in chunks:
            np.matmul(x[r0:r1], ct, out=buf[:r1 - r0])

    pairs = np.zeros((n, (d + 1) // 2), dtype=np.int32)
    packed = bf16.pack_codes(c)

    def convert():
        bf16.to_bf16_pairs(x, pairs)

    def vqcore(emulate):
        def run():
            for r0, r1 in chunks:
                bf16.dot(pairs[r0:r1], packed, k, out=buf[:r1 - r0], emulate=emulate)
        return run

    convert()
    if bf16.HAS_BF16:
        engines["vqcore bf16"] = vqcore(False)
        engines["  to_bf16_pairs(x)"] = convert
    if emulated:
        engines["vqcore emulated"] = vqcore(True)
    engines["numpy fp32"] = numpy_fp32
    try:
        import torch
    except ImportError:
        return engines
    if not _native_bf16():
        return engines
    xt = torch.from_numpy(x).to(torch.bfloat16)
    ctt = torch.from_numpy(c).to(torch.bfloat16).T.contiguous()
    tbuf = torch.empty((rows, k), dtype=torch.bfloat16)

    def torch_bf16():
        torch.set_num_threads(os.cpu_count() or 1)  # numba's pool may have reset it
        for r0, r1 in chunks:
            torch.matmul(xt[r0:r1], ctt, out=tbuf[:r1 - r0])

    engines["torch bf16"] = torch_bf16
    return engines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--emulated", action="store_true", help="also time the emulation")
    parser.add_argument("--shapes", default=",".join(str(i) for i in range(len(SHAPES))),
                        help="indices into SHAPES, comma-separated")
    args = parser.parse_args(argv)

    import llvmlite.binding as llvm

    from vqcore.kernels import bf16

    print(f"cpu={llvm.get_host_cpu_name()} cores={os.cpu_count()} HAS_BF16={bf16.HAS_BF16} "
          f"(timings on a shared machine are indicative)")
    rng = np.random.default_rng(0)
    for index in (int(i) for i in args.shapes.split(",")):
        n, d, k = SHAPES[index]
        x = rng.standard_normal((n, d), dtype=np.float32)
        c = rng.standard_normal((k, d), dtype=np.float32)
        flops = 2.0 * n * d * k
        times = {name: _best_of(fn, args.repeats)
                 for name, fn in _engines(x, c, args.emulated).items()}
        base = times["numpy fp32"]
        print(f"\nn={n:,} d={d} k={k:,}")
        for name, seconds in times.items():
            if name.startswith(" "):  # a preparation step, not a product
                print(f"  {name:20s} {seconds:8.4f} s")
                continue
            print(f"  {name:20s} {seconds:8.4f} s  {flops / seconds / 1e9:8.1f} GF/s  "
                  f"{base / seconds:5.2f}x numpy fp32")
    if not bf16.HAS_BF16:
        print("\nvqcore bf16: not run, this CPU lacks avx512_bf16 (or VQCORE_BF16=0).")
    if not _native_bf16():
        print("torch bf16: not run, no native bf16 on this CPU (torch would emulate it).")


if __name__ == "__main__":
    main()
