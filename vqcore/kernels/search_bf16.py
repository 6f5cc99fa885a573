"""Certified exact search with bf16 scores (``vdpbf16ps``), for CPUs with avx512_bf16.

The same pass as :func:`vqcore.kernels.search.certified_assign`, with the
score GEMM done by :func:`vqcore.kernels.bf16.dot_block` on bf16-rounded
rows and codes.  The rounding to bf16 is accounted for exactly: each row's
bound uses the norms of its bf16 part and of its residual ``v - bf16(v)``
(exact in float32), so rows that bf16 represents well get a tight bound.

With ``emulate=False`` the kernel compiles only where
:data:`vqcore.kernels.bf16.HAS_BF16` holds; the emulated one runs anywhere (slowly).
"""
import numba
import numpy as np
from numba import prange

from .._config import jit
from .bf16 import _dot_block_impl, bf16_round, to_bf16_pairs
from .search import add_row_stats, finish_row, prepare_block, row_bound, row_scratch


@jit(inline="always")
def split_norms(v, rounded):
    """Norms of ``rounded`` and of ``v - rounded`` (float64)."""
    nb = 0.0
    nr = 0.0
    for f in range(v.shape[0]):
        b = np.float64(rounded[f])
        r = np.float64(v[f] - rounded[f])  # exact: bf16 rounding keeps the leading bits
        nb += b * b
        nr += r * r
    return np.sqrt(nb), np.sqrt(nr)


@jit(parallel=True)
def certified_assign_bf16(x, codebook, mu, scale, cosine, b_packed, bias, coefs, limit,
                          rows, nthreads, indices, dist, candidates, record, sums, counts, accumulate, emulate):
    """Certified nearest code of every row of ``x`` with bf16 scores.

    Parameters are those of :func:`vqcore.kernels.search.certified_assign`,
    except ``b_packed`` (``pack_codes(-2 c')``, or ``-c'`` for cosine) in place
    of ``codes_t``; ``bias`` is float32; ``emulate`` (a compile-time constant)
    replaces the instruction by its exact emulation, so CPUs without it can
    test this path.
    """
    numba.literally(emulate)
    n, d = x.shape
    k = codebook.shape[0]
    half = (d + 1) // 2
    nblocks = (n + rows - 1) // rows
    vslabs = np.empty((nthreads, rows * d), dtype=np.float32)
    pslabs = np.empty((nthreads, rows * half), dtype=np.int32)
    sslabs = np.empty((nthreads, rows * k), dtype=np.float32)
    for t in prange(nthreads):
        norms = np.empty(rows)
        row_scales = np.empty(rows)
        statuses = np.empty(rows, dtype=np.int8)
        scratch = row_scratch(k, sslabs, np.zeros(0, dtype=np.int32))
        for b in range(t, nblocks, nthreads):
            start = b * rows
            m = min(n, start + rows) - start
            vblock = vslabs[t][: m * d].reshape((m, d))
            pairs = pslabs[t][: m * half].reshape((m, half))
            block = sslabs[t][: m * k].reshape((m, k))
            prepare_block(x, start, mu, scale, cosine, limit, vblock, norms, row_scales, statuses)
            to_bf16_pairs(vblock, pairs)
            rounded = bf16_round(vblock)
            _dot_block_impl(pairs, 0, m, b_packed, k, block, emulate)
            for i in range(m):
                r = start + i
                nb, nr = split_norms(vblock[i], rounded[i])
                bound = row_bound(coefs, norms[i], nr, nb)
                finish_row(x, r, codebook, block[i], bias, bound, row_scales[i], statuses[i], scale,
                           cosine, indices, dist, candidates, record, scratch)
                if accumulate and indices[r] >= 0:
                    add_row_stats(x, r, indices[r], t, sums, counts)
