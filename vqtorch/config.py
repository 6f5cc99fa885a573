"""Validated options of :class:`vqtorch.VectorQuantize`: vqcore's option table plus the layer's own.

The seed checks its options with ``assert`` (or not at all); here every clash
is a ``ValueError``/``TypeError`` raised at construction, naming the option and
the fix, with the same rules and messages as ``vqcore.VectorQuantizer``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from vqcore.options import VQOptions, flag, integer, option, real

__all__ = ["VQConfig", "BACKENDS"]

BACKENDS = ("auto", "vqcore", "torch")


def _backend(name, value):
    if value not in BACKENDS:
        raise ValueError(f"{name}={value!r} is not valid: it must be one of {BACKENDS}")
    return value


def _optional_flag(name, value):
    return None if value is None else flag(name, value)


def _optional_callable(name, value):
    if value is not None and not callable(value):
        raise TypeError(
            f"{name} must be a callable taking parameters (e.g. functools.partial(torch.optim.SGD, lr=0.1)), "
            f"got {value!r}."
        )
    return value


@dataclass(frozen=True)
class VQConfig(VQOptions):
    """Every constructor argument of the seed's ``VectorQuantize`` plus ``backend``.

    The codebook options and their checks come from :class:`vqcore.options.VQOptions`;
    the fields below are the layer's own (losses, estimators, layouts, devices).
    Defaults equal the seed's (vector-quantize-pytorch 1.14.5).
    """

    freeze_codebook: bool = option(False, flag, "never update the codebook")
    channel_last: bool = option(True, flag, "features on the last axis (else (b, d, n))")
    accept_image_fmap: bool = option(False, flag, "take (b, c, h, w) feature maps")
    commitment_weight: float = option(1.0, real(0.0), "weight of the commitment loss")
    commitment_use_cross_entropy_loss: bool = option(False, flag, "commitment as cross entropy of the codes")
    orthogonal_reg_weight: float = option(0.0, real(0.0), "weight of the orthogonal regularisation")
    orthogonal_reg_active_codes_only: bool = option(False, flag, "regularise only the codes in use")
    orthogonal_reg_max_codes: Optional[int] = option(None, integer(1, optional=True),
                                                     "at most this many random codes in the regularisation")
    straight_through: bool = option(False, flag, "straight-through gumbel estimator")
    reinmax: bool = option(False, flag, "ReinMax refinement of the straight-through estimator")
    sync_codebook: Optional[bool] = option(None, _optional_flag,
                                           "all-reduce codebook statistics over torch.distributed ranks "
                                           "(default: when a process group of more than one rank exists)")
    learnable_codebook: bool = option(False, flag, "train the codebook by gradients")
    in_place_codebook_optimizer: Optional[Callable] = option(None, _optional_callable,
                                                             "optimizer factory stepping the codebook in forward")
    sync_update_v: float = option(0.0, real(0.0, 1.0), "the synchronised update rule's v")
    backend: str = option("auto", _backend, "where the codebook work runs: 'auto', 'vqcore' or 'torch'")

    def _check_combinations(self):
        super()._check_combinations()
        if isinstance(self.kmeans_init, str):
            raise ValueError(f"kmeans_init={self.kmeans_init!r} is not valid for the layer: it takes True or False, "
                             "as the seed's (vqcore.VectorQuantizer offers 'k-means++')")
        if self.ema_update and self.learnable_codebook:
            raise ValueError(
                "learnable_codebook=True is not compatible with ema_update=True: "
                "pass ema_update=False to train the codebook by gradients."
            )
        if self.sync_update_v > 0 and not self.learnable_codebook:
            raise ValueError(
                f"sync_update_v={self.sync_update_v} needs learnable_codebook=True (and ema_update=False)."
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
    def codebook_is_learnable(self) -> bool:
        """The seed makes ``embed`` a Parameter for learnable codebooks and orthogonal regularisation."""
        return self.learnable_codebook or self.orthogonal_reg_weight > 0
