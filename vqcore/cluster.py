"""K-means with the seed's semantics, as local sums and counts a communicator reduces."""
from __future__ import annotations

import warnings

import numpy as np

from . import _validate
from .comm import check_same, resolve_comm
from .ema import per_set_statistics
from .kernels.seeding import greedy_kmeanspp
from .linalg import l2_normalize
from .sampling import sample_vectors, sample_vectors_distributed
from .search import assign

__all__ = ["kmeans", "kmeans_plusplus"]

INITS = ("random", "rows", "k-means++", "k-means||")


def initial_means(x, num_clusters, rng, comm):
    """Random rows of ``x`` (c, n, d), drawn across ranks when distributed."""
    if comm.size > 1:
        return np.stack([sample_vectors_distributed(part, num_clusters, rng, comm) for part in x])
    return np.stack([sample_vectors(part, num_clusters, rng) for part in x])


def lloyd_statistics(x, means, metric, comm):
    """Per-code row counts and sums for the current means, all-reduced.

    Returns ``(counts (c, k) float64, sums (c, k, d) float64)``.
    """
    c, n, d = x.shape
    indices = np.empty(n, dtype=np.int64)
    dist = np.empty(n)

    def fill(h, sums, counts):
        assign(x[h], means[h], metric, indices, dist, sums, counts)

    stats = per_set_statistics(c, means.shape[1], d, fill)
    comm.allreduce_sum_(stats)
    return stats[..., d], stats[..., :d]


# Independent random streams derived from one shared root seed (see _shared_root).
_SUBSAMPLE_STREAM, _FIRST_STREAM, _REDUCE_STREAM, _INIT_STREAM, _ROUND_STREAM = 0, 1, 2, 3, 4
#: Rounds of k-means|| oversampling; Bahmani et al. (2012) find 5 enough with oversampling 2k.
KMEANS_PARALLEL_ROUNDS = 5


def _global_rows(n, comm):
    """``(offset, total)``: where this rank's rows start in the concatenation, and all rows."""
    if comm.size == 1:
        return 0, n
    counts = comm.allgather_object(n)
    return int(sum(counts[: comm.rank])), int(sum(counts))


def _shared_root(rng, comm):
    """One integer seed, drawn from rank 0's generator and broadcast: the root of shared streams."""
    root = np.array([rng.integers(2**62)], dtype=np.int64)
    comm.bcast_(root, root=0)
    return int(root[0])


def _shared_uniforms(root, stream, offset, n):
    """Uniforms of one global stream for rows ``offset .. offset + n``.

    Row ``i`` of the concatenated data always gets the ``i``-th number of the
    stream (PCG64 jumps ahead in O(log offset)), so a rank draws exactly what a
    single process would draw for the same rows: sharding does not change the
    sample.
    """
    bitgen = np.random.PCG64(np.random.SeedSequence([root, stream]))
    bitgen.advance(offset)
    return np.random.Generator(bitgen).random(n)


def _sq_distances(x, x_sq, centers):
    """Squared euclidean distances (m, n) of every centre to every row, in x's dtype, clamped at 0.

    Centres-major: ``c @ x.T`` with few centres is several times faster in
    BLAS than ``x @ c.T`` (measured: 0.35 ms against 3.5-8.6 ms for 20,000 x 16
    rows and 7 centres).  Seeding needs ranks of distances, not their last
    digits, so it stays in the data's precision (as scikit-learn does).
    """
    c = np.asarray(centers, dtype=x.dtype)
    out = c @ x.T
    out *= -2
    out += x_sq[None, :]
    out += np.einsum("md,md->m", c, c)[:, None]
    return np.maximum(out, 0, out=out)


def _min_sq_distance(x, x_sq, centers, chunk=256):
    """Squared distance of every row to its nearest centre, centres taken ``chunk`` at a time."""
    out = np.full(x.shape[0], np.inf)
    for start in range(0, len(centers), chunk):
        np.minimum(out, _sq_distances(x, x_sq, centers[start:start + chunk]).min(axis=0), out=out)
    return out


def _greedy_kmeanspp(x, k, rng, weights=None, n_local_trials=None):
    """Greedy k-means++ seeding of one (n, d) set; returns the chosen row indices.

    Every step draws ``n_local_trials`` candidates with probability
    proportional to (weight x) squared distance to the nearest chosen centre
    and keeps the one that lowers the potential most (scikit-learn's default,
    ``2 + log(k)`` trials).  The uniforms are drawn here, the steps run in
    :func:`vqcore.kernels.seeding.greedy_kmeanspp`.
    """
    n = x.shape[0]
    trials = n_local_trials if n_local_trials is not None else 2 + int(np.log(k))
    w = np.ones(n) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n) if weights is None else rng.choice(n, p=w / w.sum())
    draws = rng.random((k - 1, trials))
    greedy_kmeanspp(np.ascontiguousarray(x.T), np.einsum("nd,nd->n", x, x), w, draws, chosen)
    return chosen


def kmeans_plusplus(x, num_clusters, *, seed=None, sample_weight=None, n_local_trials=None):
    """Greedy k-means++ seeding, as scikit-learn's ``kmeans_plusplus``.

    Parameters
    ----------
    x : array_like of shape (n_samples, n_features)
    num_clusters : int
    seed : int, numpy.random.Generator or None
    sample_weight : array_like of shape (n_samples,), optional
        Non-negative weights (k-means|| uses candidate counts).
    n_local_trials : int, optional
        Candidates tried per centre; default ``2 + int(log(num_clusters))``.

    Returns
    -------
    centers : ndarray of shape (num_clusters, n_features)
    indices : ndarray of int64, shape (num_clusters,)
        Rows of ``x`` chosen.  When there are fewer distinct rows than
        clusters, some rows are chosen more than once.
    """
    x = _validate.float_array("x", x, ndims=(2,))
    num_clusters = _validate.positive_int("num_clusters", num_clusters)
    if x.shape[0] == 0:
        raise ValueError("x has no rows to seed k-means++ from; pass at least one row")
    if n_local_trials is not None:
        n_local_trials = _validate.positive_int("n_local_trials", n_local_trials)
    weights = None
    if sample_weight is not None:
        weights = np.asarray(sample_weight, dtype=np.float64)
        if weights.shape != (x.shape[0],) or not np.all(np.isfinite(weights)) or np.any(weights < 0) \
                or weights.sum() <= 0:
            raise ValueError(
                f"sample_weight must be {x.shape[0]} finite non-negative numbers, not all zero; "
                f"got shape {weights.shape}"
            )
    chosen = _greedy_kmeanspp(x, num_clusters, _validate.rng(seed), weights, n_local_trials)
    return x[chosen].copy(), chosen


def _kmeans_parallel(x, k, root, comm, offset):
    """k-means|| seeding of one (n_local, d) shard; identical on every rank.

    The first centre is one global row; each of ``KMEANS_PARALLEL_ROUNDS``
    rounds keeps every row with probability ``2k * D(x)^2 / phi`` (one shared
    uniform per global row, so the picks do not depend on the sharding); the
    candidates, weighted by the rows nearest to them (all-reduced), are
    reduced to ``k`` centres by greedy k-means++ on every rank with the same
    generator.
    """
    n = x.shape[0]
    total = int(sum(comm.allgather_object(n))) if comm.size > 1 else n
    first = int(np.random.default_rng([root, _FIRST_STREAM]).integers(total))
    mine = first - offset
    centers = comm.allgatherv(np.ascontiguousarray(x[mine:mine + 1] if 0 <= mine < n else x[:0]))
    x_sq = np.einsum("nd,nd->n", x, x)
    closest = _sq_distances(x, x_sq, centers)[0].astype(np.float64) if n else np.zeros(0)
    for r in range(KMEANS_PARALLEL_ROUNDS):
        phi = np.array([closest.sum()])
        comm.allreduce_sum_(phi)
        if phi[0] <= 0:
            break
        uniforms = _shared_uniforms(root, _ROUND_STREAM + r, offset, n)
        picked = comm.allgatherv(np.ascontiguousarray(x[uniforms < 2 * k * closest / phi[0]]))
        if len(picked) and n:
            closest = np.minimum(closest, _min_sq_distance(x, x_sq, picked))
        centers = np.concatenate([centers, picked])
    indices = np.empty(n, dtype=np.int64)
    assign(x, np.ascontiguousarray(centers), "euclidean", indices, np.empty(n))
    weights = np.bincount(indices, minlength=len(centers)).astype(np.float64)
    comm.allreduce_sum_(weights)
    if weights.sum() <= 0:  # cannot happen with rows somewhere; kept for safety of the draw below
        weights[:] = 1.0
    chosen = _greedy_kmeanspp(centers, k, np.random.default_rng([root, _REDUCE_STREAM]), weights)
    return centers[chosen]


def _rows_by_global_index(x, num_clusters, root, comm, offset):
    """``num_clusters`` rows of the concatenated shards (c, n, d), drawn by global index from ``root``.

    Distinct rows when there are enough; every rank gets the same rows, the
    ones a single process would draw from the concatenation.
    """
    n = x.shape[1]
    total = int(sum(comm.allgather_object(n))) if comm.size > 1 else n
    picks = np.random.default_rng([root, _FIRST_STREAM]).choice(total, size=num_clusters,
                                                                 replace=total < num_clusters)
    local = picks - offset
    mine = np.flatnonzero((local >= 0) & (local < n))
    rows = comm.allgatherv(np.ascontiguousarray(x[:, local[mine]].transpose(1, 0, 2)))  # (k, c, d), rank order
    order = comm.allgatherv(mine.astype(np.int64))
    means = np.empty_like(rows)
    means[order] = rows
    return np.ascontiguousarray(means.transpose(1, 0, 2))


def _initialise(x, num_clusters, init, rng, root, comm, offset):
    """Initial means (c, k, d) for a string ``init``."""
    if init == "random":
        return initial_means(x, num_clusters, rng, comm).astype(x.dtype, copy=False)
    if init == "rows":
        return _rows_by_global_index(x, num_clusters, root, comm, offset)
    if init == "k-means++" and comm.size == 1:
        reducer = np.random.default_rng([root, _REDUCE_STREAM])
        return np.stack([part[_greedy_kmeanspp(part, num_clusters, reducer)] for part in x])
    # k-means|| : the distributed form of k-means++ (also on request in one process)
    return np.stack([_kmeans_parallel(part, num_clusters, root + h, comm, offset) for h, part in enumerate(x)])


def _subsample(x, limit, stream, root, comm, offset, total):
    """Keep each row with probability ``limit / total`` when ``total > limit`` (same rows for every set).

    Returns ``(rows (c, m, d), this rank's offset among the kept rows, kept rows over all ranks)``.
    """
    if limit is None or total <= limit:
        return x, offset, total
    keep = _shared_uniforms(root, stream, offset, x.shape[1]) < limit / total
    kept = np.ascontiguousarray(x[:, keep])
    return (kept, *_global_rows(kept.shape[1], comm))


def _objective(x, means, metric, comm):
    """Sum of squared distances (euclidean) or of negative dot products (cosine), all-reduced."""
    total = np.zeros(1)
    for h in range(x.shape[0]):
        n = x.shape[1]
        dist = np.empty(n)  # distance, or dot product for cosine
        assign(x[h], means[h], metric, np.empty(n, dtype=np.int64), dist)
        total += np.square(dist).sum() if metric == "euclidean" else -dist.sum()
    comm.allreduce_sum_(total)
    return float(total[0])


def _lloyd(x, means, iters, metric, comm):
    """``iters`` Lloyd steps from ``means``; returns ``(means, counts of the last assignment)``."""
    counts = None
    for _ in range(max(iters, 1)):
        counts, sums = lloyd_statistics(x, means, metric, comm)
        if iters == 0:
            break
        new_means = (sums / np.maximum(counts, 1)[..., None]).astype(x.dtype)
        if metric == "cosine":
            new_means = l2_normalize(new_means)
        means = np.where((counts == 0)[..., None], means, new_means)
    return means, counts


def _check_init(init, n_init, c, num_clusters, d, x_dtype, squeeze):
    """Return ``init`` as a name or as starting means (c, k, d)."""
    if init is None:
        return "random"
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"init={init!r} is not supported; use one of {INITS} or an array of means")
        return init
    means = _validate.float_array("init", init, dtype=x_dtype)
    means = means[None] if means.ndim == 2 else means
    if means.shape != (c, num_clusters, d):
        raise ValueError(
            f"init has shape {means.shape[1:] if squeeze else means.shape}; expected "
            f"{(num_clusters, d) if squeeze else (c, num_clusters, d)} for num_clusters={num_clusters}, d={d}"
        )
    if n_init > 1:
        raise ValueError(f"n_init={n_init} restarts from the same given init would repeat one run; use n_init=1")
    return means.copy()


def kmeans(x, num_clusters, *, iters=10, metric="euclidean", init=None, seed=None, comm=None, n_init=1,
           max_points_per_cluster=None, init_size=None):
    """Lloyd's k-means, as the seed runs it to initialise codebooks, with k-means++ and restarts.

    Parameters
    ----------
    x : array_like of shape (n_samples, n_features) or (n_codebooks, n_samples, n_features)
        Float32 or float64 data; with ``comm``, this rank's shard.
    num_clusters : int
    iters : int
        Lloyd steps (assign, then move each mean to the centroid of its rows).
    metric : {"euclidean", "cosine"}
        Cosine assigns by largest dot product and re-normalises the means.
    init : {"random", "rows", "k-means++", "k-means||"} or array_like, optional
        ``None`` or ``"random"`` (the seed's behaviour): ``num_clusters``
        random rows (with replacement, and a warning, only when there are
        fewer rows than clusters); under a communicator rank 0 splits the
        draws over the ranks, as the seed does.  ``"rows"``: random rows too,
        but drawn by global row index, so a distributed run draws the rows
        one process would draw from the concatenated shards.  ``"k-means++"``: greedy k-means++ as
        scikit-learn seeds (``2 + log k`` candidates per centre, the one that
        lowers the potential most); under a communicator with several ranks
        it runs as ``"k-means||"`` (Bahmani et al., 2012: five rounds of
        oversampling ``2k`` rows, reduced by weighted greedy k-means++), drawn
        so that every rank gets the same means and one process asking for
        ``"k-means||"`` on the concatenated shards gets them too.  An array of
        shape (num_clusters, n_features) or (n_codebooks, num_clusters,
        n_features) gives the starting means.
    seed : int, numpy.random.Generator or None
        Makes the random initialisation reproducible.
    comm : vqcore.comm.Communicator, optional
        Distributed run: counts and sums are all-reduced every step, so every
        rank ends with the same means, equal to serial k-means on all shards.
    n_init : int
        Runs from different random starts; the means with the lowest
        objective (inertia for euclidean) are returned.
    max_points_per_cluster : int, optional
        Subsampling when ``n_samples >> num_clusters``: with more than
        ``max_points_per_cluster * num_clusters`` rows (over all ranks), each
        row is kept with probability ``max_points_per_cluster * num_clusters
        / n_samples`` and k-means runs on the kept rows only.  ``None`` (the
        default) uses every row.  256, faiss's choice, costs little: a
        centroid's mean from 256 rows has a standard error of 1/16 of the
        cluster's spread, far below the distance between centroids that
        matter, and Lloyd then runs on ``256 k`` rows whatever ``n``.  The
        residual and product quantizers use 256.  The kept rows are drawn per
        global row index, so sharding does not change them.
    init_size : int, optional
        Rows the initialisation draws from (scikit-learn's ``MiniBatchKMeans``
        option): with more rows, a random subset of about ``init_size`` rows
        (kept per global row index, as above) seeds the means; Lloyd still
        runs on all (or ``max_points_per_cluster * k``) rows.  Greedy
        k-means++ costs ``O(rows * k * log k)``, several Lloyd iterations:
        ``init_size = 16 * k`` makes it negligible.  None seeds from every row.

    Returns
    -------
    means : ndarray of shape (num_clusters, n_features) or (n_codebooks, num_clusters, n_features)
    counts : ndarray of int64, shape (num_clusters,) or (n_codebooks, num_clusters)
        Rows assigned to each mean in the last step (before its update),
        counted over the subsample when subsampling.

    Notes
    -----
    An empty cluster keeps its previous mean.  With ``iters=0`` the counts are
    those of one assignment to the initial means.
    """
    comm = resolve_comm(comm)
    metric = _validate.metric(metric)
    num_clusters = _validate.positive_int("num_clusters", num_clusters)
    iters = _validate.positive_int("iters", iters, minimum=0)
    n_init = _validate.positive_int("n_init", n_init)
    if max_points_per_cluster is not None:
        max_points_per_cluster = _validate.positive_int("max_points_per_cluster", max_points_per_cluster)
    if init_size is not None:
        init_size = _validate.positive_int("init_size", init_size)
    x = _validate.float_array("x", x)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[None]
    c, n, d = x.shape
    init = _check_init(init, n_init, c, num_clusters, d, x.dtype, squeeze)
    if comm.size > 1:
        check_same(comm, c=c, d=d, num_clusters=num_clusters, iters=iters, metric=metric, dtype=x.dtype.str,
                   init=init if isinstance(init, str) else "array", n_init=n_init,
                   max_points_per_cluster=max_points_per_cluster, init_size=init_size)
    offset, total = _global_rows(n, comm)
    if isinstance(init, str):
        if total == 0:
            raise ValueError("x has no rows to initialise k-means from; pass data or init=")
        if total < num_clusters:
            warnings.warn(
                f"n_samples={total} < num_clusters={num_clusters}: initial means are drawn "
                "with replacement, so some start equal",
                UserWarning,
                stacklevel=2,
            )
    rng = _validate.rng(seed)
    # the seed's path (random init, all rows, one run) draws exactly what it always drew
    needs_root = (isinstance(init, str) and init != "random") or (
        max_points_per_cluster is not None and total > max_points_per_cluster * num_clusters) or (
        init_size is not None and total > init_size)
    best = None
    for _ in range(n_init):
        root = _shared_root(rng, comm) if needs_root else 0
        xs, xs_offset, xs_total = _subsample(x, None if max_points_per_cluster is None else
                                             max_points_per_cluster * num_clusters,
                                             _SUBSAMPLE_STREAM, root, comm, offset, total)
        if isinstance(init, str):
            seeding = _subsample(xs, init_size, _INIT_STREAM, root, comm, xs_offset, xs_total)
            means = _initialise(seeding[0], num_clusters, init, rng, root, comm, seeding[1])
        else:
            means = init
        means, counts = _lloyd(xs, means.astype(x.dtype, copy=False), iters, metric, comm)
        objective = _objective(xs, means, metric, comm) if n_init > 1 else 0.0
        if best is None or objective < best[0]:
            best = (objective, means, counts)
    _, means, counts = best
    counts = counts.astype(np.int64)
    if squeeze:
        return means[0], counts[0]
    return means, counts
