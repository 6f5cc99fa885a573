"""Codebook modules with the seed's buffer names, shapes and dtypes.

``EuclideanCodebook`` and ``CosineSimCodebook`` hold ``embed`` (c, k, d), ``embed_avg``,
``cluster_size`` (c, k) and ``initted`` (1,) — plus, for ``affine_param``, the seed's
``batch_mean``/``batch_variance`` (absent until the first forward) and
``codebook_mean``/``codebook_variance`` with their ``*_needs_init`` flags — so
``state_dict()`` keys equal the seed module's.  The differentiable part of the
forward (distances, straight-through terms, the gather) is torch autograd; the
rest goes through a backend (:mod:`vqtorch.backends`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .amp import no_cuda_autocast
from .backends import select_backend
from .distributed import TorchDistComm
from .finite import first_not_finite
from .gumbel import gumbel_select
from .sampling import sample_vectors_distributed
from .transaction import state_transaction

__all__ = ["EuclideanCodebook", "CosineSimCodebook"]

_AFFINE_LAZY = ("batch_mean", "batch_variance")
CODEBOOK_STATE = ("embed", "embed_avg", "cluster_size")
AFFINE_STATISTICS = ("batch_mean", "batch_variance", "codebook_mean", "codebook_variance")


def _kaiming_uniform(*shape):
    t = torch.empty(shape)
    nn.init.kaiming_uniform_(t)
    return t


def gather_codes(embed, indices):
    """``embed[h][indices[h]]`` for every codebook set: (c, k, d), (c, n) -> (c, n, d).

    An embedding lookup per set copies whole rows and is about twice as fast
    as ``torch.gather`` with expanded indices; autograd flows to ``embed``.
    """
    if embed.shape[0] == 1:
        return F.embedding(indices[0], embed[0]).unsqueeze(0)
    return torch.stack([F.embedding(ind, codes) for codes, ind in zip(embed, indices)])


class _Codebook(nn.Module):
    metric = "euclidean"

    def __init__(self, dim, codebook_size, num_codebooks=1, *, kmeans_init=False, kmeans_iters=10,
                 sync_kmeans=True, decay=0.8, eps=1e-5, threshold_ema_dead_code=0, reset_cluster_size=None,
                 comm=None, learnable_codebook=False, sample_codebook_temp=1.0, stochastic=False,
                 straight_through=False, reinmax=False, ema_update=True, affine_param=False,
                 sync_affine_param=False, affine_param_batch_decay=0.99, affine_param_codebook_decay=0.9,
                 backend="auto"):
        super().__init__()
        if comm is not None and num_codebooks > 1 and kmeans_init:
            raise ValueError(
                "kmeans_init=True with several codebooks (separate_codebook_per_head) is not supported "
                "with sync_codebook=True: pass sync_codebook=False or kmeans_init=False."
            )
        self.codebook_size = codebook_size
        self.num_codebooks = num_codebooks
        self.kmeans_iters = kmeans_iters
        self.decay = decay
        self.eps = eps
        self.threshold_ema_dead_code = threshold_ema_dead_code
        self.reset_cluster_size = threshold_ema_dead_code if reset_cluster_size is None else reset_cluster_size
        self.comm = comm  # a vqcore Communicator (TorchDistComm) when the codebook is synced, else None
        self.sync_kmeans = sync_kmeans
        self.learnable_codebook = learnable_codebook
        self.sample_codebook_temp = sample_codebook_temp
        self.stochastic = stochastic
        self.straight_through = straight_through
        self.reinmax = reinmax
        self.ema_update = ema_update
        self.backend = backend

        embed = self._initial_embed(num_codebooks, codebook_size, dim, kmeans_init)
        self.register_buffer("initted", torch.tensor([float(not kmeans_init)]))
        self.register_buffer("cluster_size", torch.zeros(num_codebooks, codebook_size))
        self.register_buffer("embed_avg", embed.clone())
        if learnable_codebook:
            self.embed = nn.Parameter(embed)
        else:
            self.register_buffer("embed", embed)

        self.affine_param = affine_param
        self.sync_affine_param = sync_affine_param
        if affine_param:
            self.affine_param_batch_decay = affine_param_batch_decay
            self.affine_param_codebook_decay = affine_param_codebook_decay
            self.register_buffer("batch_mean", None)
            self.register_buffer("batch_variance", None)
            self.register_buffer("codebook_mean_needs_init", torch.tensor([1.0]))
            # The seed leaves these uninitialised (torch.empty) until the first training step; defined
            # values make a fresh layer's eval deterministic.
            self.register_buffer("codebook_mean", torch.zeros(num_codebooks, 1, dim))
            self.register_buffer("codebook_variance_needs_init", torch.tensor([1.0]))
            self.register_buffer("codebook_variance", torch.ones(num_codebooks, 1, dim))

    # -- construction helpers ------------------------------------------------------------------

    @staticmethod
    def _initial_embed(num_codebooks, codebook_size, dim, kmeans_init):
        if kmeans_init:
            return torch.zeros(num_codebooks, codebook_size, dim)
        return _kaiming_uniform(num_codebooks, codebook_size, dim)

    def transform_input(self, x):
        """Map layer input into codebook space (identity for euclidean)."""
        return x

    def _apply(self, fn, *args, **kwargs):
        # Codebook math is float32 (as in the seed); model.half()/.to(bfloat16) must not round the
        # codes and EMA statistics, so floating state goes back to float32 after a dtype cast.
        super()._apply(fn, *args, **kwargs)
        for tensors in (self._parameters, self._buffers):
            for t in tensors.values():
                if t is not None and t.is_floating_point() and t.dtype != torch.float32:
                    t.data = t.data.float()
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # batch_mean/batch_variance exist only after a forward (the seed registers them as None);
        # materialise them so a trained checkpoint loads into a fresh module with strict=True.
        if getattr(self, "affine_param", False):
            for name in _AFFINE_LAZY:
                key = prefix + name
                if getattr(self, name) is None and key in state_dict:
                    self.register_buffer(name, torch.empty_like(state_dict[key], device=self.embed.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- distributed hooks ---------------------------------------------------------------------

    def _reduce(self, t):
        """All-reduce ``t`` in place when syncing the codebook (the seed's ``all_reduce_fn``)."""
        if self.comm is not None:
            self.comm.allreduce_sum_(t)
        return t

    @property
    def _syncs_kmeans(self):
        return self.comm is not None and self.sync_kmeans

    def _kmeans_hooks(self):
        if not self._syncs_kmeans:
            return None, None
        return (lambda samples, num: sample_vectors_distributed(samples, num, self.comm)), self._reduce

    def _sample_fn(self, backend):
        if self._syncs_kmeans:
            return lambda samples, num: sample_vectors_distributed(samples.unsqueeze(0), num, self.comm)[0]
        return backend.sample_vectors

    # -- the non-differentiable steps ----------------------------------------------------------

    @torch.no_grad()
    def _init_embed(self, flatten, mask, backend):
        data = flatten
        if mask is not None:
            data = flatten[mask].reshape(flatten.shape[0], -1, flatten.shape[-1])
        sample_fn, all_reduce = self._kmeans_hooks()
        backend = select_backend(self.backend, data, distributed_kmeans=sample_fn is not None)
        try:
            means, counts = backend.kmeans(data, self.codebook_size, iters=self.kmeans_iters, metric=self.metric,
                                           sample_fn=sample_fn, all_reduce=all_reduce)
        except ValueError as error:  # finite input: its float32 centroid sums overflowed
            raise ValueError(f"k-means initialisation failed on this batch (values up to "
                             f"{float(data.detach().abs().max()):.3g} in magnitude; float32 sums overflow near "
                             f"3.4e38); rescale x (the codebook is unchanged). The search said: {error}") from error
        self.embed.data.copy_(means)
        self.embed_avg.data.copy_(means * counts.unsqueeze(-1))
        self.cluster_size.data.copy_(counts)
        self.initted.data.fill_(1.0)

    @torch.no_grad()
    def _expire_codes(self, samples, backend):
        if self.threshold_ema_dead_code == 0:
            return
        expired = self.cluster_size < self.threshold_ema_dead_code
        if not expired.any():
            return
        if self.metric == "cosine":
            samples = F.normalize(samples, dim=-1)
        sample_fn = self._sample_fn(backend)
        for i in range(self.num_codebooks):
            dead = expired[i]
            if not dead.any():
                continue
            sampled = sample_fn(samples[i], int(dead.sum().item()))
            self.embed.data[i][dead] = sampled
            self.cluster_size.data[i][dead] = self.reset_cluster_size
            self.embed_avg.data[i][dead] = sampled * self.reset_cluster_size

    def _update_with_decay(self, name, new, decay):
        flag = name + "_needs_init"
        needs_init = bool(getattr(self, flag).item()) if hasattr(self, flag) else False
        if needs_init:
            getattr(self, flag).fill_(0.0)
        old = getattr(self, name)
        new = new.detach()
        if old is None or needs_init:
            self.register_buffer(name, new)
            return
        self.register_buffer(name, old * decay + new * (1 - decay))

    @torch.no_grad()
    def _update_affine(self, flatten, mask, backend):
        if self.training:
            embed = self.embed.detach()
            self._update_with_decay("codebook_mean", embed.mean(dim=1, keepdim=True),
                                    self.affine_param_codebook_decay)
            self._update_with_decay("codebook_variance", embed.var(dim=1, unbiased=False, keepdim=True),
                                    self.affine_param_codebook_decay)
        data = flatten
        if mask is not None:
            data = flatten[mask].reshape(flatten.shape[0], -1, flatten.shape[-1])
        comm = self._affine_comm()
        if comm is not None:
            mean, variance = self._global_batch_stats(data, comm)
        else:
            mean, variance = backend.batch_stats(data)
        self._update_with_decay("batch_mean", mean, self.affine_param_batch_decay)
        self._update_with_decay("batch_variance", variance, self.affine_param_batch_decay)

    def _affine_comm(self):
        """The communicator of ``sync_affine_param``: decided per call, as the seed checks the process group."""
        if self.sync_affine_param and dist.is_available() and dist.is_initialized():
            return TorchDistComm()
        return None

    @staticmethod
    def _global_batch_stats(data, comm):
        # Sums are all-reduced first and divided after, as the seed's sync_affine_param does.
        reduce = comm.allreduce_sum_
        count = reduce(torch.tensor([data.shape[-2]], device=data.device, dtype=data.dtype))
        mean = reduce(data.sum(dim=1, keepdim=True)) / count
        variance = reduce((data - mean).pow(2).sum(dim=1, keepdim=True)) / count
        return mean, variance

    # -- the forward ---------------------------------------------------------------------------

    def _affine_stds(self):
        codebook_std = self.codebook_variance.clamp(min=1e-5).sqrt()
        batch_std = self.batch_variance.clamp(min=1e-5).sqrt()
        return codebook_std, batch_std

    def _distances(self, flatten, embed):
        """The seed's negative distances (c, n, k), differentiable."""
        if self.metric == "cosine":
            return torch.bmm(flatten, embed.transpose(1, 2))
        x_sq = flatten.pow(2).sum(-1, keepdim=True)
        e_sq = embed.pow(2).sum(-1).unsqueeze(1)
        cross = torch.bmm(flatten, embed.transpose(1, 2)) * -2
        return -(x_sq + e_sq + cross).clamp(min=0).sqrt()

    def forward(self, x, sample_codebook_temp=None, mask=None, freeze_codebook=False, need_distances=False):
        """Quantize ``x`` (b, n, d) or (c, b, n, d) against the codebook.

        Returns
        -------
        quantize : Tensor, float32, the shape of ``x``
        indices : Tensor, int64, ``x``'s shape without the last axis
        distances : Tensor of shape (c, b, n, k) or None
            The seed's negative distances; computed only when ``need_distances`` is True
            or a gumbel estimator needs them.
        """
        with no_cuda_autocast():  # the seed's codebooks run outside CUDA autocast too
            temp = self.sample_codebook_temp if sample_codebook_temp is None else sample_codebook_temp
            squeeze = x.ndim < 4
            x = x.float()
            if squeeze:
                x = x.unsqueeze(0)
            c, b, n, d = x.shape
            flatten = x.reshape(c, b * n, d)
            if mask is not None:
                mask = mask.reshape(c, -1)  # given in x's layout (vqtorch.layout.HeadLayout.mask)

            # training, affine batch statistics (eval too) and the first batch's init update state
            initted = bool(self.initted.item())  # the call's one host sync for it
            updates = self.training or self.affine_param or not initted
            with state_transaction(self, active=updates):
                quantize, indices, distances = self._step(flatten, mask, temp, freeze_codebook, need_distances,
                                                          initted)
            quantize = quantize.view(c, b, n, d)
            indices = indices.view(c, b, n)
            if distances is not None:
                distances = distances.view(c, b, n, -1)
            if squeeze:
                quantize, indices = quantize[0], indices[0]
            return quantize, indices, distances

    def _step(self, flatten, mask, temp, freeze_codebook, need_distances, initted):
        """Init, statistics, search and EMA on ``flatten`` (c, m, d): ``(quantize, indices, distances)``, flat."""
        backend = select_backend(self.backend, flatten)
        if not initted:
            self._init_embed(flatten, mask, backend)
            self._check_state(flatten, CODEBOOK_STATE)
        if self.affine_param:
            self._update_affine(flatten, mask, backend)
            # before the search sees them; only what this call wrote (a frozen or eval call writes
            # no codebook statistics, and is not refused for state it did not make)
            self._check_state(flatten, AFFINE_STATISTICS if self.training else AFFINE_STATISTICS[:2])

        embed = self.embed if self.learnable_codebook else self.embed.detach()
        if self.affine_param:
            codebook_std, batch_std = self._affine_stds()
            embed = (embed - self.codebook_mean) * (batch_std / codebook_std) + self.batch_mean

        gumbel_active = self.training and temp > 0 and (self.stochastic or self.straight_through)
        soft = distances = None
        if need_distances or gumbel_active:
            distances = self._distances(flatten, embed)
            indices, soft = gumbel_select(distances, temperature=temp, stochastic=self.stochastic,
                                          straight_through=self.straight_through, reinmax=self.reinmax,
                                          training=self.training)
        else:
            indices = backend.nearest(flatten.detach(), embed.detach(), metric=self.metric)

        quantize = gather_codes(embed, indices)
        if soft is not None:
            quantize = quantize + torch.bmm(soft, embed)

        if self.training and self.ema_update and not freeze_codebook:
            self._ema_step(flatten.detach(), indices, mask, backend)
            self._check_state(flatten, CODEBOOK_STATE)
        return quantize, indices, distances

    def _check_state(self, flatten, names):
        """Raise (inside the transaction, which then undoes the step) if the step left NaN or Inf in ``names``,
        the buffers it just wrote.

        Finite vectors still overflow float32 in the statistics: EMA sums near 3.4e38, affine
        variances of values near 1.8e19, k-means sums; the seed writes that Inf into the codebook.
        """
        broken = first_not_finite((name, getattr(self, name, None)) for name in names)
        if broken is not None:
            peak = float(flatten.detach().abs().max())
            raise ValueError(f"this batch (values up to {peak:.3g} in magnitude) overflows the codebook's float32 "
                             f"{broken} (unless {broken} held NaN or Inf already); rescale x (the codebook is "
                             "unchanged).")

    @torch.no_grad()
    def _ema_step(self, flatten, indices, mask, backend):
        data = flatten
        if self.affine_param:
            # Back from batch statistics to codebook statistics before averaging.
            codebook_std, batch_std = self._affine_stds()
            data = (flatten - self.batch_mean) * (codebook_std / batch_std) + self.codebook_mean
        counts, sums = backend.cluster_stats(data, indices, self.codebook_size, mask)
        self._reduce(counts)
        self._reduce(sums)
        backend.ema_update_(self.cluster_size.data, self.embed_avg.data, self.embed.data, counts, sums,
                            decay=self.decay, eps=self.eps, metric=self.metric)
        # Replacements come from the whole batch, masked rows included (the seed's behaviour).
        self._expire_codes(flatten, backend)


class EuclideanCodebook(_Codebook):
    """Codebook searched by euclidean distance (the seed's ``EuclideanCodebook``)."""

    metric = "euclidean"


class CosineSimCodebook(_Codebook):
    """Codebook of unit vectors searched by dot product (the seed's ``CosineSimCodebook``)."""

    metric = "cosine"

    def __init__(self, *args, **kwargs):
        if kwargs.get("affine_param"):
            raise ValueError("affine_param=True only works with the euclidean codebook: pass use_cosine_sim=False.")
        super().__init__(*args, **kwargs)

    @staticmethod
    def _initial_embed(num_codebooks, codebook_size, dim, kmeans_init):
        if kmeans_init:
            return torch.zeros(num_codebooks, codebook_size, dim)
        return F.normalize(_kaiming_uniform(num_codebooks, codebook_size, dim), dim=-1)

    def transform_input(self, x):
        """Unit-normalise inputs (differentiable), as the seed does before the search."""
        return F.normalize(x, dim=-1)
