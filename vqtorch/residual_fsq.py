"""``ResidualFSQ`` and ``GroupedResidualFSQ``: drop-ins for vector-quantize-pytorch 1.14.5's residual FSQ.

Stage ``i`` is an :class:`vqtorch.FSQ` working at scale ``(levels - 1) ** -i``: it quantizes the
residual divided by that scale, and its codes are multiplied back.  The residual loop, the
quantize-dropout draw and the decoding from indices are :mod:`vqtorch.residual`'s.
"""
from __future__ import annotations

import torch
from torch import nn

from .amp import no_cuda_autocast
from .fsq import FSQ, check_levels
from .residual import GroupedBase, ResidualBase, check_int, residual_loop

__all__ = ["ResidualFSQ", "GroupedResidualFSQ", "grouped_to_vqcore"]


class ResidualFSQ(ResidualBase):
    """Residual finite scalar quantization, the seed's ``ResidualFSQ``.

    Parameters
    ----------
    dim : int
        Features of the input; projected to ``len(levels)`` when they differ.
    levels : list of int
        Levels of each codebook dimension (each >= 2), shared by every stage.
    num_quantizers : int
        Stages; stage ``i`` quantizes at scale ``(levels - 1) ** -i``.
    quantize_dropout, quantize_dropout_cutoff_index, quantize_dropout_multiple_of :
        As in :class:`vqtorch.ResidualVQ` (drawn from Python's ``random``; dropped stages give ``-1``).
        1.14.5 fails with a NameError for ``quantize_dropout_multiple_of > 1``; here it rounds up.
    **kwargs
        Other :class:`vqtorch.FSQ` arguments (``allowed_dtypes``, ...), passed to each stage.

    Notes
    -----
    ``forward(x, return_all_codes=False, rand_quantize_dropout_fixed_seed=None)`` takes (b, n, dim) and
    returns ``(quantized, indices (b, n, q))``, plus ``all_codes`` (q, b, n, len(levels)).
    """

    def __init__(self, *, dim, levels, num_quantizers, quantize_dropout=False, quantize_dropout_cutoff_index=0,
                 quantize_dropout_multiple_of=1, **kwargs):
        super().__init__()
        check_int("dim", dim, 1)
        levels = check_levels(levels)
        self._init_dropout(num_quantizers, quantize_dropout, quantize_dropout_cutoff_index,
                           quantize_dropout_multiple_of)
        codebook_dim = len(levels)
        self.dim = dim
        self.has_projections = codebook_dim != dim
        self.project_in = nn.Linear(dim, codebook_dim) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if self.has_projections else nn.Identity()
        self.levels = levels
        self.layers = nn.ModuleList([FSQ(levels=levels, dim=codebook_dim, **kwargs) for _ in range(num_quantizers)])
        self._check_stage_projections()
        self.codebook_size = self.layers[0].codebook_size
        base = torch.tensor(levels, dtype=torch.float32) - 1
        scales = torch.stack([base ** -q for q in range(num_quantizers)])
        self.register_buffer("scales", scales, persistent=False)

    @property
    def codebooks(self):
        """Every stage's implicit codebook, unscaled: (num_quantizers, codebook_size, len(levels))."""
        return torch.stack([layer.implicit_codebook for layer in self.layers])

    def _code_scales(self):
        return self.scales

    def to_vqcore(self):
        """A ``vqcore.fsq.ResidualFSQ`` with these levels and projections: numpy-only encode/decode (eval mode)."""
        from vqcore.fsq import ResidualFSQ as NumpyResidualFSQ

        quantizer = NumpyResidualFSQ(self.dim, self.levels, self.num_quantizers)
        return quantizer.load_state_dict(self.state_dict())

    def _check_forward(self, x, indices=None):
        """Validate the input before anything runs."""
        self._check_tokens(x)

    def forward(self, x, return_all_codes=False, rand_quantize_dropout_fixed_seed=None):
        """Quantize ``x`` (b, n, dim) stage by stage; see the class notes for what is returned."""
        self._check_forward(x)
        x = self.project_in(x)
        last = self._last_stage(self.training, rand_quantize_dropout_fixed_seed)
        stages = [_ScaledStage(layer, scale) for layer, scale in zip(self.layers, self.scales)]
        with no_cuda_autocast():
            quantized, extras = residual_loop(self.layers[0].bound(x), stages, last)
        return self._stack_outputs(quantized, extras, return_all_codes=return_all_codes)


class _ScaledStage:
    """One FSQ stage at its scale: quantize ``residual / scale``, return the codes times ``scale``."""

    def __init__(self, layer, scale):
        self.layer, self.scale = layer, scale

    def __call__(self, residual):
        quantized, indices = self.layer(residual / self.scale)
        return quantized * self.scale, indices


def grouped_to_vqcore(module, numpy_cls, **stack_args):
    """A grouped residual module as its numpy twin ``numpy_cls``, holding the module's state."""
    quantizer = numpy_cls(dim=module.dim, num_quantizers=module.rvqs[0].num_quantizers, groups=module.groups,
                          **stack_args)
    return quantizer.load_state_dict(module.state_dict())


class GroupedResidualFSQ(GroupedBase):
    """Grouped residual FSQ, the seed's ``GroupedResidualFSQ``: one :class:`ResidualFSQ` per feature group.

    Parameters
    ----------
    dim : int
        Features of the input, split into ``groups`` equal parts.
    groups : int
        Must divide ``dim``.
    accept_image_fmap : bool
        Split on axis 1 instead of the last axis (the stacks still need (b, n, d) chunks, as in 1.14.5).
    **kwargs
        Arguments of :class:`ResidualFSQ` (``levels``, ``num_quantizers``, ...).

    Notes
    -----
    ``forward(x, return_all_codes=False)`` returns ``(quantized, indices (groups, b, n, q))`` and, with
    ``return_all_codes``, a tuple of each group's codes.
    """

    residual_cls = ResidualFSQ

    def to_vqcore(self):
        """A ``vqcore.fsq.GroupedResidualFSQ`` with these groups, levels and projections (eval encode/decode).

        Its codes have shape (..., groups, num_quantizers): this module's indices with the group
        axis moved last; it takes features last (also for ``accept_image_fmap``).
        """
        from vqcore.fsq import GroupedResidualFSQ as NumpyGroupedResidualFSQ

        return grouped_to_vqcore(self, NumpyGroupedResidualFSQ, levels=self.rvqs[0].levels)

    def forward(self, x, return_all_codes=False):
        """Quantize each group of features with its residual stack."""
        return self._grouped_forward(x, return_all_codes=return_all_codes)
