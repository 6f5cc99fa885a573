"""Auxiliary losses of the layer: commitment (MSE, masked) and orthogonal regularisation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_mse", "orthogonal_loss"]


def masked_mse(pred, target, mask=None):
    """Mean squared error in float32, over positions where ``mask`` (``pred``'s shape without the last axis) holds."""
    pred, target = pred.float(), target.float()
    if mask is None:
        return F.mse_loss(pred, target)
    err = F.mse_loss(pred, target, reduction="none")
    return err[mask].mean()


def orthogonal_loss(codes):
    """Eq. (2) of https://arxiv.org/abs/2112.00384 for codes of shape (c, k, d)."""
    c, k = codes.shape[:2]
    normed = F.normalize(codes, dim=-1)
    cosine = torch.bmm(normed, normed.transpose(1, 2))
    return cosine.pow(2).sum() / (c * k ** 2) - 1 / k
