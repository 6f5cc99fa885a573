"""The codebook-training engine: the seed's EMA step as small array functions.

Everything works on float32 numpy arrays; functions whose name ends in ``_``
update their first arguments in place (so they also run on zero-copy views of
torch buffers).  Statistics that must be global in a distributed run go
through a communicator (``comm``); the division happens after the reduction.
"""
from __future__ import annotations

import numpy as np

from ._config import num_threads
from .comm import resolve_comm
from .kernels.stats import segment_sums
from .linalg import l2_normalize
from .sampling import sample_vectors, sample_vectors_distributed

__all__ = [
    "cluster_stats",
    "per_set_statistics",
    "ema_update_",
    "laplace_smoothing",
    "expire_codes_",
    "batch_stats",
    "decay_update",
    "affine_embed",
    "affine_to_codebook",
]

# The seed clamps variances here before taking square roots.
VARIANCE_FLOOR = 1e-5


def cluster_stats(x, indices, codebook_size, *, mask=None, comm=None):
    """Rows and row sums per code: the seed's ``bins`` and ``embed_sum``.

    Parameters
    ----------
    x : ndarray of shape (n_codebooks, n, d)
    indices : ndarray of int64, shape (n_codebooks, n), values in [0, codebook_size)
    codebook_size : int
    mask : ndarray of bool, shape (n_codebooks, n), optional
        Rows where False are left out.
    comm : Communicator, optional
        Counts and sums are all-reduced (one message).

    Returns
    -------
    counts : ndarray of float32, shape (n_codebooks, codebook_size)
    sums : ndarray of float32, shape (n_codebooks, codebook_size, d)
    """
    comm = resolve_comm(comm)
    c, n, d = x.shape

    def fill(h, sums, counts):
        use_mask = mask is not None
        row_mask = np.ascontiguousarray(mask[h]) if use_mask else np.ones(1, dtype=np.bool_)
        segment_sums(np.ascontiguousarray(x[h]), np.ascontiguousarray(indices[h]), row_mask, use_mask,
                     sums.shape[0], sums, counts)

    stats = per_set_statistics(c, codebook_size, d, fill)
    comm.allreduce_sum_(stats)
    with np.errstate(over="ignore"):  # overflowing sums become Inf, which ema_update_ refuses
        return stats[..., d].astype(np.float32), stats[..., :d].astype(np.float32)


def per_set_statistics(c, k, d, fill):
    """Per-code sums and counts of ``c`` sets in one all-reducible float64 buffer ``(c, k, d + 1)``.

    ``fill(h, sums, counts)`` accumulates set ``h`` into zeroed per-thread
    slabs ``sums (threads, k, d)`` and ``counts (threads, k)`` (one slab per
    thread, so threads never write the same memory); the slabs are allocated
    once per call and summed into the buffer, whose last column holds the
    counts so one all-reduce carries both.
    """
    threads = num_threads()
    stats = np.zeros((c, k, d + 1))
    sums = np.empty((threads, k, d))
    counts = np.empty((threads, k))
    for h in range(c):
        sums.fill(0.0)
        counts.fill(0.0)
        fill(h, sums, counts)
        stats[h, :, :d] = sums.sum(axis=0)
        stats[h, :, d] = counts.sum(axis=0)
    return stats


def _lerp_(old, new, weight):
    # torch.lerp's two-sided formula, so EMA buffers round like the seed's.
    if weight < 0.5:
        old += np.float32(weight) * (new - old)
    else:
        old[...] = new - (new - old) * np.float32(1.0 - weight)


def laplace_smoothing(counts, eps):
    """The seed's smoothed cluster sizes, rescaled to the same total.

    ``(n_i + eps) / (N + k * eps) * N`` per codebook, so a code with no rows
    never divides by zero.
    """
    total = counts.sum(axis=-1, keepdims=True)
    k = counts.shape[-1]
    return (counts + np.float32(eps)) / (total + np.float32(k * eps)) * total


def ema_update_(cluster_size, embed_avg, embed, counts, sums, *, decay, eps, metric="euclidean"):
    """One EMA step of the codebook, in place, or a ValueError with nothing written.

    ``cluster_size`` and ``embed_avg`` move towards this batch's ``counts`` and
    ``sums`` by ``1 - decay``; ``embed`` becomes ``embed_avg`` over the
    Laplace-smoothed sizes (unit-normalised for ``metric="cosine"``). The new
    state is computed aside and written only when finite: sums of finite but huge
    vectors overflow float32, and Inf must not reach the codebook.
    """
    size, average = cluster_size.copy(), embed_avg.copy()
    with np.errstate(over="ignore", invalid="ignore"):  # overflows are refused below, not warned about
        _lerp_(size, counts, 1.0 - decay)
        _lerp_(average, sums, 1.0 - decay)
        normalized = average / laplace_smoothing(size, eps)[..., None]
        if metric == "cosine":
            normalized = l2_normalize(normalized)
    if not (np.isfinite(average).all() and np.isfinite(normalized).all()):
        raise ValueError("the codebook's EMA sums overflow float32 (per-code sums of this batch pass 3.4e38: its "
                         "vectors are too large); rescale x (the codebook is unchanged).")
    cluster_size[...] = size
    embed_avg[...] = average
    embed[...] = normalized


def expire_codes_(cluster_size, embed_avg, embed, samples, *, threshold, reset_cluster_size, rng, metric="euclidean",
                  comm=None):
    """Replace codes whose EMA size fell below ``threshold`` by random batch vectors.

    The in-place state comes first, in the order of :func:`ema_update_`.

    Parameters
    ----------
    cluster_size : ndarray of shape (n_codebooks, k)          # INOUT
    embed_avg, embed : ndarray of shape (n_codebooks, k, d)   # INOUT
    samples : ndarray of shape (n_codebooks, m, d)
        The batch (unmasked, before any affine transform, as in the seed).
    threshold : float
        0 turns expiry off.
    reset_cluster_size : float
        The size a replaced code restarts with (its ``embed_avg`` is the new
        vector times this).
    rng : numpy.random.Generator
    metric : {"euclidean", "cosine"}
        Normalise the replacement vectors.
    comm : Communicator, optional
        Draw the replacements across ranks (rank 0 decides how many come from
        each rank), so every rank replaces with the same vectors.

    Returns
    -------
    ndarray of bool, shape (n_codebooks, k): the codes that were replaced.
    """
    comm = resolve_comm(comm)
    expired = cluster_size < threshold if threshold > 0 else np.zeros(cluster_size.shape, dtype=bool)
    if not expired.any():
        return expired
    if metric == "cosine":
        samples = l2_normalize(samples)
    for h in range(expired.shape[0]):
        count = int(expired[h].sum())
        if count == 0:
            continue
        if comm.size > 1:
            new = sample_vectors_distributed(samples[h], count, rng, comm)
        else:
            new = sample_vectors(samples[h], count, rng)
        embed[h][expired[h]] = new
        cluster_size[h][expired[h]] = reset_cluster_size
        embed_avg[h][expired[h]] = new * np.float32(reset_cluster_size)
    return expired


def batch_stats(data, mask=None, *, comm=None):
    """Mean and biased variance of a batch per codebook set.

    Parameters
    ----------
    data : ndarray of shape (n_codebooks, n, d)
    mask : ndarray of bool, shape (n_codebooks, n), optional
    comm : Communicator, optional
        Global statistics: the number of rows and the sums are all-reduced
        (the seed's ``sync_affine_param``); the variance is taken around the
        global mean.

    Returns
    -------
    (mean, variance) : ndarrays of float32, shape (n_codebooks, 1, d), or None
        None when there are no rows (on this process, or on any rank with
        ``comm``): a mean of nothing is not a statistic to keep.
    """
    if mask is not None:
        data = np.stack([part[m] for part, m in zip(data, mask)])
    data64 = data.astype(np.float64)
    if comm is None:
        if data.shape[1] == 0:
            return None
        mean = data64.mean(axis=1, keepdims=True)
        var = ((data64 - mean) ** 2).mean(axis=1, keepdims=True)
        with np.errstate(over="ignore"):  # an overflowing variance becomes Inf, which the callers refuse
            return mean.astype(np.float32), var.astype(np.float32)
    head = np.array([float(data.shape[1])])
    totals = np.concatenate([head, data64.sum(axis=1).ravel()])
    comm.allreduce_sum_(totals)
    count = totals[0]
    if count == 0:
        return None
    mean = totals[1:].reshape(data.shape[0], 1, data.shape[2]) / count
    numer = ((data64 - mean) ** 2).sum(axis=1, keepdims=True)
    comm.allreduce_sum_(numer)
    with np.errstate(over="ignore"):
        return mean.astype(np.float32), (numer / count).astype(np.float32)


def decay_update(old, new, decay):
    """``old * decay + new * (1 - decay)``; ``new`` itself when ``old`` is None."""
    if old is None:
        return np.array(new, dtype=np.float32)
    return (old * np.float32(decay) + new * np.float32(1.0 - decay)).astype(np.float32)


def _stds(codebook_variance, batch_variance):
    codebook_std = np.sqrt(np.maximum(codebook_variance, np.float32(VARIANCE_FLOOR)))
    batch_std = np.sqrt(np.maximum(batch_variance, np.float32(VARIANCE_FLOOR)))
    return codebook_std, batch_std


def affine_embed(embed, codebook_mean, codebook_variance, batch_mean, batch_variance):
    """The codebook moved onto the batch statistics (the seed's ``affine_param``)."""
    codebook_std, batch_std = _stds(codebook_variance, batch_variance)
    return (embed - codebook_mean) * (batch_std / codebook_std) + batch_mean


def affine_to_codebook(x, codebook_mean, codebook_variance, batch_mean, batch_variance):
    """The inverse map: batch vectors moved onto the codebook statistics before the EMA update."""
    codebook_std, batch_std = _stds(codebook_variance, batch_variance)
    with np.errstate(over="ignore"):  # an overflow reaches the EMA sums as Inf, which ema_update_ refuses
        return (x - batch_mean) * (codebook_std / batch_std) + codebook_mean
