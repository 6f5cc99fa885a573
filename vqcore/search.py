"""Exact nearest-code search and the seed's distance matrix."""
from __future__ import annotations

import numpy as np

from . import _validate
from ._config import num_threads, single_threaded_blas
from .kernels.checks import all_finite
from .kernels.search import assign_blocked, block_rows

__all__ = ["nearest", "distances"]


def _pair(x, codebook, check_x_finite=True):
    """Validate ``x`` and ``codebook`` together; return 3-D views and whether to squeeze."""
    x = _validate.float_array("x", x, check_finite=check_x_finite)
    codebook = _validate.float_array("codebook", codebook, dtype=x.dtype)
    if x.ndim != codebook.ndim:
        raise ValueError(
            f"x has shape {x.shape} but codebook has shape {codebook.shape}: use x (n, d) with "
            "codebook (k, d), or x (c, n, d) with codebook (c, k, d)"
        )
    squeeze = x.ndim == 2
    if squeeze:
        x, codebook = x[None], codebook[None]
    if x.shape[0] != codebook.shape[0]:
        raise ValueError(
            f"x has {x.shape[0]} codebook sets (shape {x.shape}) but codebook has "
            f"{codebook.shape[0]} (shape {codebook.shape}); the leading dimensions must match"
        )
    if x.shape[-1] != codebook.shape[-1]:
        raise ValueError(
            f"x has d={x.shape[-1]} but codebook has d={codebook.shape[-1]}; "
            "the last dimensions must match"
        )
    if codebook.shape[1] == 0:
        raise ValueError("codebook holds no codes (k=0); it needs at least one row")
    return x, codebook, squeeze


_NO_SLABS = (np.zeros((0, 0, 0)), np.zeros((0, 0)))


def search_operands(codebook, metric):
    """``(alpha * codebook.T, bias)`` for :func:`assign_blocked` (see kernels.search)."""
    alpha = codebook.dtype.type(-2.0 if metric == "euclidean" else -1.0)
    codes_t = np.ascontiguousarray((codebook * alpha).T)
    if metric == "euclidean":
        bias = np.einsum("kd,kd->k", codebook, codebook)
    else:
        bias = np.zeros(codebook.shape[0], dtype=codebook.dtype)
    return codes_t, bias


def assign(x, codebook, metric, indices, best, sums=None, counts=None):
    """Run the blocked assignment kernel on one validated 2-D set (fills the OUT arrays)."""
    n, k = x.shape[0], codebook.shape[0]
    if n == 0:
        return
    threads = num_threads()
    if sums is None:
        sums, counts = _NO_SLABS
    codes_t, bias = search_operands(codebook, metric)
    with single_threaded_blas():
        assign_blocked(x, codes_t, bias, block_rows(n, k, x.itemsize, threads), threads,
                       indices, best, sums, counts)


def nearest_unchecked(x, codebook, metric):
    """Blocked search for validated 3-D input ``x (c, n, d)``, ``codebook (c, k, d)``.

    Returns ``(indices (c, n) int64, best (c, n))`` where ``best`` is the
    kernel's minimum (see :func:`scores_from_best`).
    """
    c, n, _ = x.shape
    indices = np.empty((c, n), dtype=np.int64)
    best = np.empty((c, n), dtype=x.dtype)
    for h in range(c):
        assign(x[h], codebook[h], metric, indices[h], best[h])
    return indices, best


def scores_from_best(x, best, metric):
    """Turn the kernel's per-row minimum into the seed's negative distance."""
    if metric == "euclidean":
        sq = best + np.einsum("cnd,cnd->cn", x, x)
        return -np.sqrt(np.maximum(sq, 0, out=sq), out=sq)
    return -best


def nearest(x, codebook, *, metric="euclidean", return_distances=False):
    """Index of the nearest code for every vector — exact, blocked, parallel.

    Parameters
    ----------
    x : array_like of shape (n_samples, n_features) or (n_codebooks, n_samples, n_features)
        Vectors to assign, float32 or float64.
    codebook : array_like of shape (n_codes, n_features) or (n_codebooks, n_codes, n_features)
        One codebook, or one per leading set of ``x`` (e.g. per head).
    metric : {"euclidean", "cosine"}
        ``"euclidean"`` picks the smallest squared L2 distance; ``"cosine"`` the
        largest dot product (inputs assumed l2-normalised, as in the seed).
    return_distances : bool
        Also return the seed's *negative* distance of the chosen code:
        ``-||x - c||`` for euclidean, ``x . c`` for cosine (higher = closer).

    Returns
    -------
    indices : ndarray of int64, shape (n_samples,) or (n_codebooks, n_samples)
    distances : ndarray, same shape, only with ``return_distances=True``

    Notes
    -----
    Memory beyond input and output is one distance block per thread, bounded
    independently of ``n_samples``.  Ties go to the lowest index.
    """
    metric = _validate.metric(metric)
    # NaN/Inf in x make that row's minimum non-finite: checking the n minima
    # is far cheaper than scanning all n*d inputs first.
    x, codebook, squeeze = _pair(x, codebook, check_x_finite=False)
    indices, best = nearest_unchecked(x, codebook, metric)
    if best.size and not all_finite(best.reshape(-1)):
        _validate.raise_not_finite("x", x)
    scores = scores_from_best(x, best, metric) if return_distances else None
    if squeeze:
        indices = indices[0]
        scores = None if scores is None else scores[0]
    return (indices, scores) if return_distances else indices


def distances_unchecked(x, codebook, metric):
    """The seed's negative distance matrix for validated 3-D input: (c, n, k)."""
    dots = np.matmul(x, codebook.transpose(0, 2, 1))
    if metric == "cosine":
        return dots
    sq = np.einsum("cnd,cnd->cn", x, x)[:, :, None] + np.einsum("ckd,ckd->ck", codebook, codebook)[:, None, :]
    sq -= 2 * dots
    np.maximum(sq, 0, out=sq)
    np.sqrt(sq, out=sq)
    return np.negative(sq, out=sq)


def distances(x, codebook, *, metric="euclidean"):
    """The full matrix of the seed's negative distances.

    Parameters
    ----------
    x : array_like of shape (n_samples, n_features) or (n_codebooks, n_samples, n_features)
    codebook : array_like of shape (n_codes, n_features) or (n_codebooks, n_codes, n_features)
    metric : {"euclidean", "cosine"}
        ``-cdist(x, codebook)`` for euclidean, ``x @ codebook.T`` for cosine.

    Returns
    -------
    ndarray of shape (n_samples, n_codes) or (n_codebooks, n_samples, n_codes)

    Notes
    -----
    This materialises ``n x k`` values; use :func:`nearest` when only the
    argmax is needed.
    """
    metric = _validate.metric(metric)
    x, codebook, squeeze = _pair(x, codebook)
    out = distances_unchecked(x, codebook, metric)
    return out[0] if squeeze else out
