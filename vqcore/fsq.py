"""Finite scalar quantization in numpy: ``FSQ``, ``ResidualFSQ`` and ``GroupedResidualFSQ`` without torch.

The numbers are those of ``vqtorch.FSQ`` / vector-quantize-pytorch 1.14.5 in float32
(``tanh`` bound, round half to even, mixed-radix index). Nothing is fitted: projections,
when ``dim`` differs from the codebook dims, come from a torch ``state_dict``
(``load_state_dict``, or ``vqtorch.FSQ.to_vqcore()``). Files use the vqcore ``.npz`` format.
"""
from __future__ import annotations

import numpy as np

from .io import register
from .state import check_state, read_npz, to_numpy, write_npz

__all__ = ["FSQ", "ResidualFSQ", "GroupedResidualFSQ"]

INDEX_LIMIT = 2 ** 31


def check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value}.")
    return int(value)


def check_levels(levels):
    """``levels`` as a list of ints >= 2 whose product fits int32 indices (ValueError/TypeError otherwise)."""
    if isinstance(levels, np.ndarray):
        levels = levels.tolist()
    if not isinstance(levels, (list, tuple)):
        raise TypeError(f"levels must be a list of ints, got {type(levels).__name__}; e.g. levels=[8, 5, 5, 5].")
    if not levels:
        raise ValueError("levels is empty; give at least one level, e.g. levels=[8, 5, 5, 5].")
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
            raise TypeError(f"levels must hold ints, got {level!r} in levels={list(levels)}.")
    if min(levels) < 2:
        raise ValueError(f"every level must be >= 2, got levels={list(levels)}; a level of 1 holds no information.")
    if int(np.prod(levels, dtype=object)) > INDEX_LIMIT:
        raise ValueError(f"levels={list(levels)} give more codes than int32 indices hold; use fewer levels.")
    return [int(level) for level in levels]


def resolve_keep_dim(num_codebooks, keep_num_codebooks_dim):
    """The seed's default ``num_codebooks > 1``; several codebooks need their own index axis."""
    if keep_num_codebooks_dim is None:
        return num_codebooks > 1
    if num_codebooks > 1 and not keep_num_codebooks_dim:
        raise ValueError(f"keep_num_codebooks_dim=False does not fit num_codebooks={num_codebooks}; leave it None.")
    return bool(keep_num_codebooks_dim)


def check_features(x, dim):
    """``x`` as float32 (..., dim)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"x must hold floating point values, got dtype {x.dtype}.")
    if x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(f"x must have shape (..., {dim}) (features last), got {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or Inf; remove or impute those values first.")
    return x.astype(np.float32, copy=False)


def check_codes_in(indices, codebook_size, *, allow_dropped=False):
    """``indices`` as an int64 array with values in ``[0, codebook_size)`` (or -1 when ``allow_dropped``)."""
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers, got dtype {indices.dtype}.")
    low = -1 if allow_dropped else 0
    if indices.size and (indices.min() < low or indices.max() >= codebook_size):
        raise ValueError(f"indices must lie in [{low}, {codebook_size}), got values in "
                         f"[{indices.min()}, {indices.max()}].")
    return indices.astype(np.int64, copy=False)


class Twin:
    """What every numpy twin shares: ``quantize``, ``save``/``load`` in the vqcore format, ``repr``.

    Subclasses set ``KIND`` and ``config`` (the constructor's keyword arguments) and define
    ``encode``, ``decode``, ``state_dict`` and ``_load`` (take a checked state).
    """

    KIND = ""

    def quantize(self, x):
        """``(codes, indices)``: the layer's eval output and indices for ``x`` (..., dim)."""
        indices = self.encode(x)
        return self.decode(indices), indices

    def save(self, path):
        """Write configuration and state to one ``.npz`` file, atomically (no pickle)."""
        write_npz(path, kind=self.KIND, config=self.config, state=self.state_dict())

    @classmethod
    def load(cls, path, *, seed=None, comm=None):
        """Read a quantizer written by :meth:`save` (``seed`` and ``comm``: accepted for ``vqcore.load``, unused).

        Raises
        ------
        ValueError
            Not a vqcore file, another kind, or unknown configuration keys.
        """
        config, state = read_npz(path, kind=cls.KIND)
        try:
            quantizer = cls(**config, seed=seed)
        except TypeError as exc:
            raise ValueError(f"{path}: configuration {config} does not fit {cls.__name__} ({exc})") from None
        return quantizer.load_state_dict(state)

    def load_state_dict(self, state_dict, strict=True):
        """Load a torch module's ``state_dict`` (tensors or arrays); all of it is checked before any change.

        Raises
        ------
        ValueError
            Missing or unexpected keys (with ``strict``), or shapes that differ.
        """
        expected = {k: v.shape for k, v in self.state_dict().items()}
        self._load(check_state({k: to_numpy(v) for k, v in state_dict.items()}, expected, strict=strict))
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"


class Projected(Twin):
    """Optional linear maps ``dim -> inner_dim`` and back, with the torch module's state-dict keys.

    Subclasses may add state (``_extra_state``).
    """

    @property
    def code_shape(self):
        """Shape of one vector's codes: stages, kept codebooks, or ``()`` for one code."""
        if hasattr(self, "num_quantizers"):
            return (self.num_quantizers,)
        return (self.num_codebooks,) if self.keep_num_codebooks_dim else ()

    def __init__(self, dim, inner_dim, seed=None):
        self.dim = dim
        self.inner_dim = inner_dim
        self.has_projections = dim != inner_dim
        self.project_in = self.project_out = None
        if self.has_projections:
            # nn.Linear's initialisation; trained projections come from load_state_dict
            rng = np.random.default_rng(seed)
            self.project_in = _linear_init(rng, inner_dim, dim)
            self.project_out = _linear_init(rng, dim, inner_dim)

    def _in(self, x):
        if not self.has_projections:
            return x
        weight, bias = self.project_in
        return x @ weight.T + bias

    def _out(self, codes):
        if not self.has_projections:
            return codes
        weight, bias = self.project_out
        return codes @ weight.T + bias

    def _extra_state(self):
        """Extra persistent entries of the torch module's ``state_dict`` (name -> array)."""
        return {}

    def state_dict(self):
        """Copies of the state with the torch module's keys and shapes."""
        state = {}
        if self.has_projections:
            for name in ("project_in", "project_out"):
                weight, bias = getattr(self, name)
                state[f"{name}.weight"], state[f"{name}.bias"] = weight.copy(), bias.copy()
        state.update(self._extra_state())
        return state

    def _load(self, state):
        """Take the projections from a checked state."""
        for name in ("project_in", "project_out"):
            if f"{name}.weight" in state:
                setattr(self, name, (state[f"{name}.weight"], state[f"{name}.bias"]))


def _linear_init(rng, fan_out, fan_in):
    bound = 1.0 / np.sqrt(fan_in)
    weight = rng.uniform(-bound, bound, size=(fan_out, fan_in)).astype(np.float32)
    return weight, rng.uniform(-bound, bound, size=fan_out).astype(np.float32)


def decode_implicit(quantizer, table, indices, project_out):
    """Codes of ``indices`` for an implicit codebook ``table`` (FSQ levels, LFQ bits), projected out."""
    indices = check_codes_in(indices, quantizer.codebook_size)
    if not quantizer.keep_num_codebooks_dim:
        indices = indices[..., None]
    codes = table.codes(indices).reshape(*indices.shape[:-1], quantizer.inner_dim)
    return quantizer._out(codes) if project_out else codes


class _Levels:
    """Float32 constants of the bound and the mixed-radix basis, as the torch layer derives them."""

    def __init__(self, levels, eps=1e-3):
        self.levels = np.asarray(levels, dtype=np.int64)
        self.half_l = ((self.levels - 1) * np.float32(1 + eps) / np.float32(2)).astype(np.float32)
        self.offset = np.where(self.levels % 2 == 0, 0.5, 0.0).astype(np.float32)
        self.shift = np.arctanh(self.offset / self.half_l).astype(np.float32)
        self.half_width = self.levels // 2
        self.basis = np.cumprod([1] + list(self.levels[:-1])).astype(np.int64)
        self.size = int(np.prod(self.levels))

    def bound(self, z):
        """The seed's bound, float32."""
        return np.tanh(z + self.shift) * self.half_l - self.offset

    def rounded(self, z):
        """Integer levels in [-half_width, half_width] (as float32) of unbounded ``z``."""
        return np.rint(self.bound(z))

    def index(self, rounded):
        """Mixed-radix index of the rounded levels (..., d) -> (...,) int32."""
        digits = rounded.astype(np.int64) + self.half_width
        return (digits @ self.basis).astype(np.int32)

    def codes(self, indices):
        """Normalised codes in [-1, 1] of ``indices`` (...,) -> (..., d) float32."""
        digits = (indices[..., None] // self.basis) % self.levels
        return ((digits - self.half_width) / self.half_width).astype(np.float32)


@register("FSQ")
class FSQ(Projected):
    """Finite scalar quantization (numpy twin of ``vqtorch.FSQ``): encode to indices, decode to codes.

    Parameters
    ----------
    levels : list of int
        Levels per codebook dimension (each >= 2).
    dim : int, optional
        Feature size; defaults to ``len(levels) * num_codebooks`` (no projections).
    num_codebooks : int
    keep_num_codebooks_dim : bool, optional
        Indices keep a codebook axis; defaults to ``num_codebooks > 1``.
    seed : int, optional
        Seeds the initial projections (``nn.Linear``'s scheme) until trained ones are loaded.

    Examples
    --------
    >>> q = FSQ([8, 5, 5, 5])
    >>> codes = q.decode(q.encode(np.zeros((2, 4), np.float32)))
    """

    KIND = "FSQ"

    def __init__(self, levels, dim=None, num_codebooks=1, keep_num_codebooks_dim=None, seed=None):
        levels = check_levels(levels)
        num_codebooks = check_int("num_codebooks", num_codebooks)
        keep = resolve_keep_dim(num_codebooks, keep_num_codebooks_dim)
        inner = len(levels) * num_codebooks
        dim = inner if dim is None else check_int("dim", dim)
        super().__init__(dim, inner, seed)
        self._levels = _Levels(levels)
        self.levels = levels
        self.codebook_dim = len(levels)
        self.codebook_size = self._levels.size
        self.num_codebooks = num_codebooks
        self.keep_num_codebooks_dim = keep
        self.config = dict(levels=levels, dim=dim, num_codebooks=num_codebooks, keep_num_codebooks_dim=keep)

    @property
    def implicit_codebook(self):
        """All codes, (codebook_size, codebook_dim), normalised to [-1, 1]."""
        return self._levels.codes(np.arange(self.codebook_size))

    def encode(self, x):
        """Indices of ``x`` (..., dim): int32 (...,), or (..., num_codebooks) when the codebook axis is kept."""
        z = self._in(check_features(x, self.dim))
        z = z.reshape(*z.shape[:-1], self.num_codebooks, self.codebook_dim)
        indices = self._levels.index(self._levels.rounded(z))
        return indices if self.keep_num_codebooks_dim else indices[..., 0]

    def decode(self, indices, project_out=True):
        """Codes of ``indices`` (from :meth:`encode`): (..., dim), or (..., codebook dims) without ``project_out``."""
        return decode_implicit(self, self._levels, indices, project_out)


@register("ResidualFSQ")
class ResidualFSQ(Projected):
    """Residual FSQ (numpy twin of vector-quantize-pytorch's ``ResidualFSQ``, eval mode).

    The input is projected to ``len(levels)`` dims and bounded; each of ``num_quantizers``
    layers quantizes the residual divided by its scale ``(levels - 1) ** -q`` and
    subtracts its scaled codes.

    Parameters
    ----------
    dim : int
    levels : list of int
    num_quantizers : int
    seed : int, optional
        Seeds the initial projections until trained ones are loaded.
    """

    KIND = "ResidualFSQ"

    def __init__(self, dim, levels, num_quantizers, seed=None):
        levels = check_levels(levels)
        num_quantizers = check_int("num_quantizers", num_quantizers)
        super().__init__(check_int("dim", dim), len(levels), seed)
        self._levels = _Levels(levels)
        self.levels = levels
        self.num_quantizers = num_quantizers
        self.codebook_size = self._levels.size
        # the seed's float32 scales: (levels - 1) ** -q
        base = np.asarray(levels, dtype=np.float32) - 1
        self.scales = np.stack([base ** np.float32(-q) for q in range(num_quantizers)]).astype(np.float32)
        self.config = dict(dim=self.dim, levels=levels, num_quantizers=num_quantizers)

    def encode(self, x):
        """Indices (..., num_quantizers), int32, of ``x`` (..., dim)."""
        residual = self._levels.bound(self._in(check_features(x, self.dim)))
        indices = []
        for scale in self.scales:
            rounded = self._levels.rounded(residual / scale)
            indices.append(self._levels.index(rounded))
            residual = residual - (rounded / self._levels.half_width).astype(np.float32) * scale
        return np.stack(indices, axis=-1)

    def decode(self, indices):
        """Sum of the scaled codes of ``indices`` (..., q <= num_quantizers), -1 = dropped; then ``project_out``."""
        return decode_stages(self, indices, lambda q, idx: self._levels.codes(idx) * self.scales[q])


def decode_stages(quantizer, indices, stage_codes):
    """Sum over the stages given of ``stage_codes(q, indices)`` (-1 = a dropped stage adds nothing), projected out."""
    indices = check_quantizers(indices, quantizer.num_quantizers)
    indices = check_codes_in(indices, quantizer.codebook_size, allow_dropped=True)
    total = np.zeros(indices.shape[:-1] + (quantizer.inner_dim,), dtype=np.float32)
    for q in range(indices.shape[-1]):
        kept = indices[..., q] >= 0
        codes = stage_codes(q, np.where(kept, indices[..., q], 0))
        total += np.where(kept[..., None], codes, np.float32(0))
    return quantizer._out(total)


def check_quantizers(indices, num_quantizers):
    indices = np.asarray(indices)
    if indices.ndim < 1 or not 1 <= indices.shape[-1] <= num_quantizers:
        raise ValueError(f"indices must have shape (..., q) with 1 <= q <= num_quantizers={num_quantizers}, "
                         f"got {indices.shape}.")
    return indices


class Grouped(Twin):
    """Base of the grouped residual twins: ``groups`` equal slices of the features, each its own stack.

    Subclasses set ``KIND`` and ``stack_cls`` (the residual twin of one group). As
    ``vqcore.ResidualQuantizer(groups=G)`` does, codes have shape (..., groups, num_quantizers):
    the torch layer's indices (groups, ..., q) with the group axis moved last. State keys are the
    torch module's, ``rvqs.{g}.`` followed by the group's stack's keys.
    """

    stack_cls = None

    def __init__(self, dim, groups, seed, **stack_args):
        dim = check_int("dim", dim)
        groups = check_int("groups", groups)
        if dim % groups:
            raise ValueError(f"groups={groups} does not divide dim={dim}; choose groups among the divisors of dim.")
        seeds = np.random.default_rng(seed).integers(2 ** 63, size=groups)  # distinct initial projections
        self._stacks = [self.stack_cls(dim=dim // groups, **stack_args, seed=int(s)) for s in seeds]
        self.dim = dim
        self.groups = groups
        stack = self._stacks[0]
        self.num_quantizers = stack.num_quantizers
        self.codebook_size = stack.codebook_size
        self.config = dict(dim=dim, **{k: v for k, v in stack.config.items() if k != "dim"}, groups=groups)

    @property
    def code_shape(self):
        """Shape of one vector's codes: ``(groups, num_quantizers)``."""
        return (self.groups, self.num_quantizers)

    def encode(self, x):
        """Indices (..., groups, num_quantizers) of ``x`` (..., dim), each group by its stack."""
        parts = np.split(check_features(x, self.dim), self.groups, axis=-1)
        return np.stack([stack.encode(part) for stack, part in zip(self._stacks, parts)], axis=-2)

    def decode(self, indices):
        """The groups' decoded slices of ``indices`` (..., groups, q <= num_quantizers), concatenated."""
        indices = np.asarray(indices)
        if indices.ndim < 2 or indices.shape[-2] != self.groups:
            raise ValueError(f"indices must have shape (..., groups={self.groups}, q), got {indices.shape}.")
        return np.concatenate([stack.decode(indices[..., g, :]) for g, stack in enumerate(self._stacks)], axis=-1)

    def state_dict(self):
        """Copies of the state with the torch module's keys (``rvqs.{g}.`` + the group's keys)."""
        return {f"rvqs.{g}.{key}": value for g, stack in enumerate(self._stacks)
                for key, value in stack.state_dict().items()}

    def _load(self, state):
        """Hand each group's stack its entries of a checked state (every group is checked first)."""
        for g, stack in enumerate(self._stacks):
            prefix = f"rvqs.{g}."
            stack._load({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


@register("GroupedResidualFSQ")
class GroupedResidualFSQ(Grouped):
    """Grouped residual FSQ (numpy twin of ``vqtorch.GroupedResidualFSQ``, eval mode).

    Parameters
    ----------
    dim : int
        Features, split into ``groups`` equal slices.
    levels : list of int
    num_quantizers : int
        Stages of each group's :class:`ResidualFSQ`.
    groups : int
        Must divide ``dim``.
    seed : int, optional
        Seeds the initial projections until trained ones are loaded.

    Examples
    --------
    >>> q = GroupedResidualFSQ(8, [8, 5, 5, 5], num_quantizers=2, groups=2)
    >>> q.encode(np.zeros((3, 8), np.float32)).shape
    (3, 2, 2)
    """

    KIND = "GroupedResidualFSQ"
    stack_cls = ResidualFSQ

    def __init__(self, dim, levels, num_quantizers, groups=1, seed=None):
        super().__init__(dim, groups, seed, levels=levels, num_quantizers=num_quantizers)
