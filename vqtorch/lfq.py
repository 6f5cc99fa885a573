"""``LFQ``: lookup-free quantization, a drop-in for vector-quantize-pytorch 1.14.5's layer.

Each codebook dimension is quantized to its sign (times ``codebook_scale``); the index is the
bit pattern (https://arxiv.org/abs/2310.05737). Training adds the seed's entropy loss over the
softmax of ``2 * inv_temperature * x . code`` across all ``codebook_size`` codes. The seed
holds those probabilities for every token at once, ``(tokens, codebooks, codebook_size)``:
4 GiB per matrix for 16,384 tokens at 2**16 codes. Here the same numbers come from
:class:`_FactorizedEntropies` (the softmax over sign codes is an outer product of two
half-size softmaxes; ``O(sqrt(k) log k)`` work per token, a block of tokens at a time,
forward and backward), checked against :class:`_SoftmaxEntropies`, which computes every
probability but only one block of tokens at a time. Neither holds ``tokens * codebook_size``
numbers.
"""
from __future__ import annotations

import math
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

from vqcore.fsq import resolve_keep_dim
from vqcore.lfq import resolve_sizes

from .amp import no_cuda_autocast
from .fsq import channel_last_tokens, check_indices, restore_layout, split_codebooks

__all__ = ["LFQ", "Return", "LossBreakdown"]

Return = namedtuple("Return", ["quantized", "indices", "entropy_aux_loss"])
LossBreakdown = namedtuple("LossBreakdown", ["per_sample_entropy", "batch_entropy", "commitment"])

ENTROPY_EPS = 1e-5  # the seed's clamp inside log
LOG_EPS = math.log(ENTROPY_EPS)
BLOCK_ELEMENTS = 2 ** 19  # probabilities held at once by the blocked entropy (2 MiB of float32)


def entropy(prob):
    """``-sum(p * log(max(p, 1e-5)))`` over the last axis (the seed's formula)."""
    return (-prob * prob.clamp(min=ENTROPY_EPS).log()).sum(dim=-1)


def _entropy_grad(prob):
    """d entropy / d prob of the formula above: ``-(log p + 1)`` where ``p >= eps``, else ``-log eps``."""
    clamped = prob.clamp(min=ENTROPY_EPS)
    grad = clamped.log().neg_()
    return grad.sub_(prob.ge(ENTROPY_EPS).to(prob.dtype))


def _blocks(num_rows, row_elements):
    """Row slices holding about ``BLOCK_ELEMENTS`` probabilities each."""
    step = max(1, BLOCK_ELEMENTS // max(1, row_elements))
    return [slice(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]


class _SoftmaxEntropies(torch.autograd.Function):
    """Mean per-sample entropy and mean probability of ``softmax(scale * rows @ codebook.T)``.

    ``rows`` is ``(t, c, d)``, ``codebook`` ``(k, d)``. Returns the mean over ``(t, c)`` of each
    distribution's entropy and the ``(c, k)`` mean distribution over tokens. The ``(t, c, k)``
    probabilities are computed, used and dropped one block of tokens at a time; the backward
    recomputes each block.
    """

    @staticmethod
    def forward(ctx, rows, codebook, scale):
        t, c, _ = rows.shape
        k = codebook.shape[0]
        entropy_sum = torch.zeros((), dtype=torch.float64, device=rows.device)
        prob_sum = torch.zeros(c, k, dtype=torch.float64, device=rows.device)
        for block in _blocks(t, c * k):
            prob = _block_probs(rows[block], codebook, scale)
            entropy_sum += entropy(prob).sum(dtype=torch.float64)
            prob_sum += prob.sum(dim=0, dtype=torch.float64)
        ctx.save_for_backward(rows, codebook)
        ctx.scale = scale
        per_sample = (entropy_sum / (t * c)).to(rows.dtype)
        return per_sample, (prob_sum / t).to(rows.dtype)

    @staticmethod
    def backward(ctx, grad_per_sample, grad_avg_prob):
        rows, codebook = ctx.saved_tensors
        t, c, _ = rows.shape
        k = codebook.shape[0]
        grad_rows = torch.empty_like(rows)
        per_sample_weight = None if grad_per_sample is None else grad_per_sample / (t * c)
        avg_weight = None if grad_avg_prob is None else grad_avg_prob / t
        for block in _blocks(t, c * k):
            prob = _block_probs(rows[block], codebook, ctx.scale)
            grad_prob = torch.zeros_like(prob)
            if per_sample_weight is not None:
                grad_prob += _entropy_grad(prob).mul_(per_sample_weight)
            if avg_weight is not None:
                grad_prob += avg_weight
            # softmax backward: p * (g - sum(p * g))
            grad_logits = grad_prob.sub_((prob * grad_prob).sum(dim=-1, keepdim=True)).mul_(prob)
            grad_rows[block] = (grad_logits @ codebook).mul_(ctx.scale)
        return grad_rows, None, None


def _block_probs(rows, codebook, scale):
    """``softmax(scale * rows @ codebook.T)`` over the codes, for a block of rows (b, c, d) -> (b, c, k)."""
    logits = rows @ codebook.t()
    return logits.mul_(scale).softmax(dim=-1)


class _FactorizedEntropies(torch.autograd.Function):
    """The numbers of :class:`_SoftmaxEntropies` without ever forming ``(rows, k)`` probabilities.

    LFQ's codes are all sign patterns, so a logit splits into a part from the high bits
    and one from the low bits, and the softmax over ``k = H * L`` codes is the outer product
    ``u_h * v_l`` of two small softmaxes. The clamped entropy ``-sum p log max(p, eps)``
    becomes, per high code ``h``, sums over the low codes with ``v_l >= eps / u_h``: prefix
    sums over ``v`` sorted once per row, cut by a binary search. The mean distribution is
    ``U.T @ V`` (a GEMM), and its gradient comes back through ``G @ v`` and ``G.T @ u``.
    Work per row is ``O(sqrt(k) log k)`` plus GEMMs, instead of ``O(k)`` exponentials.
    """

    @staticmethod
    def forward(ctx, rows, codebook, scale):
        t, c, _ = rows.shape
        split = _Split(codebook)
        entropy_sum = torch.zeros((), dtype=torch.float64, device=rows.device)
        prob_sum = torch.zeros(c, split.high, split.low, dtype=torch.float64, device=rows.device)
        for block in _blocks(t, c * max(split.high, split.low)):
            parts = split.parts(rows[block], scale)
            entropy_sum += (parts.u * parts.per_high()).sum(dtype=torch.float64)
            prob_sum += torch.einsum("rch,rcl->chl", parts.u, parts.v).double()
        ctx.save_for_backward(rows, codebook)
        ctx.scale = scale
        per_sample = (entropy_sum / (t * c)).to(rows.dtype)
        return per_sample, (prob_sum / t).to(rows.dtype).reshape(c, -1)

    @staticmethod
    def backward(ctx, grad_per_sample, grad_avg_prob):
        rows, codebook = ctx.saved_tensors
        t, c, _ = rows.shape
        split = _Split(codebook)
        grad_rows = torch.empty_like(rows)
        per_sample_weight = None if grad_per_sample is None else grad_per_sample / (t * c)
        avg_weight = None if grad_avg_prob is None else (grad_avg_prob / t).reshape(c, split.high, split.low)
        for block in _blocks(t, c * max(split.high, split.low)):
            parts = split.parts(rows[block], ctx.scale)
            u, v = parts.u, parts.v
            grad_high = torch.zeros_like(u)
            grad_low = torch.zeros_like(v)
            if per_sample_weight is not None:
                # d H / d p = -(log p + 1) above eps, -log eps below; summed over the other half
                per_high = parts.per_high()
                w_high = per_high - parts.top_low_mass
                expected = (u * w_high).sum(dim=-1, keepdim=True)
                w_low = parts.per_low_grad()
                grad_high += u * (w_high - expected) * per_sample_weight
                grad_low += v * (w_low - expected) * per_sample_weight
            if avg_weight is not None:
                g_v = torch.einsum("rcl,chl->rch", v, avg_weight)
                g_u = torch.einsum("rch,chl->rcl", u, avg_weight)
                expected = (u * g_v).sum(dim=-1, keepdim=True)
                grad_high += u * (g_v - expected)
                grad_low += v * (g_u - expected)
            grad_rows[block] = split.grad_rows(grad_high, grad_low, ctx.scale)
        return grad_rows, None, None


class _Split:
    """LFQ's codebook as high-bit codes ``(H, d1)`` times low-bit codes ``(L, d2)``."""

    def __init__(self, codebook):
        k, d = codebook.shape
        self.d1 = d // 2
        self.low = 2 ** (d - self.d1)
        self.high = k // self.low
        # code j = h * L + l; its first d1 values depend on h only, the rest on l only
        self.codes_high = codebook[::self.low, :self.d1]
        self.codes_low = codebook[:self.low, self.d1:]

    def parts(self, rows, scale):
        x_high, x_low = rows[..., :self.d1], rows[..., self.d1:]
        u = (x_high @ self.codes_high.t()).mul_(scale).softmax(dim=-1)
        v = (x_low @ self.codes_low.t()).mul_(scale).softmax(dim=-1)
        return _Parts(u, v)

    def grad_rows(self, grad_high, grad_low, scale):
        return torch.cat([grad_high @ self.codes_high, grad_low @ self.codes_low], dim=-1).mul_(scale)


class _Parts:
    """The two factor distributions of a block of rows and the clamped-entropy sums over them."""

    def __init__(self, u, v):
        self.u, self.v = u, v
        self.log_u, self.log_v = _safe_log(u), _safe_log(v)
        # mass and sum of v log v of the low codes with u_h * v_l >= eps, for each h
        self.top_low_mass, top_low_vlogv, self.total_low = _mass_above(v, self.log_v, u)
        self._top_low_vlogv = top_low_vlogv

    def per_high(self):
        """``R_h = sum_l v_l * (-log max(u_h v_l, eps))`` for each high code ``h``."""
        return (-self.log_u * self.top_low_mass - self._top_low_vlogv
                - LOG_EPS * (self.total_low - self.top_low_mass))

    def per_low_grad(self):
        """``sum_h u_h * dH/dp_hl`` for each low code ``l`` (``dH/dp`` of the clamped entropy)."""
        mass, ulogu, total = _mass_above(self.u, self.log_u, self.v)
        return -(self.log_v + 1) * mass - ulogu - LOG_EPS * (total - mass)


def _safe_log(p):
    """``log p`` with zeros (underflowed probabilities) mapped to a finite value; they carry no mass."""
    return p.clamp(min=torch.finfo(p.dtype).tiny).log()


def _mass_above(q, log_q, other):
    """For each entry ``o`` of ``other``: the sums of ``q`` and ``q log q`` over ``q >= eps / o``.

    ``q`` (..., m) and ``other`` (..., n) -> two (..., n) tensors and the total of ``q`` (..., 1).
    """
    q_sorted, order = q.sort(dim=-1, descending=True)
    qlogq = (q_sorted * log_q.gather(-1, order))
    zero = q_sorted.new_zeros(q_sorted.shape[:-1] + (1,))
    mass = torch.cat([zero, q_sorted.cumsum(dim=-1)], dim=-1)
    weighted = torch.cat([zero, qlogq.cumsum(dim=-1)], dim=-1)
    # count of q >= eps / o: on the ascending -q, values <= -eps / o (o = 0 gives -inf, count 0)
    count = torch.searchsorted(q_sorted.neg(), (-ENTROPY_EPS / other).contiguous(), right=True)
    return mass.gather(-1, count), weighted.gather(-1, count), mass[..., -1:]


def softmax_entropies(rows, codebook, inv_temperature, *, factorized=True):
    """Per-sample entropy (mean) and mean distribution of the seed's LFQ code probabilities.

    Parameters
    ----------
    rows : Tensor of shape (t, c, d)
        Tokens per codebook, before quantization.
    codebook : Tensor of shape (k, d)
        LFQ's codes (all sign patterns, code ``j`` holding the bits of ``j``).
    inv_temperature : float
    factorized : bool
        Use the factorised computation (fast); False computes every probability, a block
        of tokens at a time (the reference).

    Returns
    -------
    per_sample_entropy : Tensor, scalar
    avg_prob : Tensor of shape (c, k)
    """
    # The seed's logits are -(-2 * x.code) * inv_temperature: one rounding, as 2 * x.code is exact.
    scale = 2.0 * float(inv_temperature)
    function = _FactorizedEntropies if factorized else _SoftmaxEntropies
    return function.apply(rows, codebook, scale)


class LFQ(nn.Module):
    """Lookup-free quantization with the seed's arguments, outputs and ``state_dict`` keys.

    Parameters
    ----------
    dim : int, optional
        Input feature size; defaults to ``log2(codebook_size) * num_codebooks``. Otherwise linear
        projections map to and from the codebook dims.
    codebook_size : int, optional
        A power of two; defaults to ``2 ** dim``.
    entropy_loss_weight, commitment_loss_weight, diversity_gamma : float
        Weights of the entropy loss, of the commitment loss, and of the batch (codebook)
        entropy within the entropy loss.
    straight_through_activation : nn.Module
        Applied to the input of the straight-through estimator in training.
    num_codebooks : int
    keep_num_codebooks_dim : bool, optional
        Defaults to ``num_codebooks > 1`` (required then).
    codebook_scale : float
        Code values are ``+-codebook_scale``.
    frac_per_sample_entropy : float
        In (0, 1]: the entropies use a random fraction of the tokens, drawn as the seed draws it.

    Notes
    -----
    ``forward(x, inv_temperature=100., return_loss_breakdown=False, mask=None)`` returns
    ``Return(quantized, indices, entropy_aux_loss)``, and with ``return_loss_breakdown`` also
    ``LossBreakdown(per_sample_entropy, batch_entropy, commitment)``. Inputs are cast to
    float32 and the output stays float32, as in the seed.
    """

    def __init__(self, *, dim=None, codebook_size=None, entropy_loss_weight=0.1, commitment_loss_weight=0.25,
                 diversity_gamma=1.0, straight_through_activation=nn.Identity(), num_codebooks=1,
                 keep_num_codebooks_dim=None, codebook_scale=1.0, frac_per_sample_entropy=1.0):
        super().__init__()
        codebook_size, codebook_dim, dim = resolve_sizes(dim, codebook_size, num_codebooks)
        keep_num_codebooks_dim = resolve_keep_dim(num_codebooks, keep_num_codebooks_dim)
        if not 0 < frac_per_sample_entropy <= 1:
            raise ValueError(f"frac_per_sample_entropy must lie in (0, 1], got {frac_per_sample_entropy}.")

        codebook_dims = codebook_dim * num_codebooks
        self.has_projections = dim != codebook_dims
        self.project_in = nn.Linear(dim, codebook_dims) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(codebook_dims, dim) if self.has_projections else nn.Identity()
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.num_codebooks = num_codebooks
        self.keep_num_codebooks_dim = keep_num_codebooks_dim
        self.activation = straight_through_activation
        self.frac_per_sample_entropy = frac_per_sample_entropy
        self.diversity_gamma = diversity_gamma
        self.entropy_loss_weight = entropy_loss_weight
        self.codebook_scale = codebook_scale
        self.commitment_loss_weight = commitment_loss_weight

        # The seed's buffers: the bit values (persistent), a zero and the codes (not persistent).
        self.register_buffer("mask", 2 ** torch.arange(codebook_dim - 1, -1, -1))
        self.register_buffer("zero", torch.tensor(0.0), persistent=False)
        bits = ((torch.arange(codebook_size)[..., None].int() & self.mask) != 0).float()
        self.register_buffer("codebook", self.bits_to_codes(bits), persistent=False)

    def bits_to_codes(self, bits):
        """Bits in {0, 1} -> code values in {-codebook_scale, codebook_scale}."""
        return bits * self.codebook_scale * 2 - self.codebook_scale

    @property
    def dtype(self):
        return self.codebook.dtype

    def indices_to_codes(self, indices, project_out=True):
        """Codes of ``indices`` ``(b, n)`` or ``(b, ...)`` (codebook axis last when kept).

        Returns ``(b, n, dim)`` (``project_out``) or ``(b, n, codebook_dims)``; image/video
        indices give channel-first codes.
        """
        check_indices(indices, self.codebook_size)
        is_img_or_video = indices.ndim >= 3 + int(self.keep_num_codebooks_dim)
        if not self.keep_num_codebooks_dim:
            indices = indices.unsqueeze(-1)
        bits = ((indices.unsqueeze(-1).int() & self.mask) != 0).to(self.dtype)
        codes = self.bits_to_codes(bits).flatten(-2)
        if project_out:
            codes = self.project_out(codes)
        if is_img_or_video:
            codes = codes.movedim(-1, 1)
        return codes

    # -- forward ---------------------------------------------------------------------------------

    def forward(self, x, inv_temperature=100.0, return_loss_breakdown=False, mask=None):
        """Quantize ``x`` ``(b, n, dim)`` or channel-first ``(b, dim, ...)``; see the class notes."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a tensor, got {type(x).__name__}.")
        x = x.float()
        with no_cuda_autocast():
            x, spatial = channel_last_tokens(x, self.dim)
            _check_mask(mask, x)
            x = split_codebooks(self.project_in(x), self.num_codebooks)
            original_input = x
            # float scalars: an int scale (ResidualLFQ's first stage has 2 ** 0 == 1) would give int64 codes
            value = float(self.codebook_scale)
            quantized = torch.where(x > 0, value, -value).to(x.dtype)
            if self.training:
                x = self.activation(x)
                x = x + (quantized - x).detach()
            else:
                x = quantized
            indices = ((x > 0) * self.mask).sum(dim=-1)
            if self.training:
                per_sample_entropy, codebook_entropy = self._entropies(original_input, mask, inv_temperature)
                entropy_aux_loss = per_sample_entropy - self.diversity_gamma * codebook_entropy
                commit_loss = _commitment(original_input, quantized, mask)
            else:
                entropy_aux_loss = per_sample_entropy = codebook_entropy = commit_loss = self.zero
            out = self.project_out(x.flatten(-2))
        out, indices = restore_layout(out, indices, spatial)
        if not self.keep_num_codebooks_dim:
            indices = indices.squeeze(-1)
        aux_loss = entropy_aux_loss * self.entropy_loss_weight + commit_loss * self.commitment_loss_weight
        ret = Return(out, indices, aux_loss)
        if not return_loss_breakdown:
            return ret
        return ret, LossBreakdown(per_sample_entropy, codebook_entropy, commit_loss)

    def _entropies(self, original_input, mask, inv_temperature):
        """(per-sample entropy, codebook entropy) over the masked, optionally subsampled tokens."""
        rows = original_input[mask] if mask is not None else original_input.flatten(0, 1)
        if self.frac_per_sample_entropy < 1.0:
            num_tokens = rows.shape[0]
            num_sampled = int(num_tokens * self.frac_per_sample_entropy)
            # The seed's draw: a random permutation rank per token, on the default (CPU) generator.
            keep = torch.randn(num_tokens).argsort(dim=-1) < num_sampled
            rows = rows[keep.to(rows.device)]
        per_sample_entropy, avg_prob = softmax_entropies(rows, self.codebook.to(rows.dtype), inv_temperature)
        return per_sample_entropy, entropy(avg_prob).mean()

    def to_vqcore(self):
        """A ``vqcore.lfq.LFQ`` with this configuration and projections, for numpy-only encode/decode."""
        from vqcore.lfq import LFQ as NumpyLFQ

        quantizer = NumpyLFQ(dim=self.dim, codebook_size=self.codebook_size, num_codebooks=self.num_codebooks,
                             keep_num_codebooks_dim=self.keep_num_codebooks_dim,
                             codebook_scale=self.codebook_scale)
        return quantizer.load_state_dict(self.state_dict())

    def extra_repr(self):
        return f"dim={self.dim}, codebook_size={self.codebook_size}, num_codebooks={self.num_codebooks}"


def _commitment(original_input, quantized, mask):
    """The seed's masked mean squared distance to the (detached) quantized values."""
    loss = F.mse_loss(original_input, quantized.detach(), reduction="none")
    if mask is not None:
        loss = loss[mask]
    return loss.mean()


def _check_mask(mask, x):
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask must be a bool tensor of shape {tuple(x.shape[:2])} (batch, seq), got "
                         f"{getattr(mask, 'dtype', type(mask))} {tuple(getattr(mask, 'shape', ()))}.")
