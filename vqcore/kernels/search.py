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

    Two passes: a reduction that vectorises, then an early-exit scan for the
    first position holding the minimum (ties go to the lowest index).
    """
    k = row.shape[0]
    m = np.inf
    for j in range(k):
        m = min(m, row[j] + bias[j])
    for j in range(k):
        if row[j] + bias[j] == m:
            return j, m
    # Unreachable for finite input; keep a correct answer regardless.
    best, arg = row[0] + bias[0], 0
    for j in range(1, k):
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
