"""Cheap whole-array checks."""
import numba
import numpy as np
from numba import prange


# Compiled without fast-math on purpose: fast-math may fold ``v - v`` to 0,
# which is exactly the NaN/Inf signal this kernel relies on.
@numba.njit(parallel=True, cache=True, nogil=True)
def all_finite(flat):  # IN flat: 1-D float array
    """True when no element is NaN or +-Inf (one parallel pass, no temporaries)."""
    n = flat.shape[0]
    chunk = 1 << 16
    nchunks = (n + chunk - 1) // chunk
    acc = 0.0
    for c in prange(nchunks):
        s = flat.dtype.type(0.0)
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            # v - v is 0 for finite v and NaN for NaN/Inf; NaN then sticks.
            s += flat[i] - flat[i]
        acc += s
    return acc == 0.0
