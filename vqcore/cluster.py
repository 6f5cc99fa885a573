"""K-means with the seed's semantics, as local sums and counts a communicator reduces."""
from __future__ import annotations

import warnings

import numpy as np

from . import _validate
from ._config import num_threads
from .comm import check_same, resolve_comm
from .sampling import sample_vectors
from .search import assign

__all__ = ["kmeans"]


def l2_normalize(x, axis=-1):
    """Scale rows to unit L2 norm (``F.normalize``: norms clamped at 1e-12)."""
    norm = np.sqrt(np.einsum("...d,...d->...", x, x))[..., None]
    return x / np.maximum(norm, 1e-12).astype(x.dtype)


def initial_means(x, num_clusters, rng, comm):
    """Random rows of ``x`` (c, n, d), drawn across ranks when distributed."""
    if comm.size > 1:
        from .comm import sample_vectors_distributed

        return np.stack([sample_vectors_distributed(part, num_clusters, rng, comm) for part in x])
    return np.stack([sample_vectors(part, num_clusters, rng) for part in x])


def lloyd_statistics(x, means, metric, comm):
    """Per-code row counts and sums for the current means, all-reduced.

    Returns ``(counts (c, k) float64, sums (c, k, d) float64)``.
    """
    c, n, d = x.shape
    k = means.shape[1]
    threads = num_threads()
    # counts travel in the last column so one all-reduce carries both.
    stats = np.zeros((c, k, d + 1))
    indices = np.empty(n, dtype=np.int64)
    best = np.empty(n, dtype=x.dtype)
    for h in range(c):
        sums = np.zeros((threads, k, d))
        counts = np.zeros((threads, k))
        assign(x[h], means[h], metric, indices, best, sums, counts)
        stats[h, :, :d] = sums.sum(axis=0)
        stats[h, :, d] = counts.sum(axis=0)
    comm.allreduce_sum_(stats)
    return stats[..., d], stats[..., :d]


def kmeans(x, num_clusters, *, iters=10, metric="euclidean", init=None, seed=None, comm=None):
    """Lloyd's k-means, as the seed runs it to initialise codebooks.

    Parameters
    ----------
    x : array_like of shape (n_samples, n_features) or (n_codebooks, n_samples, n_features)
        Float32 or float64 data; with ``comm``, this rank's shard.
    num_clusters : int
    iters : int
        Lloyd steps (assign, then move each mean to the centroid of its rows).
    metric : {"euclidean", "cosine"}
        Cosine assigns by largest dot product and re-normalises the means.
    init : array_like of shape (num_clusters, n_features) or (n_codebooks, num_clusters, n_features), optional
        Starting means.  By default ``num_clusters`` random rows (with
        replacement, and a warning, only when there are fewer rows than clusters).
    seed : int, numpy.random.Generator or None
        Makes the random initialisation reproducible.
    comm : vqcore.comm.Communicator, optional
        Distributed run: counts and sums are all-reduced every step, so every
        rank ends with the same means, equal to serial k-means on all shards.

    Returns
    -------
    means : ndarray of shape (num_clusters, n_features) or (n_codebooks, num_clusters, n_features)
    counts : ndarray of int64, shape (num_clusters,) or (n_codebooks, num_clusters)
        Rows assigned to each mean in the last step (before its update).

    Notes
    -----
    An empty cluster keeps its previous mean.  With ``iters=0`` the counts are
    those of one assignment to the initial means.
    """
    comm = resolve_comm(comm)
    metric = _validate.metric(metric)
    num_clusters = _validate.positive_int("num_clusters", num_clusters)
    iters = _validate.positive_int("iters", iters, minimum=0)
    x = _validate.float_array("x", x)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[None]
    c, n, d = x.shape
    if comm.size > 1:
        check_same(comm, c=c, d=d, num_clusters=num_clusters, iters=iters, metric=metric, dtype=x.dtype.str)
    if init is not None:
        means = _validate.float_array("init", init, dtype=x.dtype)
        means = means[None] if means.ndim == 2 else means
        if means.shape != (c, num_clusters, d):
            raise ValueError(
                f"init has shape {means.shape[1:] if squeeze else means.shape}; expected "
                f"{(num_clusters, d) if squeeze else (c, num_clusters, d)} for num_clusters={num_clusters}, d={d}"
            )
        means = means.copy()
    else:
        total = n if comm.size == 1 else int(sum(comm.allgather_object(n)))
        if total == 0:
            raise ValueError("x has no rows to initialise k-means from; pass data or init=")
        if total < num_clusters:
            warnings.warn(
                f"n_samples={total} < num_clusters={num_clusters}: initial means are drawn "
                "with replacement, so some start equal",
                UserWarning,
                stacklevel=2,
            )
        means = initial_means(x, num_clusters, _validate.rng(seed), comm).astype(x.dtype, copy=False)
    counts = None
    for _ in range(max(iters, 1)):
        counts, sums = lloyd_statistics(x, means, metric, comm)
        if iters == 0:
            break
        new_means = (sums / np.maximum(counts, 1)[..., None]).astype(x.dtype)
        if metric == "cosine":
            new_means = l2_normalize(new_means)
        means = np.where((counts == 0)[..., None], means, new_means)
    counts = counts.astype(np.int64)
    if squeeze:
        return means[0], counts[0]
    return means, counts
