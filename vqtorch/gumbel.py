"""Code selection from a distance matrix: argmax, gumbel sampling, straight-through estimators."""
from __future__ import annotations

import torch

__all__ = ["gumbel_select"]


def _safe_log(t, eps=1e-20):
    return torch.log(t.clamp(min=eps))


def gumbel_select(logits, *, temperature, stochastic, straight_through, reinmax, training):
    """Pick one code per row of ``logits`` (negative distances, shape (..., k)).

    Returns
    -------
    indices : Tensor of shape (...), int64
    soft : Tensor of shape (..., k) or None
        Zero-valued term carrying the straight-through gradient (``pi - pi.detach()``),
        to be multiplied with the codebook and added to the gathered codes; None when
        no straight-through estimator is active.  Its value is exactly zero, so the
        forward result equals the seed's ``one_hot @ embed``.
    """
    if training and stochastic and temperature > 0:
        # The seed's noise: uniform draws of the logits' shape, in this order.
        noise = torch.zeros_like(logits).uniform_(0, 1)
        sampling_logits = logits / temperature - _safe_log(-_safe_log(noise))
    else:
        sampling_logits = logits
    indices = sampling_logits.argmax(dim=-1)
    if not straight_through or temperature <= 0 or not training:
        return indices, None
    if reinmax:
        # Reinmax, algorithm 2 of https://arxiv.org/abs/2304.08612.
        one_hot = torch.nn.functional.one_hot(indices, logits.shape[-1]).to(logits.dtype)
        pi0 = logits.softmax(dim=-1)
        pi1 = (one_hot + (logits / temperature).softmax(dim=-1)) / 2
        # The seed takes this softmax over dim=1 (the row axis of its (c, n, k) logits); kept for parity.
        pi1 = ((_safe_log(pi1) - logits).detach() + logits).softmax(dim=1)
        pi2 = 2 * pi1 - 0.5 * pi0
        return indices, pi2 - pi2.detach()
    pi1 = (logits / temperature).softmax(dim=-1)
    return indices, pi1 - pi1.detach()
