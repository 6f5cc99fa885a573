"""Random draws of the seed: vectors for initialisation, multinomials as binomial chains, gumbel argmax."""
from __future__ import annotations

import numpy as np

from . import _validate

__all__ = ["sample_vectors", "sample_multinomial", "gumbel_sample"]


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
        logits = logits / temperature + rng.gumbel(size=logits.shape).astype(logits.dtype, copy=False)
    return np.argmax(logits, axis=-1).astype(np.int64, copy=False)
