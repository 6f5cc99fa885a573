"""``ResidualLFQ`` and ``GroupedResidualLFQ``: drop-ins for vector-quantize-pytorch 1.14.5's residual LFQ.

Stage ``i`` is an :class:`vqtorch.LFQ` with codes ``+-2 ** -i``; each stage's auxiliary loss is
returned per stage.  The residual loop, the quantize-dropout draw and the decoding from indices are
:mod:`vqtorch.residual`'s.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .amp import no_cuda_autocast
from .lfq import LFQ
from .residual import GroupedBase, ResidualBase, check_int, residual_loop
from .residual_fsq import grouped_to_vqcore

__all__ = ["ResidualLFQ", "GroupedResidualLFQ"]


class ResidualLFQ(ResidualBase):
    """Residual lookup-free quantization, the seed's ``ResidualLFQ``.

    Parameters
    ----------
    dim : int
        Features of the input; projected to ``log2(codebook_size)`` when they differ.
    codebook_size : int
        A power of two, shared by every stage.
    num_quantizers : int
        Stages; stage ``i`` has codes ``+-2 ** -i``.
    quantize_dropout, quantize_dropout_cutoff_index, quantize_dropout_multiple_of :
        As in :class:`vqtorch.ResidualVQ` (drawn from Python's ``random``; dropped stages give ``-1``
        and a zero loss).  1.14.5 fails with a NameError for ``quantize_dropout_multiple_of > 1``;
        here it rounds up.
    **kwargs
        Other :class:`vqtorch.LFQ` arguments (``entropy_loss_weight``, ...), passed to each stage.

    Notes
    -----
    ``forward(x, mask=None, return_all_codes=False, rand_quantize_dropout_fixed_seed=None)`` takes
    (b, n, dim) and returns ``(quantized, indices (b, n, q), aux_losses (q,))``, plus ``all_codes``.
    """

    def __init__(self, *, dim, codebook_size, num_quantizers, quantize_dropout=False,
                 quantize_dropout_cutoff_index=0, quantize_dropout_multiple_of=1, **kwargs):
        super().__init__()
        check_int("dim", dim, 1)
        check_int("codebook_size", codebook_size, 2)
        if codebook_size & (codebook_size - 1):
            raise ValueError(f"codebook_size={codebook_size} must be a power of 2 for lookup-free quantization; "
                             f"use {1 << codebook_size.bit_length()}.")
        self._init_dropout(num_quantizers, quantize_dropout, quantize_dropout_cutoff_index,
                           quantize_dropout_multiple_of)
        codebook_dim = codebook_size.bit_length() - 1
        self.dim = dim
        self.has_projections = codebook_dim != dim
        self.project_in = nn.Linear(dim, codebook_dim) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if self.has_projections else nn.Identity()
        self.layers = nn.ModuleList([
            LFQ(dim=codebook_dim, codebook_scale=2 ** -q, **kwargs) for q in range(num_quantizers)
        ])
        self._check_stage_projections()
        self.codebook_size = codebook_size

    @property
    def codebooks(self):
        """Every stage's codes (already scaled): (num_quantizers, codebook_size, log2(codebook_size))."""
        return torch.stack([layer.codebook for layer in self.layers])

    def to_vqcore(self):
        """A ``vqcore.lfq.ResidualLFQ`` with this configuration and projections (numpy-only eval encode/decode)."""
        from vqcore.lfq import ResidualLFQ as NumpyResidualLFQ

        quantizer = NumpyResidualLFQ(self.dim, self.num_quantizers, self.codebook_size)
        return quantizer.load_state_dict(self.state_dict())

    def _check_forward(self, x, indices=None):
        """Validate the input before anything runs."""
        self._check_tokens(x)

    def forward(self, x, mask=None, return_all_codes=False, rand_quantize_dropout_fixed_seed=None):
        """Quantize ``x`` (b, n, dim) stage by stage; see the class notes for what is returned."""
        self._check_forward(x)
        x = self.project_in(x)
        last = self._last_stage(self.training, rand_quantize_dropout_fixed_seed)
        stages = [partial(layer, mask=mask) for layer in self.layers]
        with no_cuda_autocast():
            quantized, extras = residual_loop(x, stages, last)
        null_loss = torch.zeros((), device=x.device, dtype=x.dtype)
        return self._stack_outputs(quantized, extras, null_loss=null_loss, return_all_codes=return_all_codes)


class GroupedResidualLFQ(GroupedBase):
    """Grouped residual LFQ, the seed's ``GroupedResidualLFQ``: one :class:`ResidualLFQ` per feature group.

    Parameters
    ----------
    dim : int
        Features of the input, split into ``groups`` equal parts.
    groups : int
        Must divide ``dim``.
    accept_image_fmap : bool
        Split on axis 1 instead of the last axis (the stacks still need (b, n, d) chunks, as in 1.14.5).
    **kwargs
        Arguments of :class:`ResidualLFQ` (``codebook_size``, ``num_quantizers``, ...).

    Notes
    -----
    ``forward(x, mask=None, return_all_codes=False)`` returns ``(quantized, indices (groups, b, n, q),
    aux_losses (groups, q))`` and, with ``return_all_codes``, a tuple of each group's codes.
    """

    residual_cls = ResidualLFQ

    def to_vqcore(self):
        """A ``vqcore.lfq.GroupedResidualLFQ`` holding this module's projections, for numpy-only eval.

        Codes as :meth:`vqtorch.GroupedResidualFSQ.to_vqcore` gives them: (..., groups, q).
        """
        from vqcore.lfq import GroupedResidualLFQ as NumpyGroupedResidualLFQ

        return grouped_to_vqcore(self, NumpyGroupedResidualLFQ, codebook_size=self.codebook_size)

    def forward(self, x, mask=None, return_all_codes=False):
        """Quantize each group of features with its residual stack."""
        return self._grouped_forward(x, return_all_codes=return_all_codes, mask=mask)
