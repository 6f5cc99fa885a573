"""Validated options of :class:`vqtorch.VectorQuantize`.

The seed checks its options with ``assert`` (or not at all); here every clash
is a ``ValueError``/``TypeError`` raised at construction, naming the option and
the fix.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import Callable, Optional

__all__ = ["VQConfig", "BACKENDS"]

BACKENDS = ("auto", "vqcore", "torch")


def _check_int(name, value, *, minimum, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}.")


def _check_real(name, value, *, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{name}={value} must lie in {bounds}.")


@dataclass(frozen=True)
class VQConfig:
    """Every constructor argument of the seed's ``VectorQuantize`` plus ``backend``.

    Defaults equal the seed's (vector-quantize-pytorch 1.14.5).  Build it with
    keyword arguments; ``__post_init__`` validates the combination.
    """

    dim: int
    codebook_size: int
    codebook_dim: Optional[int] = None
    heads: int = 1
    separate_codebook_per_head: bool = False
    decay: float = 0.8
    eps: float = 1e-5
    freeze_codebook: bool = False
    kmeans_init: bool = False
    kmeans_iters: int = 10
    sync_kmeans: bool = True
    use_cosine_sim: bool = False
    threshold_ema_dead_code: float = 0
    channel_last: bool = True
    accept_image_fmap: bool = False
    commitment_weight: float = 1.0
    commitment_use_cross_entropy_loss: bool = False
    orthogonal_reg_weight: float = 0.0
    orthogonal_reg_active_codes_only: bool = False
    orthogonal_reg_max_codes: Optional[int] = None
    stochastic_sample_codes: bool = False
    sample_codebook_temp: float = 1.0
    straight_through: bool = False
    reinmax: bool = False
    sync_codebook: Optional[bool] = None
    sync_affine_param: bool = False
    ema_update: bool = True
    learnable_codebook: bool = False
    in_place_codebook_optimizer: Optional[Callable] = None
    affine_param: bool = False
    affine_param_batch_decay: float = 0.99
    affine_param_codebook_decay: float = 0.9
    sync_update_v: float = 0.0
    backend: str = "auto"

    def __post_init__(self):
        _check_int("dim", self.dim, minimum=1)
        _check_int("codebook_size", self.codebook_size, minimum=1)
        _check_int("codebook_dim", self.codebook_dim, minimum=1, allow_none=True)
        _check_int("heads", self.heads, minimum=1)
        _check_int("kmeans_iters", self.kmeans_iters, minimum=0)
        _check_int("orthogonal_reg_max_codes", self.orthogonal_reg_max_codes, minimum=1, allow_none=True)
        _check_real("decay", self.decay, low=0.0, high=1.0)
        _check_real("eps", self.eps, low=0.0)
        _check_real("threshold_ema_dead_code", self.threshold_ema_dead_code, low=0.0)
        _check_real("commitment_weight", self.commitment_weight, low=0.0)
        _check_real("orthogonal_reg_weight", self.orthogonal_reg_weight, low=0.0)
        _check_real("sample_codebook_temp", self.sample_codebook_temp)
        _check_real("affine_param_batch_decay", self.affine_param_batch_decay, low=0.0, high=1.0)
        _check_real("affine_param_codebook_decay", self.affine_param_codebook_decay, low=0.0, high=1.0)
        _check_real("sync_update_v", self.sync_update_v, low=0.0, high=1.0)

        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r} is not one of {BACKENDS}.")
        if self.in_place_codebook_optimizer is not None and not callable(self.in_place_codebook_optimizer):
            raise TypeError(
                "in_place_codebook_optimizer must be a callable taking parameters "
                f"(e.g. functools.partial(torch.optim.SGD, lr=0.1)), got {self.in_place_codebook_optimizer!r}."
            )
        if self.ema_update and self.learnable_codebook:
            raise ValueError(
                "learnable_codebook=True is not compatible with ema_update=True: "
                "pass ema_update=False to train the codebook by gradients."
            )
        if self.sync_update_v > 0 and not self.learnable_codebook:
            raise ValueError(
                f"sync_update_v={self.sync_update_v} needs learnable_codebook=True (and ema_update=False)."
            )
        if self.affine_param and self.use_cosine_sim:
            raise ValueError(
                "affine_param=True only works with the euclidean codebook: pass use_cosine_sim=False "
                "or affine_param=False."
            )
        if self.reinmax and not self.straight_through:
            raise ValueError("reinmax=True needs straight_through=True (reinmax refines the straight-through gumbel).")
        if (self.orthogonal_reg_weight > 0 and self.orthogonal_reg_active_codes_only
                and self.heads > 1 and self.separate_codebook_per_head):
            raise ValueError(
                "orthogonal_reg_active_codes_only=True is not supported with heads > 1 and "
                "separate_codebook_per_head=True: pass orthogonal_reg_active_codes_only=False."
            )

    @property
    def num_codebooks(self) -> int:
        """Number of codebook sets held by the codebook module."""
        return self.heads if self.separate_codebook_per_head else 1

    @property
    def effective_codebook_dim(self) -> int:
        """Dimension of one code (``codebook_dim`` or ``dim``)."""
        return self.dim if self.codebook_dim is None else self.codebook_dim

    @property
    def codebook_is_learnable(self) -> bool:
        """The seed makes ``embed`` a Parameter for learnable codebooks and orthogonal regularisation."""
        return self.learnable_codebook or self.orthogonal_reg_weight > 0

    @classmethod
    def option_names(cls):
        """Names of all options, in constructor order."""
        return [f.name for f in fields(cls)]
