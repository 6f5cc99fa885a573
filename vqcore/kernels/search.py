"""Blocked exact nearest-code search.

For a block of rows, one GEMM writes ``x @ (alpha * c).T`` into a per-thread
buffer; a fused pass adds the per-code bias and keeps the row minimum, so the
full ``n x k`` matrix never exists.  Euclidean: ``alpha = -2``, ``bias = |c|^2``
(``|x|^2`` does not change the argmin and is added only when asked for).
Cosine: ``alpha = -1``, ``bias = 0`` (largest dot product = smallest negative).
"""
import numpy as np
from numba import prange

from .._config import jit

# Largest distance block per thread: big blocks amortise BLAS packing of the
# codebook, and the block is read once right after the GEMM wrote it.
MAX_BLOCK_BYTES = 32 << 20
MAX_BLOCK_ROWS = 1024


def block_rows(n, k, itemsize, nthreads):
    """Rows per block: as many as fit the byte budget, but enough blocks for every thread."""
    rows = max(16, min(MAX_BLOCK_ROWS, MAX_BLOCK_BYTES // max(1, k * itemsize)))
    per_thread = -(-n // max(1, nthreads))
    return max(1, min(rows, per_thread))


@jit(inline="always")
def row_argmin(row, bias):
    """First index of the smallest ``row[j] + bias[j]``, and that value.

    Four independent running minima (codes ``j % 4``) break the dependency
    chain of a single minimum, which halves the pass; a code replaces its
    chain's best only when strictly smaller, and the chains are merged with
    ties going to the lowest index, so the result is the first minimum.
    NaN never compares smaller, so a row of NaN keeps ``inf``: callers detect
    bad input from a non-finite minimum.
    """
    k = row.shape[0]
    inf = row.dtype.type(np.inf)
    m0, m1, m2, m3 = inf, inf, inf, inf
    i0, i1, i2, i3 = 0, 0, 0, 0
    k4 = k - k % 4
    for j in range(0, k4, 4):
        v = row[j] + bias[j]
        if v < m0:
            m0, i0 = v, j
        v = row[j + 1] + bias[j + 1]
        if v < m1:
            m1, i1 = v, j + 1
        v = row[j + 2] + bias[j + 2]
        if v < m2:
            m2, i2 = v, j + 2
        v = row[j + 3] + bias[j + 3]
        if v < m3:
            m3, i3 = v, j + 3
    best, arg = m0, i0
    if m1 < best or (m1 == best and i1 < arg):
        best, arg = m1, i1
    if m2 < best or (m2 == best and i2 < arg):
        best, arg = m2, i2
    if m3 < best or (m3 == best and i3 < arg):
        best, arg = m3, i3
    for j in range(k4, k):
        v = row[j] + bias[j]
        if v < best:
            best, arg = v, j
    return arg, best


@jit(parallel=True)
def assign_blocked(x, codes_t, bias, rows, nthreads, indices, best, sums, counts):
    """Argmin over codes of ``x @ codes_t + bias`` for every row of ``x``.

    With non-empty ``sums``/``counts`` it also accumulates, per thread, the
    sum and number of rows assigned to each code (one Lloyd step's statistics,
    fused into the same pass over the block).

    Parameters
    ----------
    x : (n, d) float, C-contiguous                       # IN
    codes_t : (d, k) float, C-contiguous, alpha * c.T    # IN
    bias : (k,) float                                    # IN
    rows, nthreads : int                                 # IN block rows, threads
    indices : (n,) int64                                 # OUT
    best : (n,) float                                    # OUT minimum value per row
    sums : (nthreads, k, d) float64, zeroed, or (0, 0, 0)   # INOUT per-thread slabs
    counts : (nthreads, k) float64, zeroed, or (0, 0)       # INOUT per-thread slabs
    """
    n, d = x.shape
    k = codes_t.shape[1]
    accumulate = sums.shape[0] > 0
    nblocks = (n + rows - 1) // rows
    slabs = np.empty((nthreads, rows * k), dtype=x.dtype)
    for t in prange(nthreads):
        slab = slabs[t]
        for b in range(t, nblocks, nthreads):
            start = b * rows
            stop = min(n, start + rows)
            block = slab[: (stop - start) * k].reshape((stop - start, k))
            np.dot(x[start:stop], codes_t, block)
            for i in range(stop - start):
                j, m = row_argmin(block[i], bias)
                indices[start + i] = j
                best[start + i] = m
                if accumulate:
                    counts[t, j] += 1.0
                    row = x[start + i]
                    acc = sums[t, j]
                    for f in range(d):
                        acc[f] += row[f]
