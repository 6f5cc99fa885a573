"""Finiteness checks shared by the layers: input refused before it reaches a codebook, state checked before it is kept."""
from __future__ import annotations

import torch


def all_finite(x):
    """True when ``x`` holds no NaN or Inf.

    A sum is NaN or Inf whenever an element is, and costs a fortieth of
    ``isfinite(x).all()`` here (no boolean tensor); only a sum that overflows
    from finite values needs the element-wise check.
    """
    x = x.detach()
    if torch.isfinite(x.sum(dtype=torch.promote_types(x.dtype, torch.float32))):
        return True
    return bool(torch.isfinite(x).all())


def first_not_finite(named):
    """The name of the first tensor of ``named`` ((name, tensor) pairs) holding NaN or Inf, or None.

    One host sync for all of them (a flag per tensor, stacked), not one per tensor.
    """
    named = [(name, tensor) for name, tensor in named if tensor is not None]
    if not named:
        return None
    flags = torch.stack([torch.isfinite(tensor.detach()).all() for _, tensor in named]).tolist()
    return next((name for (name, _), finite in zip(named, flags) if not finite), None)
