"""``ResidualVQ`` and ``GroupedResidualVQ``: drop-ins for vector-quantize-pytorch 1.14.5's residual layers.

Stage ``i`` quantizes what stages ``0..i-1`` left over; the output is the sum of the stages'
codes.  The pieces shared with the FSQ and LFQ residual forms live here as well:

* :func:`dropout_last_stage` -- the quantize-dropout draw from Python's ``random``, in the seed's order;
* :func:`residual_loop` -- the loop over stages (one copy, instead of the seed's four);
* :class:`ResidualBase` -- validation, ``get_codes_from_indices`` and ``get_output_from_indices``;
* :class:`GroupedBase` -- the split of the features into groups, each with its own residual stack.

Every stage of ``ResidualVQ`` is a :class:`vqtorch.VectorQuantize`, so its search runs through the
same backend kernels (blocked, never an ``(n, k)`` matrix unless an option needs distances).
"""
from __future__ import annotations

import numbers
import random
from functools import partial
from math import ceil

import torch
import torch.nn.functional as F
from torch import nn

from .layer import VectorQuantize
from .transaction import may_update_codebooks, state_transaction

__all__ = ["ResidualVQ", "GroupedResidualVQ", "ResidualBase", "GroupedBase", "dropout_last_stage",
           "residual_loop", "check_dropout_options", "check_int", "export_to_vqcore"]

# The seed's GroupedResidual* draw one seed per call with random.randint(0, 1e7).
_GROUP_SEED_HIGH = 10 ** 7


def check_int(name, value, minimum):
    """Raise a TypeError unless ``value`` is an int (not a bool), a ValueError if it is below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}.")


def check_dropout_options(num_quantizers, quantize_dropout, cutoff_index, multiple_of):
    """Validate the residual stack size and the quantize-dropout options.

    Raises
    ------
    TypeError, ValueError
        Naming the option and the fix.
    """
    check_int("num_quantizers", num_quantizers, 1)
    check_int("quantize_dropout_cutoff_index", cutoff_index, 0)
    check_int("quantize_dropout_multiple_of", multiple_of, 1)
    if quantize_dropout and num_quantizers > 1 and cutoff_index >= num_quantizers:
        raise ValueError(
            f"quantize_dropout_cutoff_index={cutoff_index} must be < num_quantizers={num_quantizers}: "
            "it is the first stage quantize dropout may stop at."
        )


def dropout_last_stage(num_quantizers, cutoff_index, multiple_of, fixed_seed=None):
    """Index of the last stage that runs under quantize dropout, drawn as the seed draws it.

    Parameters
    ----------
    num_quantizers : int
    cutoff_index : int
        Smallest index that may be drawn.
    multiple_of : int
        The number of running stages is rounded up to a multiple of this (EnCodec's structured dropout).
    fixed_seed : int, optional
        Draw from ``random.Random(fixed_seed)`` instead of the global ``random`` module.

    Returns
    -------
    int
        Stages after this index are dropped.
    """
    rand = random if fixed_seed is None else random.Random(fixed_seed)
    last = rand.randrange(cutoff_index, num_quantizers)
    if multiple_of != 1:
        last = ceil((last + 1) / multiple_of) * multiple_of - 1
    return last


def residual_loop(x, stages, last_stage=None):
    """Run ``stages`` on successive residuals of ``x``.

    Parameters
    ----------
    x : Tensor
        Input of the first stage.
    stages : sequence of callables
        ``stage(residual) -> (quantized, *extras)``; the residual passed on is
        ``residual - quantized.detach()``.
    last_stage : int, optional
        Index of the last stage to run (quantize dropout); all stages by default.

    Returns
    -------
    quantized : Tensor
        Sum of the stages' ``quantized``.
    extras : list of lists
        Each stage's ``extras``, for the stages that ran.
    """
    stages = list(stages)
    stop = len(stages) - 1 if last_stage is None else min(last_stage, len(stages) - 1)
    quantized_out = None
    residual = x
    extras = []
    for index in range(stop + 1):
        quantized, *rest = stages[index](residual)
        if index < stop:  # the residual after the last stage that runs is never used
            residual = residual - quantized.detach()
        # The same sums as the seed's 0. + q0 + q1 + ...; accumulated in place after the first
        # (a fresh tensor), which saves one activation-sized allocation per stage.
        if quantized_out is None:
            quantized_out = 0.0 + quantized
        elif quantized_out.shape == quantized.shape and quantized_out.dtype == quantized.dtype:
            quantized_out.add_(quantized)
        else:
            quantized_out = quantized_out + quantized  # broadcasting or promotion, as the seed's sum
        extras.append(rest)
    return quantized_out, extras


def _pad_dropped(values, num, null):
    """``values`` followed by ``null`` for every dropped stage, stacked on a new last axis."""
    return torch.stack(list(values) + [null] * (num - len(values)), dim=-1)


# VectorQuantize options that vqcore's residual codebooks take (the rest have no numpy counterpart).
_VQCORE_CODEBOOK_OPTIONS = ("decay", "eps", "kmeans_init", "kmeans_iters", "threshold_ema_dead_code", "ema_update",
                            "sync_kmeans", "stochastic_sample_codes", "sample_codebook_temp")


def export_to_vqcore(module, stack, groups, *, seed=None):
    """A ``vqcore.ResidualQuantizer`` configured like ``stack`` (one group's ResidualVQ), holding ``module``'s state."""
    import vqcore

    cfg = stack.layers[0].config
    quantizer = vqcore.ResidualQuantizer(
        stack.dim * groups, cfg.codebook_size, stack.num_quantizers,
        codebook_dim=cfg.dim if stack.has_projections else None, shared_codebook=stack.shared_codebook,
        use_cosine_sim=cfg.use_cosine_sim, groups=groups, seed=seed,
        **{name: getattr(cfg, name) for name in _VQCORE_CODEBOOK_OPTIONS})
    state = {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
             for k, v in module.state_dict().items()}
    return quantizer.load_state_dict(state, strict=True)


class ResidualBase(nn.Module):
    """What residual stacks share: dropout settings, index checks and decoding from indices.

    Subclasses set ``num_quantizers``, ``quantize_dropout``, ``quantize_dropout_cutoff_index``,
    ``quantize_dropout_multiple_of``, ``project_out``, ``codebook_size``, and define
    :attr:`codebooks` (q, k, d); :meth:`_code_scales` optionally scales the codes of each stage.
    """

    def _init_dropout(self, num_quantizers, quantize_dropout, cutoff_index, multiple_of):
        check_dropout_options(num_quantizers, quantize_dropout, cutoff_index, multiple_of)
        self.num_quantizers = num_quantizers
        self.quantize_dropout = bool(quantize_dropout) and num_quantizers > 1
        self.quantize_dropout_cutoff_index = cutoff_index
        self.quantize_dropout_multiple_of = multiple_of

    def _last_stage(self, dropout_active, fixed_seed):
        """Last stage to run this call (None: all of them); draws from ``random`` only when dropping."""
        if not (dropout_active and self.quantize_dropout):
            return None
        return dropout_last_stage(self.num_quantizers, self.quantize_dropout_cutoff_index,
                                  self.quantize_dropout_multiple_of, fixed_seed)

    def _code_scales(self):
        """Per-stage factors (q, d) applied to the codes, or None."""
        return None

    def _check_tokens(self, x):
        """Validate channel-last token input (b, n, dim), the layout the FSQ/LFQ stacks work in."""
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"x must be a floating point tensor, got {getattr(x, 'dtype', type(x))}.")
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (batch, seq, dim={self.dim}), got {tuple(x.shape)}: the residual "
                             "stack works on the last axis (in 1.14.5 too).")

    def _check_stage_projections(self):
        if any(layer.has_projections for layer in self.layers):
            raise ValueError("the stages of a residual stack cannot have their own projections: leave "
                             "num_codebooks=1 (the stack projects dim to the codebook dims once).")

    def _check_code_indices(self, indices, *, allow_dropped=True):
        """Validate stacked indices (b, ..., q): integer, ``q`` columns, values in range."""
        if not isinstance(indices, torch.Tensor) or indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got {getattr(indices, 'dtype', type(indices))}.")
        if indices.ndim < 2:
            raise ValueError(f"indices must have shape (batch, ..., quantizers), got {tuple(indices.shape)}.")
        columns = indices.shape[-1]
        if columns > self.num_quantizers or (columns < self.num_quantizers and not allow_dropped):
            raise ValueError(f"indices have {columns} columns on the last axis; expected "
                             f"num_quantizers={self.num_quantizers}.")
        if columns < self.num_quantizers and not self.quantize_dropout:
            raise ValueError(
                f"indices have {columns} < num_quantizers={self.num_quantizers} columns; decoding from fewer "
                "stages needs a module built with quantize_dropout=True (and num_quantizers > 1)."
            )
        low = -1 if allow_dropped else 0
        if indices.numel() and (int(indices.min()) < low or int(indices.max()) >= self.codebook_size):
            what = "(or -1 for a dropped stage)" if allow_dropped else "(no -1: take indices from eval mode)"
            raise ValueError(f"indices must lie in [0, {self.codebook_size}) {what}, got values in "
                             f"[{int(indices.min())}, {int(indices.max())}].")

    def _stack_outputs(self, quantized, extras, *, null_loss=None, return_all_codes=False):
        """``(project_out(quantized), indices (..., q)[, losses (..., q)][, all_codes])`` from the stages' outputs.

        ``extras[i]`` is ``(indices, loss)`` of stage ``i`` (``loss`` used when ``null_loss`` is given);
        dropped stages get indices ``-1`` (int64, as the seed) and ``null_loss``.
        """
        stage_indices = [extra[0] for extra in extras]
        null_indices = torch.full_like(stage_indices[0], -1, dtype=torch.long)
        out = [self.project_out(quantized), _pad_dropped(stage_indices, self.num_quantizers, null_indices)]
        if null_loss is not None:
            out.append(_pad_dropped([extra[1] for extra in extras], self.num_quantizers, null_loss))
        if return_all_codes:
            out.append(self.get_codes_from_indices(out[1]))
        return tuple(out)

    def get_codes_from_indices(self, indices):
        """Codes of every stage for stacked indices.

        Parameters
        ----------
        indices : Tensor of shape (b, ..., q'), int
            ``q' <= num_quantizers`` columns; fewer only with quantize dropout (the missing
            stages count as dropped).  ``-1`` marks a dropped stage and gives a zero code.

        Returns
        -------
        Tensor of shape (num_quantizers, b, ..., d)
        """
        self._check_code_indices(indices)
        shape = indices.shape[:-1]
        flat = indices.reshape(-1, indices.shape[-1])
        if flat.shape[-1] < self.num_quantizers:
            flat = F.pad(flat, (0, self.num_quantizers - flat.shape[-1]), value=-1)
        dropped = flat == -1
        flat = flat.masked_fill(dropped, 0)
        codes = torch.stack([F.embedding(flat[:, q], book) for q, book in enumerate(self.codebooks)])
        codes = codes.masked_fill(dropped.t().unsqueeze(-1), 0.0)
        scales = self._code_scales()
        if scales is not None:
            codes = codes * scales.unsqueeze(1)
        return codes.reshape(self.num_quantizers, *shape, codes.shape[-1])

    def get_output_from_indices(self, indices):
        """``project_out`` of the sum over stages of :meth:`get_codes_from_indices`."""
        return self.project_out(self.get_codes_from_indices(indices).sum(dim=0))


class ResidualVQ(ResidualBase):
    """Residual vector quantization (Algorithm 1 of SoundStream), the seed's ``ResidualVQ``.

    Parameters
    ----------
    dim : int
        Features of the input.
    num_quantizers : int
        Stages, each a :class:`vqtorch.VectorQuantize` on what the previous ones left.
    codebook_dim : int, optional
        Dimension the stages work in; a ``project_in``/``project_out`` pair maps to it when it
        differs from ``dim``.
    shared_codebook : bool
        One codebook module for all stages (RQ-VAE).
    heads : int
        Must be 1: residual stacks have single-headed codes (as in the seed).
    quantize_dropout : bool
        In training, stop after a random stage (drawn from Python's ``random``); dropped stages
        give indices ``-1`` and a zero loss.
    quantize_dropout_cutoff_index : int
        First stage dropout may stop at.
    quantize_dropout_multiple_of : int
        Round the number of running stages up to a multiple of this.
    accept_image_fmap : bool
        Inputs are (b, c, h, w) feature maps.
    **kwargs
        Every other argument of :class:`vqtorch.VectorQuantize` (``codebook_size``, ``decay``,
        ``kmeans_init``, ``backend``, ...), passed to each stage.

    Notes
    -----
    ``forward`` returns ``(quantized, indices (..., q), losses (1, q))``, plus ``all_codes``
    (q, b, ..., d) with ``return_all_codes=True``; with ``indices=`` it returns
    ``(quantized, summed_cross_entropy_loss)``.
    """

    def __init__(self, *, dim, num_quantizers, codebook_dim=None, shared_codebook=False, heads=1,
                 quantize_dropout=False, quantize_dropout_cutoff_index=0, quantize_dropout_multiple_of=1,
                 accept_image_fmap=False, **kwargs):
        super().__init__()
        check_int("dim", dim, 1)
        if heads != 1:
            raise ValueError(f"heads={heads}: residual vq is not compatible with multi-headed codes; pass heads=1 "
                             "(or use VectorQuantize for multi-headed codes).")
        self._init_dropout(num_quantizers, quantize_dropout, quantize_dropout_cutoff_index,
                           quantize_dropout_multiple_of)
        codebook_dim = dim if codebook_dim is None else codebook_dim
        check_int("codebook_dim", codebook_dim, 1)
        self.has_projections = codebook_dim != dim
        if self.has_projections and (accept_image_fmap or not kwargs.get("channel_last", True)):
            raise ValueError(
                f"codebook_dim={codebook_dim} != dim={dim} needs channel-last input: the projections act on "
                "the last axis (in 1.14.5 too). Pass codebook_dim=None, or channel-last (b, n, d) input."
            )
        self.dim = dim
        self.accept_image_fmap = accept_image_fmap
        self.channel_last = kwargs.get("channel_last", True)
        # Construction order as in the seed, so one torch seed gives the same initial weights.
        self.project_in = nn.Linear(dim, codebook_dim) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if self.has_projections else nn.Identity()
        self.layers = nn.ModuleList([
            VectorQuantize(dim=codebook_dim, codebook_dim=codebook_dim, accept_image_fmap=accept_image_fmap, **kwargs)
            for _ in range(num_quantizers)
        ])
        self.codebook_size = self.layers[0].codebook_size
        self.shared_codebook = shared_codebook
        if shared_codebook:
            for layer in self.layers[1:]:
                layer._codebook = self.layers[0]._codebook

    @property
    def codebooks(self):
        """The codes of every stage: (num_quantizers, codebook_size, codebook_dim)."""
        return torch.stack([layer._codebook.embed[0] for layer in self.layers])

    def to_vqcore(self, *, seed=None):
        """A ``vqcore.ResidualQuantizer`` with this stack's codebooks, statistics and projections.

        For numpy-only inference: its ``encode`` gives the eval-mode indices of this stack on
        channel-last input, ``decode`` gives :meth:`get_output_from_indices`.  Options without a
        vqcore counterpart (losses, gumbel estimators, learnable codebooks, layouts) do not carry over.
        """
        return export_to_vqcore(self, self, 1, seed=seed)

    def _check_forward(self, x, indices=None):
        """Validate the input (and cross-entropy targets) before any state changes."""
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"x must be a floating point tensor, got {getattr(x, 'dtype', type(x))}.")
        feature_axis = 1 if (self.accept_image_fmap or (not self.channel_last and x.ndim == 3)) else -1
        if x.ndim < 2 or x.shape[feature_axis] != self.dim:
            raise ValueError(f"x of shape {tuple(x.shape)} must have dim={self.dim} features on axis {feature_axis}.")
        if indices is None:
            return
        if self.accept_image_fmap:
            raise ValueError("indices= (cross-entropy loss) is not supported with accept_image_fmap=True "
                             "(as in 1.14.5): pass channel-last (b, n, d) input.")
        self._check_code_indices(indices, allow_dropped=False)
        if x.ndim == 3:
            expected = (x.shape[0], x.shape[1] if self.channel_last else x.shape[2])
        else:
            expected = (x.shape[0],)
        if tuple(indices.shape[:-1]) != expected:
            raise ValueError(f"indices of shape {tuple(indices.shape)} do not match x of shape {tuple(x.shape)}: "
                             f"expected {expected + (self.num_quantizers,)}.")

    def forward(self, x, mask=None, indices=None, return_all_codes=False, sample_codebook_temp=None,
                freeze_codebook=False, rand_quantize_dropout_fixed_seed=None):
        """Quantize ``x`` stage by stage; see the class notes for what is returned."""
        self._check_forward(x, indices)
        return_loss = indices is not None
        x = self.project_in(x)
        dtype = x.dtype
        # The stages run and sum in at least float32, as the seed's do (its codebooks return float32,
        # so its residuals are float32 after stage 0); float16 residuals of large codes overflow.
        x = x.to(torch.promote_types(dtype, torch.float32))
        last = self._last_stage(self.training and not return_loss, rand_quantize_dropout_fixed_seed)
        layer_kwargs = dict(mask=mask, sample_codebook_temp=sample_codebook_temp, freeze_codebook=freeze_codebook)
        stages = [partial(layer, indices=indices[..., q] if return_loss else None, **layer_kwargs)
                  for q, layer in enumerate(self.layers)]
        with state_transaction(self, active=may_update_codebooks(self)):  # stage 2 refused: stage 1 undone
            quantized, extras = residual_loop(x, stages, last)
        quantized = quantized.to(dtype)
        if return_loss:
            return self.project_out(quantized), sum(ce for ce, in extras)
        null_loss = torch.zeros(1, device=x.device, dtype=dtype)
        return self._stack_outputs(quantized, extras, null_loss=null_loss, return_all_codes=return_all_codes)


class GroupedBase(nn.Module):
    """Split the features into ``groups`` and run one residual stack per group.

    Subclasses set ``residual_cls`` (a :class:`ResidualBase` with ``_check_forward(x, indices=None)``)
    and may pass ``accept_image_fmap`` on to the stacks (``pass_image_fmap``).  Outputs: the
    quantized groups concatenated back, every other per-group tensor stacked on a new first axis,
    ``all_codes`` as a tuple over groups (as the seed returns it), and the cross-entropy losses summed.
    """

    residual_cls = None
    pass_image_fmap = False

    def __init__(self, *, dim, groups=1, accept_image_fmap=False, **kwargs):
        super().__init__()
        check_int("dim", dim, 1)
        check_int("groups", groups, 1)
        if dim % groups:
            raise ValueError(f"groups={groups} must divide dim={dim}: pick a divisor of dim.")
        self.dim = dim
        self.groups = groups
        self.accept_image_fmap = accept_image_fmap
        if self.pass_image_fmap:
            kwargs["accept_image_fmap"] = accept_image_fmap
        self.rvqs = nn.ModuleList([self.residual_cls(dim=dim // groups, **kwargs) for _ in range(groups)])
        self.codebook_size = self.rvqs[0].codebook_size

    @property
    def codebooks(self):
        """Codes of every group: (groups, num_quantizers, codebook_size, d)."""
        return torch.stack([rvq.codebooks for rvq in self.rvqs])

    @property
    def split_dim(self):
        """Axis the features lie on (1 for image feature maps)."""
        return 1 if self.accept_image_fmap else -1

    def _check_groups(self, name, values):
        if len(values) != self.groups:
            raise ValueError(f"{name} has {len(values)} entries on its first axis; expected groups={self.groups}.")

    def get_codes_from_indices(self, indices):
        """Per-group :meth:`ResidualBase.get_codes_from_indices`, stacked: (groups, q, b, ..., d)."""
        self._check_groups("indices", indices)
        return torch.stack([rvq.get_codes_from_indices(ind) for rvq, ind in zip(self.rvqs, indices)])

    def get_output_from_indices(self, indices):
        """Per-group decoded outputs, concatenated on the feature axis."""
        self._check_groups("indices", indices)
        outputs = [rvq.get_output_from_indices(ind) for rvq, ind in zip(self.rvqs, indices)]
        return torch.cat(outputs, dim=self.split_dim)

    def _grouped_forward(self, x, *, indices=None, return_all_codes=False, **kwargs):
        """Run each group's stack with one dropout seed drawn from ``random`` for the call."""
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            raise TypeError(f"x must be a tensor with a feature axis, got {getattr(x, 'shape', type(x))}.")
        if x.shape[self.split_dim] != self.dim:
            raise ValueError(f"x of shape {tuple(x.shape)} must have dim={self.dim} features on axis "
                             f"{self.split_dim}.")
        return_loss = indices is not None and len(indices) > 0
        chunks = x.chunk(self.groups, dim=self.split_dim)
        if return_loss:
            self._check_groups("indices", indices)
        # Every group is checked before any group's codebook changes.
        for rvq, chunk, ind in zip(self.rvqs, chunks, indices if return_loss else [None] * self.groups):
            rvq._check_forward(chunk, ind)
        kwargs = dict(kwargs, return_all_codes=return_all_codes,
                      rand_quantize_dropout_fixed_seed=random.randint(0, _GROUP_SEED_HIGH))
        with state_transaction(self, active=may_update_codebooks(self)):  # group 2 refused: group 1 undone
            if return_loss:
                outs = [rvq(chunk, indices=ind, **kwargs) for rvq, chunk, ind in zip(self.rvqs, chunks, indices)]
                quantized, losses = zip(*outs)
                return torch.cat(quantized, dim=self.split_dim), sum(losses)
            outs = list(zip(*[rvq(chunk, **kwargs) for rvq, chunk in zip(self.rvqs, chunks)]))
        stacked = outs[1:-1] if return_all_codes else outs[1:]
        extra = (outs[-1],) if return_all_codes else ()
        return (torch.cat(outs[0], dim=self.split_dim), *[torch.stack(o) for o in stacked], *extra)


class GroupedResidualVQ(GroupedBase):
    """Grouped residual VQ (HiFi-Codec), the seed's ``GroupedResidualVQ``.

    Parameters
    ----------
    dim : int
        Features of the input; split into ``groups`` equal parts.
    groups : int
        Must divide ``dim``; each group has its own :class:`ResidualVQ`.
    accept_image_fmap : bool
        Inputs are (b, c, h, w) feature maps, split on the channel axis.
    **kwargs
        Arguments of :class:`ResidualVQ` (``num_quantizers``, ``codebook_size``, ``backend``, ...).

    Notes
    -----
    ``forward`` returns ``(quantized, indices (groups, ..., q), losses (groups, 1, q))`` and, with
    ``return_all_codes=True``, a tuple of each group's codes; with ``indices=`` (one tensor per
    group) it returns ``(quantized, summed_cross_entropy_loss)``.
    """

    residual_cls = ResidualVQ
    pass_image_fmap = True

    def to_vqcore(self, *, seed=None):
        """A ``vqcore.ResidualQuantizer(groups=groups)`` holding every group's stack (see ResidualVQ.to_vqcore).

        Its codes have shape (..., groups, num_quantizers): this module's indices with the group axis moved last.
        """
        return export_to_vqcore(self, self.rvqs[0], self.groups, seed=seed)

    def forward(self, x, indices=None, return_all_codes=False, sample_codebook_temp=None, freeze_codebook=False,
                mask=None):
        """Quantize each group of features with its residual stack."""
        return self._grouped_forward(x, indices=indices, return_all_codes=return_all_codes,
                                     sample_codebook_temp=sample_codebook_temp, freeze_codebook=freeze_codebook,
                                     mask=mask)
