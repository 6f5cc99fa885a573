"""``RandomProjectionQuantizer``: BEST-RQ's frozen quantizer (https://arxiv.org/abs/2202.01855).

A drop-in for vector-quantize-pytorch 1.14.5's class: inputs are layer-normalised, projected
by frozen random matrices (one per codebook) and matched against a cosine-similarity codebook
per head by vqtorch's :class:`~vqtorch.layer.VectorQuantize`. The random draws happen in the
seed's order, so the same ``torch.manual_seed`` gives the same projections and codebooks.
"""
from __future__ import annotations

import torch
from torch import nn

from vqcore.fsq import check_int

from .layer import VectorQuantize

__all__ = ["RandomProjectionQuantizer"]


class RandomProjectionQuantizer(nn.Module):
    """Frozen random projections followed by a per-head cosine codebook.

    Parameters
    ----------
    dim : int
        Input feature size.
    codebook_size : int
        Codes per codebook.
    codebook_dim : int
        Size of each random projection's output.
    num_codebooks : int
        Independent projections and codebooks (USM's multi-softmax targets).
    norm : bool
        Layer-normalise inputs (no affine parameters) before projecting.
    **kwargs
        Passed to the inner :class:`~vqtorch.layer.VectorQuantize` (e.g. ``backend``).

    Notes
    -----
    ``forward(x)`` with ``x`` of shape ``(b, n, dim)`` returns the indices ``(b, n)`` (one
    codebook) or ``(b, n, num_codebooks)``; ``forward(x, indices=...)`` returns the
    cross-entropy loss of those indices under the codebook similarities. The inner
    quantizer always runs in eval mode, so its codebook never changes.
    """

    def __init__(self, *, dim, codebook_size, codebook_dim, num_codebooks=1, norm=True, **kwargs):
        super().__init__()
        for name, value in (("dim", dim), ("codebook_size", codebook_size), ("codebook_dim", codebook_dim),
                            ("num_codebooks", num_codebooks)):
            check_int(name, value)
        self.num_codebooks = num_codebooks
        self.dim = dim
        rand_projs = torch.empty(num_codebooks, dim, codebook_dim)
        nn.init.xavier_normal_(rand_projs)  # the seed's first draw
        self.register_buffer("rand_projs", rand_projs)
        # "normalized to have 0 mean and standard deviation of 1 ... to prevent collapse" (section 3)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False) if norm else nn.Identity()
        self.vq = VectorQuantize(dim=codebook_dim * num_codebooks, heads=num_codebooks,
                                 codebook_size=codebook_size, use_cosine_sim=True,
                                 separate_codebook_per_head=True, **kwargs)

    def forward(self, x, indices=None):
        """Indices of ``x`` ``(b, n, dim)``, or the cross-entropy loss of ``indices`` (see class notes)."""
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"x must be a floating point tensor, got {getattr(x, 'dtype', type(x))}.")
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (batch, seq, {self.dim}), got {tuple(x.shape)}.")
        x = self.norm(x)
        # (b, n, d) x (h, d, e) -> (b, n, h * e): each codebook's projection side by side
        x = torch.einsum("bnd,hde->bnhe", x, self.rand_projs).flatten(2)
        self.vq.eval()
        # (quantize, indices, loss) without indices=, (quantize, ce_loss) with: the second either way
        return self.vq(x, indices=indices)[1]
