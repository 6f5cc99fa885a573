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
    if torch.isfinite(_sum(x)):
        return True
    return bool(torch.isfinite(x).all())


def first_not_finite(named):
    """The name of the first tensor of ``named`` ((name, tensor) pairs) holding NaN or Inf, or None.

    One host sync for all of them: their sums, stacked (as in :func:`all_finite`, a sum is
    non-finite whenever an element is; only a tensor whose sum overflows is checked again
    element by element; ``isfinite(x).all()`` costs 30 times a sum on a CPU codebook).
    """
    named = [(name, tensor.detach()) for name, tensor in named if tensor is not None]
    if not named:
        return None
    sums = torch.stack([_sum(tensor) for _, tensor in named])
    for (name, tensor), finite in zip(named, torch.isfinite(sums).tolist()):
        if not finite and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _sum(x):
    """The sum the checks read, in float32 at least (a half-precision sum overflows from finite values)."""
    return x.sum(dtype=torch.promote_types(x.dtype, torch.float32))
