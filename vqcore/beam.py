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

#: Rows encoded at once by the beam search (bounds its (rows, beam, codes) scores).
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
    over the codes ``c_s`` the beam chose so far, from one ``x @ C.T`` per
    stage and tables of code-code products (faiss's look-up-table beam
    search).  With a beam at least as large as the number of paths, every
    path is kept and the result is the exact best sum of codes.

    Parameters
    ----------
    z : ndarray of float32, shape (n, d)
    embeds : ndarray of float32, shape (stages, k, d)
    beam_size : int

    Returns
    -------
    ndarray of int64, shape (n, stages)
    """
    n = z.shape[0]
    tables = [beam_tables(embeds, i) for i in range(embeds.shape[0])]
    out = np.empty((n, embeds.shape[0]), dtype=np.int64)
    for start in range(0, n, BEAM_CHUNK_ROWS):
        chunk = z[start:start + BEAM_CHUNK_ROWS]
        beams = beam_start(chunk)
        for i in range(embeds.shape[0]):  # all stages of one chunk while its beams are in cache
            beams = beam_extend(chunk, beams, embeds[i], tables[i], beam_size)
        out[start:start + BEAM_CHUNK_ROWS] = beams[2][:, 0]  # beams are sorted: the first is the best
    return out


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
    keep = min(2 * beam_size, b * k)
    width = min(beam_size, keep)
    x_dot = z @ codes_t  # (n, k); the kernel subtracts the earlier codes' products
    new_residual = np.empty((n, width, d))
    new_error = np.empty((n, width))
    parent = np.empty((n, width), dtype=np.int64)
    chosen = np.empty((n, width), dtype=np.int64)
    scratch_dot = np.empty((n, k), dtype=np.float32)
    scratch_value = np.empty((n, keep))
    scratch_index = np.empty((n, keep), dtype=np.int64)
    beam_step(x_dot, cross, np.ascontiguousarray(codes), error, c_sq, residual, codebook, scratch_dot,
               scratch_value, scratch_index, new_residual, new_error, parent, chosen)
    rows = np.arange(n)[:, None]
    new_codes = np.concatenate([codes[rows, parent], chosen[:, :, None]], axis=2)
    return new_residual, new_error, new_codes
