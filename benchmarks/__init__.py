"""Benchmark suite: vqcore and its peers timed in the same run. Run ``python -m benchmarks --help``.

Kept import-free: the start-up probes run as ``python -m benchmarks.<probe>``
and must not pay for numpy or numba before they start their clocks.
"""
