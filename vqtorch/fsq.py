"""``FSQ``: finite scalar quantization, a drop-in for vector-quantize-pytorch 1.14.5's layer.

Each feature is bounded with ``tanh`` into ``levels[i]`` steps and rounded, with a
straight-through gradient (https://arxiv.org/abs/2309.15505). The bound, the rounding, the
rescaling and the index are one fused step (:class:`_BoundRound`) instead of a dozen tensor
operations, and the level constants are computed once per device instead of per call. On CPU
the steps around torch's ``tanh`` run as one compiled pass each way on the calling thread (see
:func:`_bound_round_numpy`), and with projections the two ``nn.Linear`` and the bound run as
compiled passes over the rows (:class:`_ProjectedBoundRound`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from vqcore._config import num_threads
from vqcore.fsq import check_int, check_levels, resolve_keep_dim
from vqcore.kernels.fsq import fsq_project_backward, fsq_project_in, fsq_project_out
from vqcore.kernels.fsq_bound import fsq_bound_grad, fsq_round

from .amp import no_cuda_autocast

__all__ = ["FSQ"]

MAX_TILES = 256  # codes per row of the fused bound/round (see _BoundRound)


# -- checks and layouts shared with LFQ -------------------------------------------------------------

def check_indices(indices, codebook_size):
    """Raise unless ``indices`` is an integer tensor with values in ``[0, codebook_size)``."""
    if not isinstance(indices, torch.Tensor) or indices.dtype.is_floating_point or indices.dtype == torch.bool \
            or indices.dtype.is_complex:
        raise TypeError(f"indices must be an integer tensor, got {getattr(indices, 'dtype', type(indices))}.")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= codebook_size):
        raise ValueError(f"indices must lie in [0, {codebook_size}), got values in "
                         f"[{int(indices.min())}, {int(indices.max())}].")


def channel_last_tokens(z, dim):
    """``(b, n, dim)`` stays; channel-first ``(b, dim, ...)`` becomes ``(b, prod(...), dim)``.

    Returns the tokens and the spatial shape (None for sequences) for :func:`restore_layout`.
    """
    if not isinstance(z, torch.Tensor) or not z.dtype.is_floating_point:
        raise TypeError(f"input must be a floating point tensor, got {getattr(z, 'dtype', type(z))}.")
    if z.ndim < 3:
        raise ValueError(f"input must be (batch, seq, {dim}) or channel-first (batch, {dim}, ...), "
                         f"got shape {tuple(z.shape)}.")
    spatial = None
    if z.ndim >= 4:
        spatial = tuple(z.shape[2:])
        z = z.flatten(2).transpose(1, 2)
    if z.shape[-1] != dim:
        axis = 1 if spatial is not None else -1
        raise ValueError(f"input has {z.shape[-1]} features on axis {axis} (shape {tuple(z.shape)}), "
                         f"expected dim={dim}.")
    return z, spatial


def split_codebooks(z, num_codebooks):
    """(b, n, c*d) -> (b, n, c, d)."""
    return z.unflatten(-1, (num_codebooks, -1))


def restore_layout(out, indices, spatial):
    """Undo :func:`channel_last_tokens` on the output (b, n, d) and indices (b, n, c)."""
    if spatial is None:
        return out, indices
    b = out.shape[0]
    out = out.reshape(b, *spatial, out.shape[-1]).movedim(-1, 1)
    return out, indices.reshape(b, *spatial, indices.shape[-1])


class _LevelConstants:
    """The float32 constants of the bound, derived from the integer levels once per device.

    The seed derives them from its int32 ``_levels`` on every call, in float32 whatever the
    input dtype; keeping them out of the module's buffers keeps ``.half()``/``.double()``
    from changing them.
    """

    def __init__(self, levels, eps=1e-3):
        self.dim = len(levels)
        levels = torch.tensor(levels, dtype=torch.int32)
        self.half_l = (levels - 1) * (1 + eps) / 2
        self.offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        self.shift = (self.offset / self.half_l).atanh()
        self.half_width = (levels // 2).float()  # divides as the seed's int32 half-width does
        basis = torch.cumprod(torch.tensor([1] + list(levels[:-1].tolist())), dim=0)
        self.basis = basis.double()
        self.radix = basis.numpy().astype(np.int32)  # below codebook_size <= 2**31
        self.index_base = float(((levels // 2) * basis).sum())
        # float32 dot products of integer levels with the basis are exact below 2**24
        self.exact_in_float32 = int(levels.prod()) <= 2 ** 24
        self._on = {}

    def on(self, device, tiles=1):
        """``(shift, half_l, offset, half_width)`` on ``device``, each repeated ``tiles`` times."""
        key = (str(device), tiles)
        if key not in self._on:
            self._on[key] = tuple(t.repeat(tiles).to(device)
                                  for t in (self.shift, self.half_l, self.offset, self.half_width))
        return self._on[key]

    def fused(self, codebooks, dtype):
        """The constants of the compiled kernels for ``codebooks`` side by side, in numpy ``dtype``.

        ``(shift, half_l, offset, half_width, radix)``: the float32 constants converted
        exactly to ``dtype`` (as torch promotes them against a float64 input), and
        :attr:`radix`, the int32 place value of each dim, tiled alike.
        """
        key = ("fused", codebooks, dtype)
        if key not in self._on:
            floats = tuple(t.numpy().astype(dtype) for t in self.on("cpu", codebooks))
            self._on[key] = (*floats, np.tile(self.radix, codebooks))
        return self._on[key]

    def basis_on(self, dtype, device):
        """The index basis as a (codebook_dim,) vector of ``dtype`` on ``device``."""
        key = (str(device), dtype)
        if key not in self._on:
            self._on[key] = self.basis.to(device=device, dtype=dtype)
        return self._on[key]

    def indices(self, rounded):
        """int32 indices (n,) of integer levels ``rounded`` (n, d) in [-half_width, half_width].

        One dot product per code, exact: integers below 2**24 in float32 (2**53 in float64).
        """
        if rounded.dtype != torch.float64 and not self.exact_in_float32:
            rounded = rounded.double()
        flat = rounded @ self.basis_on(rounded.dtype, rounded.device)
        return flat.add_(self.index_base).to(torch.int32)


class _BoundRound(torch.autograd.Function):
    """``round(tanh(z + shift) * half_l - offset) / half_width`` with the straight-through gradient.

    ``z`` is (..., c * codebook_dim): ``c`` codebooks side by side, split here rather than
    by a view that autograd would record. Returns the normalised codes (differentiable,
    shaped as ``z``) and their int32 indices (..., c) (not differentiable). The backward
    applies the seed's chain ``((g / half_width) * half_l) * (1 - t**2)`` in the same
    order, so gradients agree bit for bit.
    """

    @staticmethod
    def forward(ctx, z, constants):
        d = constants.dim
        # Rows of up to MAX_TILES codes with constants repeated to match: elementwise ops then run
        # contiguous and vectorised instead of broadcasting a (d,) vector over rows of d values.
        tiles = math.gcd(z.numel() // d, MAX_TILES)
        index_shape = (*z.shape[:-1], z.shape[-1] // d)
        if _on_numpy(z):
            t, codes, indices = _bound_round_numpy(z.detach().numpy(), constants, tiles, index_shape)
        else:
            shift, half_l, offset, half_width = constants.on(z.device, tiles)
            t = torch.add(z.reshape(-1, tiles * d), shift).tanh_()  # float32 at least, like the seed's bound
            codes = torch.mul(t, half_l).sub_(offset).round_()
            indices = constants.indices(codes.view(-1, d)).view(index_shape)
            codes = codes.div_(half_width).view(z.shape)
        ctx.save_for_backward(t, z)
        ctx.z_shape, ctx.z_dtype, ctx.constants, ctx.tiles = z.shape, z.dtype, constants, tiles
        ctx.mark_non_differentiable(indices)
        return codes, indices

    @staticmethod
    def backward(ctx, grad_codes, grad_indices):
        t, z = ctx.saved_tensors
        fused = tanh_backward_fuses(t.dtype) if t.device.type == "cpu" and grad_codes.dtype == t.dtype else None
        if fused is not None and not torch.is_grad_enabled():
            # the seed's chain, bit for bit, in one compiled pass (see vqcore.kernels.fsq_bound)
            dtype = _NUMPY_DTYPES[t.dtype]
            _, half_l, _, half_width, _ = ctx.constants.fused(ctx.tiles, dtype)
            grad = np.empty(ctx.z_shape, dtype=dtype)
            fsq_bound_grad(_numpy_rows(grad_codes, t.shape), t.numpy(), half_l, half_width, fused,
                           grad.reshape(t.shape))
            grad = torch.from_numpy(grad)
        else:  # torch ops out of place, which a backward with create_graph records
            if torch.is_grad_enabled() and z.requires_grad:
                # t again from z (the same ops, the same bits), so second derivatives reach z through it
                t = torch.add(z.reshape(t.shape), ctx.constants.on(z.device, ctx.tiles)[0]).tanh()
            half_l, half_width = ctx.constants.on(t.device, ctx.tiles)[1::2]
            grad = _recorded_bound_backward(grad_codes.reshape(t.shape), t, half_l, half_width).view(ctx.z_shape)
        return grad if grad.dtype == ctx.z_dtype else grad.to(ctx.z_dtype), None


def _recorded_bound_backward(grad_codes, t, half_l, half_width):
    """The seed's chain through the bound, ``((g / half_width) * half_l) * (1 - t**2)``, in torch ops."""
    return torch.ops.aten.tanh_backward(torch.div(grad_codes, half_width).mul_(half_l), t)


_TANH_BACKWARD_FUSES = {}


def tanh_backward_fuses(dtype):
    """How torch's CPU ``tanh_backward`` computes ``g * (1 - t * t)`` in ``dtype`` on this machine.

    True: ``1 - t * t`` as one fused multiply-add (torch's AVX2 kernels, as compiled, do);
    False: rounded after the product; None: neither, or not the same way at every position
    (then the caller keeps torch's op). Asked once per dtype on values where the two forms
    differ, at every length from 1 to 17 (scalar tails and partial vectors) and at 1,027.
    """
    if dtype not in _TANH_BACKWARD_FUSES:
        _TANH_BACKWARD_FUSES[dtype] = _probe_tanh_backward(_NUMPY_DTYPES[dtype]) if dtype in _NUMPY_DTYPES else None
    return _TANH_BACKWARD_FUSES[dtype]


def _probe_tanh_backward(numpy_dtype):
    """:func:`tanh_backward_fuses` for one numpy dtype."""
    rng = np.random.default_rng(0)
    grad = rng.standard_normal((1, 8192)).astype(numpy_dtype)
    t = np.tanh(rng.standard_normal((1, 8192))).astype(numpy_dtype)
    ones = np.ones(t.shape[1], dtype=numpy_dtype)
    forms = {fused: np.empty_like(t) for fused in (True, False)}
    for fused, out in forms.items():
        fsq_bound_grad(grad, t, ones, ones, fused, out)
    telling = forms[True][0] != forms[False][0]  # values on which the two forms round apart
    grad, t = grad[0, telling], t[0, telling]
    answers = set()
    for length in [*range(1, 18), 1027]:
        picks = np.arange(length) % len(t)
        expected = torch.ops.aten.tanh_backward(torch.from_numpy(grad[picks]), torch.from_numpy(t[picks])).numpy()
        for fused in (True, False):
            got = np.empty((1, length), dtype=numpy_dtype)
            fsq_bound_grad(grad[None, picks], t[None, picks], ones[:length], ones[:length], fused, got)
            if np.array_equal(got[0], expected):
                answers.add(fused)
                break
        else:
            return None
    return answers.pop() if len(answers) == 1 else None


def _numpy_rows(grad, shape):
    """A gradient as the compiled kernels take it: the (m, W) numpy array of ``shape``, contiguous,
    or its one row (1, W) when every row is that row (a gradient broadcast from a sum)."""
    rows = grad.detach().numpy().reshape(shape)  # numpy views where torch would dispatch ops
    if rows.strides[0] == 0:
        rows = rows[:1]
    return np.ascontiguousarray(rows)


class _ProjectedBoundRound(torch.autograd.Function):
    """``project_out(bound_round(project_in(x)))`` on CPU: two compiled passes forward, one backward.

    ``x`` is (n, dim), contiguous, float32 or float64 like the four parameters. Returns
    ``out`` (n, dim) and the int32 indices (n, codebooks). The projections sum in a
    different order from BLAS (so values differ from ``nn.Linear``'s in the last bits);
    the chain through the bound is :class:`_BoundRound`'s.
    """

    @staticmethod
    def forward(ctx, x, w_in, b_in, w_out, b_out, constants):
        n, dim = x.shape
        width = w_in.shape[0]
        codebooks = width // constants.dim
        shift, half_l, offset, half_width, radix = constants.fused(codebooks, _NUMPY_DTYPES[x.dtype])
        t = torch.empty(n, width, dtype=x.dtype)
        codes = torch.empty(n, width, dtype=x.dtype)
        out = torch.empty(n, dim, dtype=x.dtype)
        indices = torch.empty(n, codebooks, dtype=torch.int32)
        w_out_t = w_out.detach().t().contiguous()
        threads = num_threads()
        fsq_project_in(x.detach().numpy(), w_in.detach().numpy(), b_in.detach().numpy(), shift, threads, t.numpy())
        t.tanh_()
        fsq_project_out(t.numpy(), w_out_t.numpy(), b_out.detach().numpy(), half_l, offset, half_width, radix,
                        int(constants.index_base), threads, codes.numpy(), out.numpy(), indices.numpy())
        ctx.save_for_backward(x, w_in, w_out, t, codes)
        ctx.constants = constants
        ctx.mark_non_differentiable(indices)
        return out, indices

    @staticmethod
    def backward(ctx, grad_out, grad_indices):
        x, w_in, w_out, t, codes = ctx.saved_tensors
        codebooks = t.shape[1] // ctx.constants.dim
        if torch.is_grad_enabled():  # a backward with create_graph: torch ops, which it records
            half_l, half_width = ctx.constants.on("cpu", codebooks)[1::2]
            through = _recorded_bound_backward(grad_out @ w_out, t, half_l, half_width)
            grads = (through @ w_in, through.t() @ x, through.sum(0), grad_out.t() @ codes, grad_out.sum(0))
        else:
            _, half_l, _, half_width, _ = ctx.constants.fused(codebooks, _NUMPY_DTYPES[x.dtype])
            grads = _fused_backward(grad_out, x, w_in, w_out, t, codes, half_l, half_width)
        return (*(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad)), None)


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _fused_backward(grad_out, x, w_in, w_out, t, codes, half_l, half_width):
    """:func:`fsq_project_backward` on tensors (constants as numpy arrays of x's dtype):
    ``(grad_x, grad_w_in, grad_b_in, grad_w_out, grad_b_out)``."""
    n, dim = x.shape
    width = w_in.shape[0]
    threads = num_threads()
    dtype = _NUMPY_DTYPES[x.dtype]
    grad_x = torch.empty(n, dim, dtype=x.dtype)
    parts = [np.zeros((threads, width, dim)), np.zeros((threads, width)),
             np.zeros((threads, width, dim)), np.zeros((threads, dim))]
    grad = grad_out.detach()
    if grad.dtype != x.dtype:
        grad = grad.to(x.dtype)
    fsq_project_backward(_numpy_rows(grad, grad.shape), x.detach().numpy(), w_in.detach().numpy(),
                         w_out.detach().t().contiguous().numpy(), t.numpy(), codes.numpy(),
                         half_l, half_width, threads,
                         grad_x.numpy(), *parts)
    grad_w_in, grad_b_in, grad_w_out_t, grad_b_out = (torch.from_numpy(p.sum(0).astype(dtype)) for p in parts)
    return grad_x, grad_w_in, grad_b_in, grad_w_out_t.t().contiguous(), grad_b_out


def _plain_linear(module, dtype):
    """Whether ``module`` is an unmodified ``nn.Linear`` (bias, no hooks) with CPU parameters of ``dtype``."""
    if type(module) is not nn.Linear or module.bias is None:
        return False
    if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks \
            or getattr(module, "_backward_pre_hooks", None):
        return False
    return all(p.device.type == "cpu" and p.dtype == dtype and type(p) in (nn.Parameter, torch.Tensor)
               for p in (module.weight, module.bias))


def _global_module_hooks():
    """Whether hooks registered for every module are active (the fused path would skip them)."""
    from torch.nn.modules import module as module_mod

    return any(getattr(module_mod, name, None) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
        "_global_backward_pre_hooks"))


def bound_round(z, constants):
    """:class:`_BoundRound` in eager mode; under ``torch.compile``, the same steps as plain tensor ops.

    The compiler cannot trace through the custom backward (it saves an intermediate that
    dynamo refuses), and plain ops let it fuse the steps itself.
    """
    if not torch.compiler.is_compiling():
        return _BoundRound.apply(z, constants)
    d = constants.dim
    rows = z.unflatten(-1, (-1, d))
    shift, half_l, offset, half_width = constants.on(z.device)
    bounded = torch.tanh(rows + shift) * half_l - offset
    levels = bounded + (bounded.round() - bounded).detach()  # rounded, straight-through
    indices = constants.indices(levels.detach().reshape(-1, d)).view(rows.shape[:-1])
    return (levels / half_width).flatten(-2), indices


def _on_numpy(x):
    """Whether the CPU path applies: a CPU tensor of a dtype numpy holds (not bfloat16)."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.float16)


def _bound_round_numpy(z, constants, tiles, index_shape):
    """The bound/round of :class:`_BoundRound` on CPU: ``(t, codes, indices)`` as tensors.

    ``z`` is the input as a numpy array; ``t`` comes back as (m, tiles * d) rows, ``codes``
    shaped as ``z`` and ``indices`` as ``index_shape``. The shift is numpy's add and the tanh
    torch's (the seed's bits); the rounding, index and rescale are one compiled pass whose
    steps round as numpy's do. Shapes are handled in numpy, whose views cost a fraction of
    torch's at the small sizes where the per-call cost is most of the time.
    """
    dtype = np.float64 if z.dtype == np.float64 else np.float32  # the bound promotes to float32 at least
    shift, half_l, offset, half_width, _ = constants.fused(tiles, dtype)
    t = np.add(z.reshape(-1, shift.shape[0]), shift)
    t_tensor = torch.from_numpy(t).tanh_()
    codes = np.empty(z.shape, dtype=dtype)
    indices = np.empty(index_shape, dtype=np.int32)
    index_sum = np.empty(tiles, dtype=np.float32 if constants.exact_in_float32 else np.float64)
    fsq_round(t, half_l, offset, half_width, constants.radix, int(constants.index_base), index_sum,
              codes.reshape(t.shape), indices.reshape(t.shape[0], tiles))
    return t_tensor, torch.from_numpy(codes), torch.from_numpy(indices)


class FSQ(nn.Module):
    """Finite scalar quantization with the seed's arguments, outputs and ``state_dict`` keys.

    Parameters
    ----------
    levels : list of int
        Number of levels of each codebook dimension (each >= 2); the codebook has
        ``prod(levels)`` codes.
    dim : int, optional
        Input feature size; defaults to ``len(levels) * num_codebooks``. Otherwise linear
        projections ``project_in``/``project_out`` map to and from the codebook dims.
    num_codebooks : int
        Codebooks quantizing consecutive slices of the projected features.
    keep_num_codebooks_dim : bool, optional
        Keep a codebook axis in the indices; defaults to ``num_codebooks > 1`` (required then).
    scale : float, optional
        Stored, unused (as in the seed).
    allowed_dtypes : tuple of torch.dtype
        Input dtypes kept as they are; other inputs are cast to float32 and the output back.

    Notes
    -----
    ``forward(z)`` takes ``(b, n, dim)`` or channel-first images/videos ``(b, dim, ...)`` and
    returns ``(out, indices)``; ``indices`` are int32 of shape ``(b, n)`` (or ``(b, ...)``),
    with a trailing codebook axis when ``keep_num_codebooks_dim``.
    The index is rounded before the int32 cast: the seed truncates, which drops a step for
    some levels >= 26 (fixed upstream later); for smaller levels both agree.
    """

    def __init__(self, levels, dim=None, num_codebooks=1, keep_num_codebooks_dim=None, scale=None,
                 allowed_dtypes=(torch.float32, torch.float64)):
        super().__init__()
        levels = check_levels(levels.tolist() if isinstance(levels, torch.Tensor) else levels)
        check_int("num_codebooks", num_codebooks)
        if dim is not None:
            check_int("dim", dim)
        keep_num_codebooks_dim = resolve_keep_dim(num_codebooks, keep_num_codebooks_dim)

        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int32), persistent=False)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1]), dim=0, dtype=torch.int32)
        self.register_buffer("_basis", basis, persistent=False)
        self._constants = _LevelConstants(levels)
        self.levels = levels
        self.scale = scale
        self.codebook_dim = len(levels)
        self.num_codebooks = num_codebooks
        self.effective_codebook_dim = self.codebook_dim * num_codebooks
        self.keep_num_codebooks_dim = keep_num_codebooks_dim
        self.dim = dim if dim is not None else self.effective_codebook_dim

        self.has_projections = self.dim != self.effective_codebook_dim
        self.project_in = nn.Linear(self.dim, self.effective_codebook_dim) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(self.effective_codebook_dim, self.dim) if self.has_projections else nn.Identity()

        self.codebook_size = int(self._levels.prod().item())
        # Through indices_to_codes as in the seed, whose 1-d path flattens the codes when
        # keep_num_codebooks_dim (shape (codebook_size * codebook_dim,) then).
        implicit = self.indices_to_codes(torch.arange(self.codebook_size), project_out=False)
        self.register_buffer("implicit_codebook", implicit, persistent=False)
        self.allowed_dtypes = allowed_dtypes

    # -- the seed's helper methods ---------------------------------------------------------------

    def bound(self, z, eps=1e-3):
        """Bound ``z`` of shape (..., codebook_dim) into the open level range (seed formula)."""
        half_l = (self._levels - 1) * (1 + eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = (offset / half_l).atanh()
        return (z + shift).tanh() * half_l - offset

    def quantize(self, z):
        """Quantize ``z`` of shape (..., codebook_dim) to normalised codes in [-1, 1], straight-through."""
        if z.shape[-1] != self.codebook_dim:
            raise ValueError(f"z has {z.shape[-1]} features, expected codebook_dim={self.codebook_dim}.")
        codes, _ = bound_round(z, self._constants)
        return codes

    def codes_to_indices(self, zhat):
        """Indices (int32, shape ``zhat.shape[:-1]``) of normalised codes ``zhat`` (..., codebook_dim)."""
        if zhat.shape[-1] != self.codebook_dim:
            raise ValueError(f"codes have {zhat.shape[-1]} features, expected codebook_dim={self.codebook_dim}.")
        half_width = self._levels // 2
        shifted = zhat * half_width + half_width
        return (shifted * self._basis).sum(dim=-1).round().to(torch.int32)

    def _codes_from_indices(self, indices):
        """(...,) indices -> (..., codebook_dim) normalised codes, float32."""
        digits = (indices.unsqueeze(-1) // self._basis) % self._levels
        half_width = self._levels // 2
        return (digits - half_width) / half_width

    def indices_to_codes(self, indices, project_out=True):
        """Codes of ``indices``, the inverse of :meth:`codes_to_indices`.

        Parameters
        ----------
        indices : Tensor of int
            ``(b, n)`` or ``(b, ...)`` (with a trailing codebook axis when
            ``keep_num_codebooks_dim``), values in ``[0, codebook_size)``.
        project_out : bool
            Apply ``project_out`` (back to ``dim`` features).

        Returns
        -------
        Tensor
            ``(b, n, d)``; image/video indices give channel-first ``(b, d, ...)``.
        """
        check_indices(indices, self.codebook_size)
        is_img_or_video = indices.ndim >= 3 + int(self.keep_num_codebooks_dim)
        codes = self._codes_from_indices(indices)
        if self.keep_num_codebooks_dim:
            codes = codes.flatten(-2)
        if project_out:
            codes = self.project_out(codes)
        if is_img_or_video:
            codes = codes.movedim(-1, 1)
        return codes

    # -- forward ---------------------------------------------------------------------------------

    def forward(self, z):
        """Quantize ``z``; returns ``(out, indices)`` (see the class notes)."""
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"input must be a tensor, got {type(z).__name__}.")
        orig_dtype = z.dtype
        if orig_dtype not in self.allowed_dtypes:
            z = z.float()
        with no_cuda_autocast():
            z, layout = channel_last_tokens(z, self.dim)
            if self._fused_applies(z):
                rows = z.reshape(-1, self.dim).contiguous()
                out, indices = _ProjectedBoundRound.apply(rows, self.project_in.weight, self.project_in.bias,
                                                          self.project_out.weight, self.project_out.bias,
                                                          self._constants)
                out, indices = out.view(z.shape), indices.view(*z.shape[:-1], self.num_codebooks)
            else:
                codes, indices = bound_round(self.project_in(z), self._constants)
                out = self.project_out(codes)
        out, indices = restore_layout(out, indices, layout)
        if not self.keep_num_codebooks_dim:
            indices = indices.squeeze(-1)
        if out.dtype != orig_dtype:
            out = out.to(orig_dtype)
        return out, indices

    def _fused_applies(self, z):
        """Whether the projections and the bound run fused (:class:`_ProjectedBoundRound`).

        For CPU float32/float64 inputs through plain ``nn.Linear`` projections; anything the
        fused kernel would change the meaning of (hooks, subclasses or parametrizations,
        CPU autocast, tracing and compiling) takes the module calls.
        """
        return (self.has_projections and z.device.type == "cpu" and z.dtype in _NUMPY_DTYPES
                and _plain_linear(self.project_in, z.dtype) and _plain_linear(self.project_out, z.dtype)
                and not _global_module_hooks() and not torch.is_autocast_enabled("cpu")
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling())

    def to_vqcore(self):
        """A ``vqcore.fsq.FSQ`` with these levels and projections, for numpy-only encode/decode."""
        from vqcore.fsq import FSQ as NumpyFSQ

        quantizer = NumpyFSQ(self.levels, dim=self.dim, num_codebooks=self.num_codebooks,
                             keep_num_codebooks_dim=self.keep_num_codebooks_dim)
        return quantizer.load_state_dict(self.state_dict())

    def extra_repr(self):
        return f"levels={self.levels}, dim={self.dim}, num_codebooks={self.num_codebooks}"
