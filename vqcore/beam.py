"""Encoding over the stages of a residual quantizer: greedy and beam search (the drivers; kernels in kernels/beam.py)."""
from __future__ import annotations

import numpy as np

from ._config import num_threads, single_threaded_blas
from .kernels import beam as kernels
from .kernels.beam import beam_step
from .search import check_rows, plan

#: Bytes of a greedy block's residuals and scores, kept through all stages: near a core's L2 cache, and few
#: enough blocks that the per-call cost of the GEMM stays small.
GREEDY_BLOCK_BYTES = 512 << 10

#: Bytes of a beam-search block's input . code products (all stages): they stay in a core's L2 cache.
BEAM_BLOCK_BYTES = 256 << 10
#: Bound on the float32 extension scores below which they cannot overflow (float32's largest is 3.4e38;
#: the margin covers rounding).
SCORE_LIMIT = 1e37
#: Rows a beam-training step extends at once (bounds its (rows, beam, codes) scratch).
BEAM_CHUNK_ROWS = 2048


def greedy_encode(z, embeds):
    """Greedy residual encoding (euclidean): each stage takes the certified nearest code of the residual.

    The residual is float32 (``z`` minus the chosen codes, stage by stage)
    and each stage's code minimises its float64 distance, ties to the
    lowest index, exactly as :func:`vqcore.search.nearest` on that residual.
    All stages run on one block of rows before the next block.

    Parameters
    ----------
    z : ndarray of float32, shape (n, d), C-contiguous
    embeds : ndarray of float32, shape (stages, k, d)

    Returns
    -------
    ndarray of int64, shape (n, stages)
    """
    n, d = z.shape
    stages, k = embeds.shape[:2]
    plans = [plan(embeds[i], "euclidean", "fp32") for i in range(stages)]
    threads = num_threads()
    rows = max(16, min(1024, GREEDY_BLOCK_BYTES // ((k + 2 * d) * 4), -(-n // threads)))
    codes = np.empty((n, stages), dtype=np.int64)
    if n:
        with single_threaded_blas():
            kernels.greedy_encode(z, embeds, np.stack([p.mu for p in plans]), np.array([p.scale for p in plans]),
                                  np.stack([p.operand for p in plans]), np.stack([p.bias for p in plans]),
                                  np.stack([p.coefs for p in plans]), plans[0].limit, rows, threads, codes)
    check_rows(z, codes)
    return codes


def beam_encode(z, embeds, beam_size):
    """Beam search over the stages of one residual stack (euclidean).

    Keeps the ``beam_size`` best partial sums per row.  At every stage the
    ``2 * beam_size`` best extensions by a float32 score are re-scored
    exactly (float64 residual norms) and the best ``beam_size`` kept.  The
    float32 score needs no GEMM per beam: ``r . c = x . c - sum_s c_s . c``
    over the codes ``c_s`` the beam chose so far, from one ``x @ C.T`` for
    all stages and tables of code-code products (faiss's look-up-table beam
    search).  With a beam at least as large as the number of paths, every
    path is kept and the result is the exact best sum of codes.  Each block
    of rows runs all stages in one kernel call.

    Parameters
    ----------
    z : ndarray of float32, shape (n, d), C-contiguous
    embeds : ndarray of float32, shape (stages, k, d)
    beam_size : int

    Returns
    -------
    ndarray of int64, shape (n, stages)
    """
    n, d = z.shape
    stages, k = embeds.shape[:2]
    out = np.empty((n, stages), dtype=np.int64)
    if n == 0:
        return out
    # one BLAS thread throughout: BLAS threads left spinning after the tables would slow the kernel's threads
    with single_threaded_blas():
        tables = [beam_tables(embeds, i) for i in range(stages)]
        cross = np.concatenate([np.empty((0, k, k), dtype=np.float32)] + [table[1] for table in tables])
        c_sq = np.stack([table[2] for table in tables])
        codes_t = np.ascontiguousarray(embeds.reshape(stages * k, d).T)
        # every beam's error is at most (|x| + stages max|c|)**2, every x . c at most |x| max|c|
        x_norm = np.sqrt(np.einsum("nd,nd->n", z, z, dtype=np.float64).max())
        c_norm = np.sqrt(float(c_sq.max()))
        finite = scores_stay_finite((x_norm + stages * c_norm) ** 2, x_norm * c_norm, c_sq, cross)
        threads = num_threads()
        rows = max(1, min(BEAM_BLOCK_BYTES // (stages * k * 4), -(-n // threads)))
        kernels.beam_encode(z, codes_t, cross, c_sq, embeds, beam_size, finite, rows, threads, out)
    return out


def scores_stay_finite(error_max, x_dot_max, c_sq, cross):
    """Whether no float32 extension score (nor partial sum) can overflow, from its terms' largest magnitudes.

    A score is ``error + |c|^2 - 2 x . c + 2 sum_s c_s . c`` over at most
    ``len(cross)`` earlier stages; while the sum of the terms' bounds stays
    below :data:`SCORE_LIMIT`, every score is finite and the vectorised
    candidate selection applies (otherwise the sequential one defines the
    order, NaN included).
    """
    cross_max = float(np.abs(cross).max()) if cross.size else 0.0
    return error_max + float(c_sq.max()) + 2 * x_dot_max + 2 * len(cross) * cross_max < SCORE_LIMIT


def beam_tables(embeds, i):
    """What stage ``i``'s beam step needs from the codebooks: ``(C_i.T, C_<i @ C_i.T, |C_i|^2)``."""
    k, d = embeds.shape[1:]
    codes_t = np.ascontiguousarray(embeds[i].T)
    cross = (embeds[:i].reshape(i * k, d) @ codes_t).reshape(i, k, k)
    return codes_t, cross, np.einsum("kd,kd->k", embeds[i], embeds[i])


def beam_start(z):
    """One empty beam per row: ``(residual (n, 1, d) float64, error (n, 1), codes (n, 1, 0))``."""
    residual = np.ascontiguousarray(z, dtype=np.float64)[:, None, :]
    return residual, np.einsum("nbd,nbd->nb", residual, residual), np.zeros((len(z), 1, 0), dtype=np.int64)


def beam_extend(z, beams, codebook, tables, beam_size):
    """Extend every row's beams by one stage's codebook; returns the new ``(residual, error, codes)``.

    Rows are processed ``BEAM_CHUNK_ROWS`` at a time, so scratch memory stays bounded.
    """
    if len(z) > BEAM_CHUNK_ROWS:
        parts = [beam_extend(z[s:s + BEAM_CHUNK_ROWS], tuple(a[s:s + BEAM_CHUNK_ROWS] for a in beams), codebook,
                             tables, beam_size) for s in range(0, len(z), BEAM_CHUNK_ROWS)]
        return tuple(np.concatenate(arrays) for arrays in zip(*parts))
    residual, error, codes = beams
    codes_t, cross, c_sq = tables
    n, b, d = residual.shape
    k = codebook.shape[0]
    width = min(beam_size, b * k)
    x_dot = z @ codes_t  # (n, k); the kernel subtracts the earlier codes' products
    new_residual = np.empty((n, width, d))
    new_error = np.empty((n, width))
    parent = np.empty((n, width), dtype=np.int64)
    chosen = np.empty((n, width), dtype=np.int64)
    finite = n == 0 or scores_stay_finite(float(error.max()), float(np.abs(x_dot).max()), c_sq, cross)
    beam_step(x_dot, cross, np.ascontiguousarray(codes), error, c_sq, residual, codebook, finite, num_threads(),
              new_residual, new_error, parent, chosen)
    rows = np.arange(n)[:, None]
    new_codes = np.concatenate([codes[rows, parent], chosen[:, :, None]], axis=2)
    return new_residual, new_error, new_codes
