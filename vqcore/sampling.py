"""Random draws of the seed: vectors for initialisation, multinomials as binomial chains, gumbel argmax."""
from __future__ import annotations

import numpy as np

from . import _validate
from .comm import resolve_comm

__all__ = ["sample_vectors", "sample_multinomial", "sample_vectors_distributed", "gumbel_sample"]


def sample_vectors(samples, num, rng=None):
    """Draw ``num`` rows of ``samples`` at random, as the seed does.

    Without replacement when there are enough rows (a random subset in random
    order, the seed's ``randperm(n)[:num]``), with replacement otherwise.

    Parameters
    ----------
    samples : ndarray of shape (n_samples, n_features)
    num : int
        Rows to draw (0 allowed).
    rng : numpy.random.Generator, int or None

    Returns
    -------
    ndarray of shape (num, n_features)
    """
    samples = np.asarray(samples)
    if samples.ndim != 2:
        raise ValueError(f"samples must be 2-D (n_samples, n_features); got shape {samples.shape}")
    num = _validate.positive_int("num", num, minimum=0)
    rng = _validate.rng(rng)
    n = samples.shape[0]
    if num == 0:
        return samples[:0].copy()
    if n == 0:
        raise ValueError(f"cannot draw {num} vectors from an empty array; pass at least one row")
    if n >= num:
        picked = rng.choice(n, size=num, replace=False)
    else:
        picked = rng.integers(0, n, size=num)
    return samples[picked]


def sample_multinomial(total_count, probs, rng=None):
    """Split ``total_count`` draws over categories as a chain of binomials.

    Category ``i`` gets ``Binomial(left, p_i / p_remaining)`` of the draws not
    yet assigned; the last category with non-zero probability takes the rest,
    so the counts always sum to ``total_count`` exactly.  This is the seed's
    ``sample_multinomial`` (used to decide how many samples each rank gives).

    Parameters
    ----------
    total_count : int
    probs : array_like of shape (n_categories,)
        Non-negative weights; normalised here.
    rng : numpy.random.Generator, int or None

    Returns
    -------
    ndarray of int64, shape (n_categories,)
    """
    total_count = _validate.positive_int("total_count", total_count, minimum=0)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 1 or probs.size == 0:
        raise ValueError(f"probs must be a non-empty 1-D array; got shape {probs.shape}")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0) or probs.sum() <= 0:
        raise ValueError(f"probs must be finite, non-negative and not all zero; got {probs}")
    rng = _validate.rng(rng)
    probs = probs / probs.sum()
    counts = np.zeros(probs.size, dtype=np.int64)
    last = int(np.flatnonzero(probs)[-1])
    left, remainder = total_count, 1.0
    for i in range(last):
        if left == 0:
            break
        q = min(1.0, probs[i] / remainder) if remainder > 0 else 0.0
        drawn = int(rng.binomial(left, q))
        counts[i] = drawn
        left -= drawn
        remainder -= probs[i]
    counts[last] += left
    return counts


def gumbel_sample(logits, *, temperature=1.0, stochastic=False, training=True, rng=None):
    """Argmax over the last axis, optionally of gumbel-perturbed logits (the seed's sampling).

    Parameters
    ----------
    logits : ndarray of shape (..., n_codes)
        Scores, higher = more likely (e.g. :func:`vqcore.distances`).
    temperature : float
        Divides the logits before the noise is added.  ``<= 0`` means plain argmax.
    stochastic : bool
        Add gumbel noise (sampling from ``softmax(logits / temperature)``).
    training : bool
        The seed samples only in training; ``False`` means plain argmax.
    rng : numpy.random.Generator, int or None

    Returns
    -------
    ndarray of int64, shape (...,)
    """
    logits = np.asarray(logits)
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last axis; got shape {logits.shape}")
    if training and stochastic and temperature > 0:
        rng = _validate.rng(rng)
        # float64: a tiny temperature must not overflow float32 logits to ties of inf
        logits = logits.astype(np.float64) / temperature + rng.gumbel(size=logits.shape)
    return np.argmax(logits, axis=-1).astype(np.int64, copy=False)


def sample_vectors_distributed(local_samples, num, rng=None, comm=None):
    """Draw ``num`` vectors from the union of every rank's ``local_samples``.

    The seed's ``sample_vectors_distributed``: rank 0 splits ``num`` over the
    ranks in proportion to their row counts (:func:`vqcore.sample_multinomial`,
    a chain of binomials) and broadcasts the split; every rank draws its share
    locally (:func:`vqcore.sample_vectors`); one all-gather puts the picks
    together in rank order, so every rank returns the same array.

    Parameters
    ----------
    local_samples : array_like of shape (n_local, d) or (c, n_local, d)
        This rank's vectors (per codebook set ``c``); ``n_local`` may differ
        between ranks and may be zero.
    num : int
        Vectors to draw per codebook set; the same on every rank.
    rng : numpy.random.Generator, int or None
        This rank's randomness: rank 0's draws the split, every rank draws
        its local picks from its own.
    comm : Communicator, optional
        Default: one process, where this is :func:`vqcore.sample_vectors`.

    Returns
    -------
    numpy.ndarray of shape (num, d) or (c, num, d)
        Identical on every rank.  A rank draws distinct rows when it holds at
        least as many as it contributes, else with replacement (as the seed).

    Raises
    ------
    ValueError
        On every rank, if ``num`` or ``c`` differs between ranks, or if no rank
        holds a vector while ``num > 0``.
    """
    comm = resolve_comm(comm)
    x = np.asarray(local_samples)
    if x.ndim not in (2, 3):
        raise ValueError(f"local_samples must have shape (n, d) or (c, n, d); got shape {x.shape}")
    num = _validate.positive_int("num", num, minimum=0)
    rng = _validate.rng(rng)
    batched = x if x.ndim == 3 else x[None]
    c, n_local = batched.shape[:2]

    headers = comm.allgather_object((num, c, n_local))
    for rank, (their_num, their_c, _) in enumerate(headers):
        if (their_num, their_c) != (headers[0][0], headers[0][1]):
            raise ValueError(
                f"sample_vectors_distributed: rank 0 asks for num={headers[0][0]} from c={headers[0][1]} "
                f"codebook sets, rank {rank} for num={their_num} from c={their_c}; "
                "every rank must pass the same num and c"
            )
    rows = np.array([h[2] for h in headers])
    if num > 0 and rows.sum() == 0:
        raise ValueError(f"cannot draw num={num} vectors: every rank holds zero vectors")

    # per_rank[j, r]: how many vectors rank r contributes to codebook set j.
    per_rank = np.zeros((c, comm.size), dtype=np.int64)
    if comm.rank == 0 and num > 0:
        for j in range(c):
            per_rank[j] = sample_multinomial(num, rows, rng)
    comm.bcast_(per_rank, root=0)

    local = np.concatenate([sample_vectors(batched[j], int(per_rank[j, comm.rank]), rng) for j in range(c)])
    gathered = comm.allgatherv(local)

    # gathered is rank-major (rank 0's picks for set 0, 1, ..., then rank 1's); regroup by set.
    offsets = np.concatenate(([0], np.cumsum(per_rank.T.ravel())))
    out = np.empty((c, num) + batched.shape[2:], dtype=x.dtype)
    for j in range(c):
        out[j] = np.concatenate(
            [gathered[offsets[r * c + j]:offsets[r * c + j + 1]] for r in range(comm.size)]
        )
    return out if x.ndim == 3 else out[0]
