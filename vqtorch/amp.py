"""Autocast scopes shared by the layers: where the seed turns CUDA autocast off, and where exactness needs float32."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["no_cuda_autocast", "no_autocast"]

_HAS_CUDA = torch.cuda.is_available()


def no_cuda_autocast():
    """The seed's ``@autocast(enabled=False)``: CUDA autocast off (CPU autocast untouched)."""
    if _HAS_CUDA:
        return torch.autocast("cuda", enabled=False)
    return contextlib.nullcontext()


def no_autocast(device: torch.device):
    """Autocast off on ``device``'s type: scores whose error bound assumes float32 arithmetic.

    Under autocast ``addmm`` would run in bfloat16/float16, ~2**13 times the rounding the
    certified search's bound allows for.
    """
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
