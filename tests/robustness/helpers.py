"""Helpers of the robustness suite: state snapshots, the allowed-errors rule, a case counter."""
from __future__ import annotations

import collections
import contextlib
import os

import numpy as np

#: Generated cases per property (test name -> count), printed by conftest at the end.
CASES = collections.Counter()

#: The only exceptions a public call may raise on bad input.
ALLOWED = (ValueError, TypeError)


def count_case():
    """Count one generated case for the running test (by its pytest node name)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "unknown").split(" ")[0].split("::")[-1]
    CASES[test] += 1


def _arrays(obj, prefix, out, seen, depth):
    """Every numpy array (and RNG state) reachable from ``obj``'s attributes, by path."""
    if id(obj) in seen or depth > 6:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        out[prefix] = obj.copy()
    elif isinstance(obj, np.random.Generator):
        out[prefix + "#rng"] = repr(obj.bit_generator.state)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _arrays(value, f"{prefix}[{key!r}]", out, seen, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _arrays(value, f"{prefix}[{i}]", out, seen, depth + 1)
    elif type(obj).__module__.split(".")[0] in ("vqcore", "vqtorch") and hasattr(obj, "__dict__"):
        for key, value in vars(obj).items():
            _arrays(value, f"{prefix}.{key}", out, seen, depth + 1)


def snapshot(obj):
    """Copies of the whole state of a quantizer: ``state_dict()`` and every array attribute.

    vqcore objects: their state dict, every ndarray reachable through their
    attributes (codebooks, projections, affine statistics) and RNG states.
    torch modules: their state dict, every parameter and buffer.
    """
    out = {}
    if hasattr(obj, "named_buffers"):  # a torch module
        for name, tensor in list(obj.state_dict().items()) + list(obj.named_parameters()) + list(obj.named_buffers()):
            out["torch:" + name] = tensor.detach().cpu().clone().numpy()
        return out
    for key, value in obj.state_dict().items():
        out["state:" + key] = np.array(value, copy=True)
    _arrays(obj, "attr", out, set(), 0)
    return out


def assert_same_state(before, after, what=""):
    """Every array of ``before`` equals ``after`` bit for bit (NaN equal to NaN)."""
    assert before.keys() == after.keys(), f"{what}: state keys changed: {set(before) ^ set(after)}"
    for key, old in before.items():
        new = after[key]
        if isinstance(old, str):
            assert old == new, f"{what}: {key} changed"
            continue
        assert old.shape == new.shape and old.dtype == new.dtype, f"{what}: {key} changed shape or dtype"
        assert old.tobytes() == new.tobytes(), f"{what}: {key} changed"


def call_checked(obj, method, *args, **kwargs):
    """Call ``obj.method``; a failure must be ValueError/TypeError and leave ``obj``'s state as it was.

    Returns ``(ok, result)``.  Any other exception (AssertionError,
    RuntimeError, IndexError, ...) propagates and fails the test.
    """
    before = snapshot(obj)
    try:
        return True, getattr(obj, method)(*args, **kwargs)
    except ALLOWED:
        assert_same_state(before, snapshot(obj), f"{type(obj).__name__}.{method} raised")
        return False, None


def assert_finite_state(obj, what=""):
    """No NaN or Inf in any float array of the state."""
    for key, value in snapshot(obj).items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), f"{what}: {key} holds NaN or Inf"


@contextlib.contextmanager
def allowed_errors():
    """A block that may raise ValueError/TypeError only (anything else fails the test)."""
    with contextlib.suppress(*ALLOWED):
        yield


def beyond_float32_variance(x):
    """Rows whose squares leave the float32 range (|x| > 1e18)."""
    try:
        values = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return values.size > 0 and np.nanmax(np.abs(values), initial=0) > 1e18
