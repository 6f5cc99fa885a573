"""Input checks, done once at the public edge; kernels trust their inputs."""
from __future__ import annotations

import numbers

import numpy as np

from .kernels.checks import all_finite

FLOAT_DTYPES = (np.float32, np.float64)
METRICS = ("euclidean", "cosine")


def float_array(name, value, *, ndims=(2, 3), dtype=None, check_finite=True):
    """Return ``value`` as a C-contiguous float32/float64 array, or raise.

    Parameters
    ----------
    name : str
        The argument's name, used in error messages.
    value : array_like
        The user's input.
    ndims : tuple of int
        Accepted numbers of dimensions.
    dtype : numpy dtype, optional
        Cast to this float dtype (after checking the input is floating point).
    check_finite : bool
        Scan for NaN/Inf.  Hot paths that can detect them from their results
        more cheaply pass False and call :func:`raise_not_finite` themselves.
    """
    try:
        arr = np.asarray(value)
    except Exception as exc:  # e.g. ragged lists
        raise TypeError(f"{name} must be an array of floats; got {type(value).__name__} ({exc})") from None
    if arr.dtype.kind != "f" or arr.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} has dtype {arr.dtype}; vqcore works on float32 or float64 — "
            f"convert with {name}.astype(np.float32)"
        )
    if arr.ndim not in ndims:
        shapes = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name} must be {shapes}; got shape {arr.shape}")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    arr = np.ascontiguousarray(arr)
    if check_finite and arr.size and not all_finite(arr.reshape(-1)):
        raise_not_finite(name, arr)
    return arr


def raise_not_finite(name, arr):
    """Raise the error for a result that went non-finite: bad input, or overflow."""
    if not all_finite(arr.reshape(-1)):
        raise ValueError(f"{name} contains NaN or Inf; remove or impute those values first")
    raise ValueError(
        f"{name} is finite but its products overflow {arr.dtype} (max |value| "
        f"{np.abs(arr).max():.3g}); rescale the data or use float64"
    )


def choice(name, value, allowed):
    """Check that an option is one of ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; use one of {allowed}")
    return value


def metric(value):
    """Check a metric name."""
    return choice("metric", value, METRICS)


def positive_int(name, value, *, minimum=1):
    """Check an integer option (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return int(value)


def rng(value):
    """Turn a seed, a Generator or None into a ``numpy.random.Generator``."""
    if isinstance(value, np.random.Generator):
        return value
    if value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
        return np.random.default_rng(value)
    if isinstance(value, np.random.SeedSequence):
        return np.random.default_rng(value)
    raise TypeError(f"seed/rng must be None, an int or a numpy Generator; got {value!r}")
