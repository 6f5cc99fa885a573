"""Encoding over the stages of a residual quantizer: greedy and beam search (the drivers; kernels in kernels/beam.py)."""
from __future__ import annotations

import numpy as np

from ._config import num_threads, single_threaded_blas
from .kernels import beam as kernels
from .search import check_rows, plan

#: Bytes of a greedy block's residuals and scores, kept through all stages: near a core's L2 cache, and few
#: enough blocks that the per-call cost of the GEMM stays small.
GREEDY_BLOCK_BYTES = 512 << 10

#: Bytes of a beam-search block's input . code products (all stages): they stay in a core's L2 cache.
BEAM_BLOCK_BYTES = 256 << 10
#: Bound on the float32 extension scores below which they cannot overflow (float32's largest is 3.4e38;
#: the margin covers rounding).
SCORE_LIMIT = 1e37


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


def beam_extend(z, beams, codebook, tables, beam_size, *, out=None, residual32=None):
    """Extend every row's beams by one stage's codebook; returns the new ``(residual, error, codes)``.

    One kernel call over blocks of rows (each block's ``x @ C.T`` in a
    per-thread buffer).  ``out``: optional flat float64 buffers
    ``(residual, error)`` of at least ``n * width * d`` and ``n * width``
    elements that receive the new residuals and errors (the returned arrays
    are views of them); ``residual32``: optional float32 array of shape
    ``(n * width, d)`` that receives the new residuals rounded to float32.
    """
    residual, error, codes = beams
    codes_t, cross, c_sq = tables
    n, b, d = residual.shape
    k = codebook.shape[0]
    width = min(beam_size, b * k)
    if out is None:
        out = np.empty(n * width * d), np.empty(n * width)
    new_residual = out[0][:n * width * d].reshape(n, width, d)
    new_error = out[1][:n * width].reshape(n, width)
    new_codes = np.empty((n, width, codes.shape[2] + 1), dtype=np.int64)
    if n == 0:
        return new_residual, new_error, new_codes
    # every x . c is at most |x| max|c|
    x_norm = np.sqrt(np.einsum("nd,nd->n", z, z, dtype=np.float64).max())
    finite = scores_stay_finite(float(error.max()), x_norm * np.sqrt(float(c_sq.max())), c_sq, cross)
    threads = num_threads()
    rows = max(1, min(BEAM_BLOCK_BYTES // (k * 4), -(-n // threads)))
    write32 = residual32 is not None
    with single_threaded_blas():
        kernels.beam_extend(z, codes_t, cross, c_sq, codebook, np.ascontiguousarray(codes), error, residual, finite,
                            rows, threads, write32, new_codes, new_error, new_residual,
                            residual32 if write32 else np.empty((0, d), dtype=np.float32))
    return new_residual, new_error, new_codes


class BeamTraining:
    """The beams of every row through the stages of a beam-trained residual stack (faiss's training).

    Holds two sets of float64 buffers that the stages' beams alternate
    between, and the float32 residuals of the beams last kept, the rows
    the next stage's k-means trains on.  ``beams`` and ``residual32`` are
    views of those buffers, overwritten by later extensions: copy what must
    outlive them.

    Parameters
    ----------
    z : ndarray of float32, shape (n, d), C-contiguous
    beam_size : int
    """

    def __init__(self, z, beam_size):
        n, d = z.shape
        self.z, self.beam_size = z, beam_size
        self.beams = beam_start(z)
        self.residual32 = z  # one beam per row: the input itself
        self._spare = [(np.empty(n * beam_size * d), np.empty(n * beam_size)) for _ in range(2)]
        self._rows32 = np.empty((n * beam_size, d), dtype=np.float32)

    def extend(self, embeds):
        """Extend the beams by the last of ``embeds`` (shape (stages so far, k, d)); updates :attr:`residual32`."""
        i = len(embeds) - 1
        n, b, d = self.beams[0].shape
        width = min(self.beam_size, b * embeds.shape[1])
        out, self._spare = self._spare[0], self._spare[::-1]
        self.residual32 = self._rows32[:n * width]
        self.beams = beam_extend(self.z, self.beams, embeds[i], beam_tables(embeds, i), self.beam_size, out=out,
                                 residual32=self.residual32)
