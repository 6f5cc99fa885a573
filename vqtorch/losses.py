"""Auxiliary losses of the layer: commitment (MSE, masked) and orthogonal regularisation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_mse", "orthogonal_loss", "head_mask"]


def head_mask(mask, like):
    """Expand a (b, n) mask to the codebook layout ``like`` (c, b*h, n, d) or (b, n, d), without d."""
    if like.ndim == 3:
        return mask
    c, bh = like.shape[:2]
    h = bh // mask.shape[0]
    return mask.unsqueeze(1).expand(-1, h, -1).reshape(bh, -1).unsqueeze(0).expand(c, -1, -1)


def masked_mse(pred, target, mask=None):
    """Mean squared error in float32, over positions where ``mask`` (b, n) is True."""
    pred, target = pred.float(), target.float()
    if mask is None:
        return F.mse_loss(pred, target)
    err = F.mse_loss(pred, target, reduction="none")
    return err[head_mask(mask, err)].mean()


def orthogonal_loss(codes):
    """Eq. (2) of https://arxiv.org/abs/2112.00384 for codes of shape (c, k, d)."""
    c, k = codes.shape[:2]
    normed = F.normalize(codes, dim=-1)
    cosine = torch.bmm(normed, normed.transpose(1, 2))
    return cosine.pow(2).sum() / (c * k ** 2) - 1 / k
