"""vqtorch VectorQuantize and ResidualVQ under random options, hostile inputs and call sequences."""
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
import vqtorch  # noqa: E402

from .helpers import (ALLOWED, assert_finite_state, beyond_float32_variance, call_checked,  # noqa: E402
                      count_case, snapshot)
from .strategies import DIM, arrays, options  # noqa: E402

FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
TORCH_OPTIONS = ("decay", "eps", "threshold_ema_dead_code", "kmeans_init", "kmeans_iters", "affine_param",
                 "use_cosine_sim", "heads", "separate_codebook_per_head", "stochastic_sample_codes",
                 "sample_codebook_temp", "ema_update")


def build(kind, opts, backend):
    torch.manual_seed(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "vq":
                return vqtorch.VectorQuantize(DIM, 8, backend=backend, **opts)
            opts = {k: v for k, v in opts.items() if k not in ("heads", "separate_codebook_per_head")}
            return vqtorch.ResidualVQ(dim=DIM, num_quantizers=2, codebook_size=8, **opts)
    except ALLOWED:
        return None


def as_tensor(x):
    """The drawn input as a (1, n, dim)-ish tensor, or the raw object when torch cannot take it."""
    try:
        t = torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError):
        return x
    return t[None] if t.ndim == 2 else t


def layer_affine(layer):
    return any(name.endswith("batch_mean") or name.endswith("codebook_mean") for name, _ in layer.named_buffers())


def largest_state(layer):
    return max((float(np.abs(v).max(initial=0)) for v in snapshot(layer).values()), default=0.0)


def layer_property(data, steps):
    count_case()
    kind = data.draw(st.sampled_from(["vq", "residual"]))
    layer = build(kind, data.draw(options(names=TORCH_OPTIONS)), data.draw(st.sampled_from(["vqcore", "torch"])))
    if layer is None:
        return
    for _ in range(data.draw(st.integers(1, steps))):
        training = data.draw(st.booleans())
        layer.train(training)
        x = as_tensor(data.draw(arrays()))
        if hasattr(x, "numel") and x.numel() == 0:
            continue  # known bugs: test_known_bugs.test_torch_*_empty_batch_*
        if kind == "residual" and hasattr(x, "dtype") and x.dtype == torch.float16:
            continue  # known bug: test_known_bugs.test_residual_vq_in_float16_leaves_the_state_alone
        projected = any(name.startswith("project_in") for name in layer.state_dict())
        if projected and hasattr(x, "dtype") and x.dtype in (torch.float64, torch.float16):
            continue  # known bug: test_known_bugs.test_torch_projection_with_float64_input_is_not_a_runtime_error
        if layer_affine(layer) and beyond_float32_variance(x):
            continue  # known bug: test_known_bugs.test_affine_statistics_beyond_float32_leave_the_state_alone
        kwargs = {}
        if kind == "vq" and data.draw(st.booleans()) and hasattr(x, "shape") and x.ndim == 3:
            # a mask, sometimes all False or of the wrong shape
            n = x.shape[1] + data.draw(st.sampled_from([0, 0, 1]))
            kwargs["mask"] = torch.tensor([data.draw(st.booleans()) for _ in range(n)])[None]
            if not training and not kwargs["mask"].any():
                continue  # known bug: test_known_bugs.test_torch_eval_kmeans_on_an_empty_batch_raises_value_error
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ok, out = call_checked(layer, "__call__", x, **kwargs)
        if ok and training and x.abs().max() < 1e15 and largest_state(layer) < 1e15:
            # (squared errors of larger inputs or codes overflow float32)
            loss = out[-1]
            assert torch.all(torch.isfinite(loss)), "finite input gave a non-finite loss"
        assert_finite_state(layer, f"{kind} forward")
        if not training and ok and not layer_affine(layer):
            # eval of the same input twice gives the same codes (affine eval updates batch statistics, as the seed)
            again = layer(x, **kwargs)
            assert torch.equal(out[1], again[1])


@FAST
@given(st.data())
def test_layer_call_sequences(data):
    layer_property(data, steps=4)


@pytest.mark.slow
@LONG
@given(st.data())
def test_layer_call_sequences_long(data):
    layer_property(data, steps=10)


@FAST
@given(st.data())
def test_wrong_indices_leave_the_layer_alone(data):
    count_case()
    layer = build("vq", {}, data.draw(st.sampled_from(["vqcore", "torch"])))
    x = torch.randn(1, 6, DIM)
    shape = data.draw(st.sampled_from([(1, 5), (1, 7), (6,), (1, 6, 1), (1, 6)]))
    values = data.draw(st.sampled_from([0, 7, 8, -1, -2]))
    indices = torch.full(shape, values, dtype=torch.long)
    call_checked(layer, "__call__", x, indices=indices)
    assert_finite_state(layer)


@pytest.mark.parametrize("backend", ["vqcore", "torch"])
def test_state_dict_round_trip_is_exact(backend):
    layer = build("vq", {"affine_param": True, "kmeans_init": True}, backend)
    layer(torch.randn(2, 16, DIM))
    other = build("vq", {"affine_param": True, "kmeans_init": True}, backend)
    other.load_state_dict(layer.state_dict())
    for (name, a), b in zip(snapshot(layer).items(), snapshot(other).values()):
        assert a.tobytes() == b.tobytes(), name
