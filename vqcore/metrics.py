"""How well a quantizer fits data: reconstruction error and code usage.

Totals are additive over chunks of rows and over ranks, so the command line
can stream a file larger than memory and a distributed job can all-reduce
them; every quantizer kind with ``encode``/``decode`` is scored the same way.
"""
from __future__ import annotations

import numpy as np

from .comm import resolve_comm
from .linalg import l2_normalize

__all__ = ["perplexity", "Score", "score"]


def perplexity(counts):
    """``exp`` of the entropy of code usage, averaged over codebook sets.

    Parameters
    ----------
    counts : array_like of shape (n_codes,) or (n_sets, n_codes)
        How often (or how much, for EMA sizes) each code is used.

    Returns
    -------
    float
        ``n_codes`` for uniform use, 1 when one code takes everything (0 for no use at all).
    """
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    totals = counts.sum(axis=-1, keepdims=True)
    p = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)
    return float(np.where(totals[:, 0] > 0, np.exp(entropy), 0.0).mean())


class Score:
    """Running totals of one quantizer's reconstruction of some rows.

    Parameters
    ----------
    dim : int
        Features per row.
    codebook_size : int
    num_sets : int
        Code columns per row (heads, stages or subspaces); usage is counted per column.
    """

    def __init__(self, dim, codebook_size, num_sets=1):
        self.dim, self.codebook_size, self.num_sets = dim, codebook_size, num_sets
        # [rows, squared error, per-feature sums, per-feature squares]: one buffer, one all-reduce
        self.totals = np.zeros(2 + 2 * dim)
        self.counts = np.zeros((num_sets, codebook_size))

    def add(self, target, reconstructed, codes):
        """Add a chunk: ``target`` and ``reconstructed`` (n, dim), ``codes`` (n,) or (n, num_sets)."""
        target = np.asarray(target, dtype=np.float64)
        self.totals[0] += len(target)
        self.totals[1] += np.square(np.asarray(reconstructed, dtype=np.float64) - target).sum()
        self.totals[2:2 + self.dim] += target.sum(axis=0)
        self.totals[2 + self.dim:] += np.square(target).sum(axis=0)
        codes = np.asarray(codes).reshape(len(target), -1)
        for column in range(codes.shape[1]):
            self.counts[column] += np.bincount(codes[:, column].astype(np.int64), minlength=self.codebook_size)

    def allreduce_(self, comm):
        """Sum the totals over the ranks of ``comm``, in place."""
        comm = resolve_comm(comm)
        comm.allreduce_sum_(self.totals)
        comm.allreduce_sum_(self.counts)
        return self

    def result(self):
        """The scores as a dict.

        Returns
        -------
        dict
            ``n`` rows, ``inertia`` (sum of squared errors), ``mse`` (per
            element), ``variance`` (of the data, per element), ``relative_mse``
            (``mse / variance``), ``perplexity`` (of the chosen codes, averaged
            over code columns) and ``dead_codes`` (codes no row chose, summed
            over columns).
        """
        n = int(self.totals[0])
        inertia = float(self.totals[1])
        elements = max(n * self.dim, 1)
        mean = self.totals[2:2 + self.dim] / max(n, 1)
        variance = float((self.totals[2 + self.dim:] / max(n, 1) - mean ** 2).sum() / self.dim)
        mse = inertia / elements
        return {
            "n": n,
            "inertia": inertia,
            "mse": mse,
            "variance": variance,
            "relative_mse": mse / variance if variance > 0 else float("nan"),
            "perplexity": perplexity(self.counts),
            "dead_codes": int((self.counts == 0).sum()),
        }


def score(quantizer, chunks, *, comm=None):
    """Score a quantizer of any kind on an iterable of row chunks (each ``(n, dim)``).

    Rows are encoded and decoded (inference only); cosine quantizers are
    compared with the unit-normalised rows, since their codes are directions.
    With ``comm`` the totals cover every rank's chunks.

    Returns
    -------
    dict, see :meth:`Score.result`
    """
    totals = Score(quantizer.dim, quantizer.codebook_size, int(np.prod(quantizer.code_shape, dtype=np.int64)))
    cosine = getattr(quantizer, "use_cosine_sim", False)
    for block in chunks:
        codes = quantizer.encode(block)
        target = l2_normalize(np.asarray(block, dtype=np.float64)) if cosine else block
        totals.add(target, quantizer.decode(codes), codes)
    if comm is not None:
        totals.allreduce_(comm)
    return totals.result()
