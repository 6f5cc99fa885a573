"""Lookup-free quantization in numpy: ``LFQ``, ``ResidualLFQ`` and ``GroupedResidualLFQ`` without torch.

Each codebook dimension is quantized to its sign; the index holds the bits, the first
dimension as the most significant bit, as in ``vqtorch.LFQ`` / vector-quantize-pytorch 1.14.5.
The training losses (entropy, commitment) need gradients and stay in torch. Projections
come from a torch ``state_dict`` (or ``vqtorch.LFQ.to_vqcore()``); files use the vqcore
``.npz`` format.
"""
from __future__ import annotations

import numpy as np

from .fsq import Grouped, Projected, check_features, check_int, decode_implicit, decode_stages, resolve_keep_dim
from .io import register

__all__ = ["LFQ", "ResidualLFQ", "GroupedResidualLFQ"]

MAX_CODEBOOK_DIM = 30


def check_codebook_size(codebook_size):
    """``(codebook_size, log2(codebook_size))`` for a power of two in [2, 2**30] (ValueError otherwise)."""
    codebook_size = check_int("codebook_size", codebook_size)
    if codebook_size < 2 or codebook_size & (codebook_size - 1) or codebook_size > 2 ** MAX_CODEBOOK_DIM:
        suggested = 2 ** min(MAX_CODEBOOK_DIM, max(1, (codebook_size - 1).bit_length()))
        raise ValueError(f"codebook_size must be a power of 2 in [2, 2**{MAX_CODEBOOK_DIM}] for lookup-free "
                         f"quantization, got {codebook_size}; use {suggested}.")
    return codebook_size, codebook_size.bit_length() - 1


def resolve_sizes(dim, codebook_size, num_codebooks):
    """``(codebook_size, codebook_dim, dim)`` from LFQ's arguments, as the seed resolves them.

    ``codebook_size`` defaults to ``2 ** dim`` and ``dim`` to ``log2(codebook_size) * num_codebooks``.

    Raises
    ------
    ValueError, TypeError
        Neither given, a size that is not a power of two in [2, 2**30], or a non-positive int.
    """
    check_int("num_codebooks", num_codebooks)
    if dim is None and codebook_size is None:
        raise ValueError("LFQ needs dim or codebook_size (or both); e.g. LFQ(codebook_size=2**16).")
    if dim is not None:
        check_int("dim", dim)
    if codebook_size is None:
        if dim > MAX_CODEBOOK_DIM:
            raise ValueError(f"dim={dim} without codebook_size means 2**{dim} codes; pass codebook_size "
                             f"(at most 2**{MAX_CODEBOOK_DIM}) and the projections map dim to log2 of it.")
        codebook_size = 2 ** dim
    codebook_size, codebook_dim = check_codebook_size(codebook_size)
    return codebook_size, codebook_dim, codebook_dim * num_codebooks if dim is None else dim


class _Bits:
    """Sign codes of ``codebook_dim`` bits, most significant first, scaled by ``scale``."""

    def __init__(self, codebook_dim, scale):
        self.codebook_dim = codebook_dim
        self.scale = np.float32(scale)
        self.mask = 2 ** np.arange(codebook_dim - 1, -1, -1, dtype=np.int64)

    def index(self, z):
        """(..., d) -> (...,) int64: the bits of ``z > 0``."""
        return (z > 0).astype(np.int64) @ self.mask

    def quantized(self, z):
        """(..., d) -> (..., d) float32: ``+-scale`` by sign."""
        return np.where(z > 0, self.scale, -self.scale).astype(np.float32)

    def codes(self, indices):
        """(...,) -> (..., d) float32 codes of the indices' bits (the seed's ``bits * 2s - s``)."""
        bits = ((indices[..., None] & self.mask) != 0).astype(np.float32)
        return bits * self.scale * np.float32(2) - self.scale


@register("LFQ")
class LFQ(Projected):
    """Lookup-free quantization (numpy twin of ``vqtorch.LFQ``, eval mode): encode and decode.

    Parameters
    ----------
    dim : int, optional
        Feature size; defaults to ``log2(codebook_size) * num_codebooks``.
    codebook_size : int, optional
        A power of two; defaults to ``2 ** dim``.
    num_codebooks : int
    keep_num_codebooks_dim : bool, optional
        Indices keep a codebook axis; defaults to ``num_codebooks > 1``.
    codebook_scale : float
        Code values are ``+-codebook_scale``.
    seed : int, optional
        Seeds the initial projections until trained ones are loaded.
    """

    KIND = "LFQ"

    def __init__(self, dim=None, codebook_size=None, num_codebooks=1, keep_num_codebooks_dim=None,
                 codebook_scale=1.0, seed=None):
        codebook_size, codebook_dim, dim = resolve_sizes(dim, codebook_size, num_codebooks)
        super().__init__(dim, codebook_dim * num_codebooks, seed)
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.num_codebooks = num_codebooks
        self.keep_num_codebooks_dim = resolve_keep_dim(num_codebooks, keep_num_codebooks_dim)
        self.codebook_scale = float(codebook_scale)
        self._bits = _Bits(codebook_dim, codebook_scale)
        self.config = dict(dim=dim, codebook_size=codebook_size, num_codebooks=num_codebooks,
                           keep_num_codebooks_dim=self.keep_num_codebooks_dim, codebook_scale=self.codebook_scale)

    def _extra_state(self):
        return {"mask": self._bits.mask.copy()}  # a persistent buffer of the torch layer

    @property
    def codebook(self):
        """All codes, (codebook_size, codebook_dim)."""
        return self._bits.codes(np.arange(self.codebook_size))

    def encode(self, x):
        """Indices (int64) of ``x`` (..., dim): (...,), or (..., num_codebooks) when the axis is kept."""
        z = self._in(check_features(x, self.dim))
        indices = self._bits.index(z.reshape(*z.shape[:-1], self.num_codebooks, self.codebook_dim))
        return indices if self.keep_num_codebooks_dim else indices[..., 0]

    def decode(self, indices, project_out=True):
        """Codes of ``indices``: (..., dim), or (..., codebook dims) without ``project_out``."""
        return decode_implicit(self, self._bits, indices, project_out)


@register("ResidualLFQ")
class ResidualLFQ(Projected):
    """Residual LFQ (numpy twin of vector-quantize-pytorch's ``ResidualLFQ``, eval mode).

    Layer ``q`` quantizes the residual to signs scaled by ``2 ** -q`` and subtracts them.

    Parameters
    ----------
    dim : int
    num_quantizers : int
    codebook_size : int
        A power of two; the projected size is ``log2(codebook_size)``.
    seed : int, optional
        Seeds the initial projections until trained ones are loaded.
    """

    KIND = "ResidualLFQ"

    def __init__(self, dim, num_quantizers, codebook_size, seed=None):
        codebook_size, codebook_dim = check_codebook_size(codebook_size)
        num_quantizers = check_int("num_quantizers", num_quantizers)
        super().__init__(check_int("dim", dim), codebook_dim, seed)
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.num_quantizers = num_quantizers
        self._layers = [_Bits(codebook_dim, 2.0 ** -q) for q in range(num_quantizers)]
        self.config = dict(dim=self.dim, num_quantizers=num_quantizers, codebook_size=codebook_size)

    def _extra_state(self):
        return {f"layers.{q}.mask": layer.mask.copy() for q, layer in enumerate(self._layers)}

    def encode(self, x):
        """Indices (..., num_quantizers), int64, of ``x`` (..., dim)."""
        residual = self._in(check_features(x, self.dim))
        indices = []
        for layer in self._layers:
            indices.append(layer.index(residual))
            residual = residual - layer.quantized(residual)
        return np.stack(indices, axis=-1)

    def decode(self, indices):
        """Sum of the codes of ``indices`` (..., q <= num_quantizers), -1 = dropped; then ``project_out``."""
        return decode_stages(self, indices, lambda q, idx: self._layers[q].codes(idx))


@register("GroupedResidualLFQ")
class GroupedResidualLFQ(Grouped):
    """Grouped residual LFQ (numpy twin of ``vqtorch.GroupedResidualLFQ``, eval mode).

    Parameters
    ----------
    dim : int
        Features, split into ``groups`` equal slices.
    num_quantizers : int
        Stages of each group's :class:`ResidualLFQ`.
    codebook_size : int
        A power of two.
    groups : int
        Must divide ``dim``.
    seed : int, optional
        Seeds the initial projections until trained ones are loaded.
    """

    KIND = "GroupedResidualLFQ"
    stack_cls = ResidualLFQ

    def __init__(self, dim, num_quantizers, codebook_size, groups=1, seed=None):
        super().__init__(dim, groups, seed, num_quantizers=num_quantizers, codebook_size=codebook_size)
