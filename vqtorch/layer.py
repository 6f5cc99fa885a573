"""``VectorQuantize``: a drop-in for vector-quantize-pytorch 1.14.5's layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .codebook import CosineSimCodebook, EuclideanCodebook
from .config import VQConfig
from .distributed import TorchDistComm, default_comm
from .finite import all_finite
from .layout import HeadLayout
from .losses import masked_mse, orthogonal_loss
from .transaction import state_transaction

__all__ = ["VectorQuantize"]


class VectorQuantize(nn.Module):
    """Vector quantization layer with the seed's arguments, outputs and ``state_dict`` keys.

    Parameters
    ----------
    dim, codebook_size, ... :
        Every argument of ``vector_quantize_pytorch.VectorQuantize`` (1.14.5), same names and
        defaults; see :class:`vqtorch.config.VQConfig`.
    backend : {"auto", "vqcore", "torch"}
        Where the non-differentiable codebook work runs: vqcore's kernels (CPU tensors),
        torch ops (any device), or vqcore on CPU and torch elsewhere.

    Notes
    -----
    ``forward`` returns ``(quantize, indices, loss)``; with ``indices=`` given it returns
    ``(quantize, cross_entropy_loss)`` where ``quantize`` is in the codebook layout before
    ``project_out``, as in the seed.
    """

    def __init__(self, dim, codebook_size, codebook_dim=None, heads=1, separate_codebook_per_head=False,
                 decay=0.8, eps=1e-5, freeze_codebook=False, kmeans_init=False, kmeans_iters=10,
                 sync_kmeans=True, use_cosine_sim=False, threshold_ema_dead_code=0, channel_last=True,
                 accept_image_fmap=False, commitment_weight=1.0, commitment_use_cross_entropy_loss=False,
                 orthogonal_reg_weight=0.0, orthogonal_reg_active_codes_only=False,
                 orthogonal_reg_max_codes=None, stochastic_sample_codes=False, sample_codebook_temp=1.0,
                 straight_through=False, reinmax=False, sync_codebook=None, sync_affine_param=False,
                 ema_update=True, learnable_codebook=False, in_place_codebook_optimizer=None,
                 affine_param=False, affine_param_batch_decay=0.99, affine_param_codebook_decay=0.9,
                 sync_update_v=0.0, backend="auto"):
        super().__init__()
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        cfg = VQConfig(**args)
        self.config = cfg
        self.layout = HeadLayout(cfg.heads, cfg.separate_codebook_per_head)

        codebook_dim = cfg.effective_codebook_dim
        inner = codebook_dim * heads
        # Same construction order as the seed, so a shared torch seed gives the same initial weights.
        self.project_in = nn.Linear(dim, inner) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(inner, dim) if self.has_projections else nn.Identity()

        # One communicator for the codebook's collectives: the seed's default syncs when a
        # process group of more than one rank exists; sync_codebook=True insists on one.
        comm = default_comm() if sync_codebook is None else (TorchDistComm() if sync_codebook else None)
        codebook_cls = CosineSimCodebook if use_cosine_sim else EuclideanCodebook
        extra = {}
        if affine_param:
            extra = dict(affine_param=True, sync_affine_param=sync_affine_param,
                         affine_param_batch_decay=affine_param_batch_decay,
                         affine_param_codebook_decay=affine_param_codebook_decay)
        self._codebook = codebook_cls(
            dim=codebook_dim, codebook_size=codebook_size, num_codebooks=cfg.num_codebooks,
            kmeans_init=kmeans_init, kmeans_iters=kmeans_iters, sync_kmeans=sync_kmeans, decay=decay, eps=eps,
            threshold_ema_dead_code=threshold_ema_dead_code, comm=comm,
            learnable_codebook=cfg.codebook_is_learnable, sample_codebook_temp=sample_codebook_temp,
            stochastic=stochastic_sample_codes, straight_through=straight_through, reinmax=reinmax,
            ema_update=ema_update, backend=backend, **extra)

        self.in_place_codebook_optimizer = (
            in_place_codebook_optimizer(self._codebook.parameters())
            if in_place_codebook_optimizer is not None else None
        )

    # -- the options, read from the config (the seed's attribute names) ----------------------------
    dim = property(lambda self: self.config.dim)
    heads = property(lambda self: self.config.heads)
    separate_codebook_per_head = property(lambda self: self.config.separate_codebook_per_head)
    codebook_size = property(lambda self: self.config.codebook_size)
    eps = property(lambda self: self.config.eps)
    commitment_weight = property(lambda self: self.config.commitment_weight)
    commitment_use_cross_entropy_loss = property(lambda self: self.config.commitment_use_cross_entropy_loss)
    learnable_codebook = property(lambda self: self.config.learnable_codebook)
    has_codebook_orthogonal_loss = property(lambda self: self.config.orthogonal_reg_weight > 0)
    orthogonal_reg_weight = property(lambda self: self.config.orthogonal_reg_weight)
    orthogonal_reg_active_codes_only = property(lambda self: self.config.orthogonal_reg_active_codes_only)
    orthogonal_reg_max_codes = property(lambda self: self.config.orthogonal_reg_max_codes)
    sync_update_v = property(lambda self: self.config.sync_update_v)
    accept_image_fmap = property(lambda self: self.config.accept_image_fmap)
    channel_last = property(lambda self: self.config.channel_last)
    has_projections = property(lambda self: self.config.has_projections)

    # -- codebook access -----------------------------------------------------------------------

    @property
    def codebook(self):
        """The codes: (k, d), or (heads, k, d) with ``separate_codebook_per_head``."""
        embed = self._codebook.embed
        return embed if self.separate_codebook_per_head else embed[0]

    @codebook.setter
    def codebook(self, codes):
        if not self.separate_codebook_per_head:
            codes = codes.unsqueeze(0)
        if codes.shape != self._codebook.embed.shape:
            raise ValueError(f"codebook of shape {tuple(codes.shape)} does not match "
                             f"{tuple(self.codebook.shape)}; pass codes of that shape.")
        with torch.no_grad():
            self._codebook.embed.copy_(codes)

    def _check_indices(self, indices, *, allow_ignore=False):
        """Integer codes in range; ``-1`` ("ignore") only where a loss can skip it."""
        if not isinstance(indices, torch.Tensor) or indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got {getattr(indices, 'dtype', type(indices))}.")
        low = -1 if allow_ignore else 0
        if indices.numel() and (int(indices.min()) < low or int(indices.max()) >= self.codebook_size):
            ignore = " (or -1 to ignore)" if allow_ignore else " (-1 means 'ignore' only in forward(indices=...))"
            raise ValueError(f"indices must lie in [0, {self.codebook_size}){ignore}, "
                             f"got values in [{int(indices.min())}, {int(indices.max())}].")

    def get_codes_from_indices(self, indices):
        """Codes for ``indices``: (b, ...) -> (b, ..., d); multi-head separate (b, ..., h) -> (b, ..., h*d)."""
        self._check_indices(indices)
        codebook = self.codebook
        if codebook.ndim == 2:
            codes = codebook[indices]
        else:
            flat = indices.reshape(indices.shape[0], -1, indices.shape[-1])  # (b, n, h)
            heads = torch.arange(codebook.shape[0], device=indices.device)
            codes = codebook[heads, flat]  # (b, n, h, d)
            codes = codes.reshape(*indices.shape[:-1], -1)
        if not self.channel_last:
            codes = codes.movedim(-1, 1)
        return codes

    def get_output_from_indices(self, indices):
        """``project_out`` of :meth:`get_codes_from_indices`."""
        return self.project_out(self.get_codes_from_indices(indices))

    def to_vqcore(self, *, seed=None):
        """A ``vqcore.VectorQuantizer`` holding this layer's codebook, projections and statistics.

        For numpy-only inference (or further EMA training with vqcore) without torch.
        Options without a vqcore counterpart (losses, gumbel estimators, learnable codebooks,
        layouts) do not carry over; inputs to the quantizer are channel-last (b, n, dim).
        """
        import vqcore

        cfg = self.config
        quantizer = vqcore.VectorQuantizer(
            cfg.dim, cfg.codebook_size, codebook_dim=cfg.codebook_dim, heads=cfg.heads,
            separate_codebook_per_head=cfg.separate_codebook_per_head, use_cosine_sim=cfg.use_cosine_sim,
            decay=cfg.decay, eps=cfg.eps, kmeans_init=cfg.kmeans_init, kmeans_iters=cfg.kmeans_iters,
            threshold_ema_dead_code=cfg.threshold_ema_dead_code, affine_param=cfg.affine_param,
            affine_param_batch_decay=cfg.affine_param_batch_decay,
            affine_param_codebook_decay=cfg.affine_param_codebook_decay, sync_kmeans=cfg.sync_kmeans,
            sync_affine_param=cfg.sync_affine_param, stochastic_sample_codes=cfg.stochastic_sample_codes,
            sample_codebook_temp=cfg.sample_codebook_temp, ema_update=cfg.ema_update, seed=seed)
        quantizer.load_state_dict({k: v.detach().cpu().float().numpy() for k, v in self.state_dict().items()},
                                  strict=True)
        return quantizer

    # -- layout helpers ------------------------------------------------------------------------

    def _check_input(self, x, indices, mask):
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"x must be a floating point tensor, got {getattr(x, 'dtype', type(x))}.")
        expected = (4,) if self.accept_image_fmap else (2, 3)
        if x.ndim not in expected:
            layout = "(b, c, h, w)" if self.accept_image_fmap else "(b, n, d), (b, d, n) or (b, d)"
            raise ValueError(f"x must have shape {layout}, got {tuple(x.shape)}.")
        feature_axis = 1 if (self.accept_image_fmap or (not self.channel_last and x.ndim == 3)) else -1
        if x.shape[feature_axis] != self.dim:
            raise ValueError(f"x has {x.shape[feature_axis]} features on axis {feature_axis}, expected dim={self.dim}.")
        if x.numel() == 0:
            raise ValueError(f"x of shape {tuple(x.shape)} holds no vectors; pass at least one.")
        if self.has_projections and x.dtype != self.project_in.weight.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the layer's projections are {self.project_in.weight.dtype}: "
                            "cast x (e.g. x.float()) or the layer (e.g. layer.double()).")
        if not all_finite(x):
            raise ValueError("x contains NaN or Inf; remove or impute those values first (the codebook is unchanged).")
        if mask is not None:
            if x.ndim == 2 or self.accept_image_fmap or not self.channel_last:
                raise ValueError("mask works only for channel-last (b, n, d) input: pass mask=None.")
            if mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(f"mask must be a bool tensor of shape {tuple(x.shape[:2])}, "
                                 f"got {mask.dtype} {tuple(mask.shape)}.")
            if not mask.any():
                raise ValueError("mask is all False: no vector would be quantized or trained on.")
        if indices is not None:
            self._check_indices(indices, allow_ignore=True)
            tokens = 1 if x.ndim == 2 else (x.shape[-2] * x.shape[-1] if self.accept_image_fmap else
                                            x.shape[1] if self.channel_last else x.shape[2])
            expected = x.shape[0] * tokens * self.heads
            if indices.shape[:1] != x.shape[:1] or indices.numel() != expected:
                raise ValueError(f"indices has shape {tuple(indices.shape)}; for x of shape {tuple(x.shape)} it "
                                 f"needs {x.shape[0]} rows and {expected} codes in all (the layout forward "
                                 "returns).")

    def _ce_loss(self, distances, codes, b):
        """Cross entropy of the codes (b, n[, h]) under the negative distances, -1 ignored."""
        logits = self.layout.logits(distances, b)
        target = codes.reshape(b, *logits.shape[2:])
        return F.cross_entropy(logits, target, ignore_index=-1)

    # -- forward -------------------------------------------------------------------------------

    def forward(self, x, indices=None, mask=None, sample_codebook_temp=None, freeze_codebook=False):
        """Quantize ``x``; see the class notes for what is returned."""
        self._check_input(x, indices, mask)
        # In training the whole call is one transaction: the in-place optimizer and the steps after
        # the codebook's may fail too. In evaluation only the codebook can change, and guards itself.
        with state_transaction(self, active=self.training):
            return self._forward(x, indices, mask, sample_codebook_temp, freeze_codebook)

    def _forward(self, x, indices, mask, sample_codebook_temp, freeze_codebook):
        """:meth:`forward` after the input checks."""
        tokens, layout = self._to_tokens(x)
        b = tokens.shape[0]
        z = self._codebook.transform_input(self.layout.split(self.project_in(tokens)))
        if self.has_projections and not all_finite(z):  # before the codebook's statistics see them
            raise ValueError(f"project_in turned x (values up to {float(tokens.detach().abs().max()):.3g} in "
                             "magnitude) into NaN or Inf; rescale x or the projection's weights (the codebook is "
                             "unchanged).")
        z_mask = None if mask is None else self.layout.mask(mask)
        quantize, codes, distances, commit_quantize = self._quantize(
            z, z_mask, need_distances=indices is not None, sample_codebook_temp=sample_codebook_temp,
            freeze_codebook=freeze_codebook)
        if indices is not None:
            return quantize, self._ce_loss(distances, indices, b)
        codes = self._codes_out(codes, b, layout)
        loss = torch.tensor([0.0], device=z.device, requires_grad=self.training)
        if self.training:
            loss = loss + self._training_loss(z, commit_quantize, codes, distances, mask, z_mask, b)
        out = self.project_out(self.layout.merge(quantize.to(z.dtype), b))
        return self._from_tokens(out, layout, x, mask), codes, loss

    def _to_tokens(self, x):
        """Input of any accepted layout -> ``(b, n, dim)``, and what :meth:`_from_tokens` needs to undo it."""
        only_one = x.ndim == 2
        if only_one:
            x = x.unsqueeze(1)
        image_hw = x.shape[-2:] if self.accept_image_fmap else None
        if self.accept_image_fmap:
            x = x.flatten(2).transpose(1, 2)
        transposed = not self.channel_last and not self.accept_image_fmap
        if transposed:
            x = x.transpose(1, 2)
        return x, (only_one, image_hw, transposed)

    def _from_tokens(self, out, layout, original, mask):
        """``(b, n, dim)`` -> the input's layout and dtype; masked positions give back the input."""
        only_one, image_hw, transposed = layout
        if transposed:
            out = out.transpose(1, 2)
        if image_hw is not None:
            out = out.transpose(1, 2).reshape(out.shape[0], -1, *image_hw)
        if only_one:
            out = out[:, 0]
        if mask is not None:
            out = torch.where(mask.unsqueeze(-1), out, original)
        if torch.is_autocast_enabled(out.device.type):
            return out  # project_out's autocast dtype, as the seed returns it
        return out.to(original.dtype)

    def _codes_out(self, codes, b, layout):
        """Codebook-layout codes -> the seed's index layout for this input."""
        only_one, image_hw, _ = layout
        codes = self.layout.indices(codes, b)
        if image_hw is not None:
            codes = codes.reshape(b, *image_hw, *codes.shape[2:])
        return codes[:, 0] if only_one else codes

    def _quantize(self, z, z_mask, *, need_distances, sample_codebook_temp, freeze_codebook):
        """Codebook step (and the in-place optimizer), then the straight-through output in training.

        Returns ``(quantize, codes, distances, commit_quantize)``: ``commit_quantize`` is what the
        commitment loss compares with ``z`` (detached unless the codebook learns by gradient).
        """
        ce_commit = self.training and self.commitment_weight > 0 and self.commitment_use_cross_entropy_loss
        step = dict(sample_codebook_temp=sample_codebook_temp, mask=z_mask, freeze_codebook=freeze_codebook,
                    need_distances=need_distances or ce_commit)
        quantize, codes, distances = self._codebook(z, **step)
        if self.in_place_codebook_optimizer is not None and self.training and not freeze_codebook:
            masked_mse(quantize, z.detach(), z_mask).backward()
            self.in_place_codebook_optimizer.step()
            self.in_place_codebook_optimizer.zero_grad()
            quantize, codes, distances = self._codebook(z, **step)
        commit_quantize = None
        if self.training:
            keep_grad = self.learnable_codebook and not freeze_codebook
            commit_quantize = quantize if keep_grad else quantize.detach()
            # Straight-through: the output carries z's gradient.
            quantize = z + (quantize - z).detach()
            if self.sync_update_v > 0:
                # Rule (21) of https://minyoungg.github.io/vqtorch/assets/draft_050523.pdf as the seed has it.
                quantize = quantize + self.sync_update_v * (quantize - quantize.detach())
        return quantize, codes, distances, commit_quantize

    def _training_loss(self, z, commit_quantize, embed_ind, distances, mask, z_mask, b):
        """Commitment (MSE or cross entropy) and orthogonal regularisation, weighted."""
        loss = 0.0
        if self.commitment_weight > 0:
            if self.commitment_use_cross_entropy_loss:
                if mask is not None:
                    # The seed marks masked positions in the returned indices too.
                    embed_ind.masked_fill_(~self.layout.index_mask(mask), -1)
                commit = self._ce_loss(distances, embed_ind, b)
            else:
                commit = masked_mse(commit_quantize, z, z_mask)
            loss = loss + commit * self.commitment_weight
        if self.has_codebook_orthogonal_loss:
            codes = self._codebook.embed
            if self.orthogonal_reg_active_codes_only:
                codes = codes[:, torch.unique(embed_ind)]
            num_codes = codes.shape[-2]
            if self.orthogonal_reg_max_codes is not None and num_codes > self.orthogonal_reg_max_codes:
                pick = torch.randperm(num_codes, device=z.device)[:self.orthogonal_reg_max_codes]
                codes = codes[:, pick]
            loss = loss + orthogonal_loss(codes) * self.orthogonal_reg_weight
        return loss

    def extra_repr(self):
        return f"dim={self.dim}, codebook_size={self.codebook_size}, heads={self.heads}, backend={self.config.backend!r}"
