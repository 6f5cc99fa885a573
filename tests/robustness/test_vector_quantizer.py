"""VectorQuantizer under random options, hostile inputs and random call sequences."""
import os
import tempfile
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vqcore

from .helpers import (ALLOWED, assert_finite_state, assert_same_state, beyond_float32_variance, call_checked,
                      count_case, snapshot)
from .strategies import DIM, arrays, codes_for, options

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
OPS = ["partial_fit", "partial_fit", "encode", "decode", "quantize", "save_load", "load_state_dict",
       "partial_fit_temp", "state_dict_roundtrip"]


def build(opts, seed=0):
    """A quantizer, or None when the options are refused (with ValueError/TypeError only)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return vqcore.VectorQuantizer(DIM, 8, seed=seed, **opts)
    except ALLOWED:
        return None


def run_sequence(data, vq, steps):
    """Run random calls on ``vq``, checking every property after each one."""
    with tempfile.TemporaryDirectory() as tmp:
        for op in data.draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=steps)):
            if op.startswith("partial_fit"):
                x = data.draw(arrays())
                kwargs = {}
                if op == "partial_fit_temp":
                    kwargs["sample_codebook_temp"] = data.draw(st.sampled_from([0.5, 0.0, -1.0, "a", float("nan")]))
                if vq.options.affine_param and beyond_float32_variance(x):
                    continue  # known bug: test_known_bugs.test_affine_statistics_beyond_float32_leave_the_state_alone
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    call_checked(vq, "partial_fit", x, **kwargs)
            elif op == "encode":
                x = data.draw(arrays())
                before = snapshot(vq)
                ok, codes = call_checked(vq, "encode", x)
                assert_same_state(before, snapshot(vq), "encode is inference")
                if ok:
                    assert np.array_equal(codes, vq.encode(x)), "encode twice gives other codes"
                    assert codes.min(initial=0) >= 0 and codes.max(initial=0) < vq.codebook_size
            elif op == "decode":
                shape = data.draw(st.sampled_from([(3,), (2, 3), ()])) + vq.code_shape
                call_checked(vq, "decode", codes_for(data.draw, shape, vq.codebook_size))
            elif op == "quantize":
                x = data.draw(arrays())
                if vq.options.affine_param and beyond_float32_variance(x):
                    continue  # known bug: test_known_bugs.test_affine_statistics_beyond_float32_leave_the_state_alone
                call_checked(vq, "quantize", x)
            elif op == "save_load":
                path = os.path.join(tmp, "q.npz")
                ok, _ = call_checked(vq, "save", path)
                if ok:
                    back = vqcore.VectorQuantizer.load(path)
                    assert_same_state({k: v for k, v in snapshot(vq).items() if k.startswith("state:")},
                                      {k: v for k, v in snapshot(back).items() if k.startswith("state:")},
                                      "save/load round trip")
            elif op == "load_state_dict":
                state = vq.state_dict()
                key = data.draw(st.sampled_from(sorted(state)))
                damage = data.draw(st.sampled_from(["drop", "huge", "nan", "negative", "flag", "shape", "none"]))
                if damage == "drop":
                    del state[key]
                elif damage == "huge":
                    state[key] = np.full(state[key].shape, 1e39)
                elif damage == "nan":
                    state[key] = np.full(state[key].shape, np.nan, np.float32)
                elif damage == "negative":
                    state[key] = state[key] - 1e3
                elif damage == "flag":
                    state[key] = state[key] + 0.5
                elif damage == "shape":
                    state[key] = state[key][..., :1]
                call_checked(vq, "load_state_dict", state, strict=data.draw(st.booleans()))
            elif op == "state_dict_roundtrip":
                before = snapshot(vq)
                vq.load_state_dict(vq.state_dict())
                assert_same_state({k: v for k, v in before.items() if k.startswith("state:")},
                                  {k: v for k, v in snapshot(vq).items() if k.startswith("state:")}, "round trip")
            assert_finite_state(vq, op)


def sequence_property(data, steps):
    count_case()
    vq = build(data.draw(options()), seed=data.draw(st.integers(0, 3)))
    if vq is not None:
        run_sequence(data, vq, steps)


@FAST
@given(st.data())
def test_random_call_sequences(data):
    sequence_property(data, steps=6)


@pytest.mark.slow
@LONG
@given(st.data())
def test_random_call_sequences_long(data):
    sequence_property(data, steps=20)


@FAST
@given(options())
def test_options_either_build_or_raise_value_or_type_error(opts):
    count_case()
    vq = build(opts)
    if vq is not None:
        assert_finite_state(vq, "fresh quantizer")


@pytest.mark.parametrize("opts", [{"eps": float("nan")}, {"eps": float("inf")}, {"eps": 0.0},
                                  {"reset_cluster_size": float("nan")}, {"reset_cluster_size": -1.0},
                                  {"threshold_ema_dead_code": float("inf")},
                                  {"affine_param_batch_decay": 2.0}, {"affine_param_codebook_decay": -5.0}])
def test_poisoning_options_are_refused_naming_the_option(opts):
    (name, _), = opts.items()
    with pytest.raises(ValueError, match=name):
        vqcore.VectorQuantizer(DIM, 8, **opts)


def test_half_a_projection_with_strict_false_changes_nothing():
    vq = vqcore.VectorQuantizer(DIM, 8, codebook_dim=2, seed=0)
    state = vq.state_dict()
    for key in ("project_in.weight", "project_out.bias"):
        ok, _ = call_checked(vq, "load_state_dict", {key: state[key] + 1}, strict=False)
        assert not ok


def test_half_the_batch_statistics_changes_nothing():
    vq = vqcore.VectorQuantizer(DIM, 8, affine_param=True, seed=0)
    donor = vqcore.VectorQuantizer(DIM, 8, affine_param=True, seed=1)
    donor.partial_fit(np.random.default_rng(0).standard_normal((32, DIM)).astype(np.float32))
    state = donor.state_dict()
    del state["_codebook.batch_variance"]
    ok, _ = call_checked(vq, "load_state_dict", state, strict=False)
    assert not ok


@pytest.mark.parametrize("key,value,words", [
    ("_codebook.embed", 1e39, "float32 range"), ("_codebook.embed_avg", -1e39, "float32 range"),
    ("_codebook.cluster_size", -1.0, "negative"), ("_codebook.initted", 7.5, "0 or 1"),
    ("_codebook.batch_variance", -0.5, "negative"), ("_codebook.codebook_variance", -0.5, "negative"),
    ("_codebook.codebook_mean_needs_init", 2.0, "0 or 1"),
])
def test_load_state_dict_refuses_unusable_values(key, value, words):
    vq = vqcore.VectorQuantizer(DIM, 8, affine_param=True, seed=0)
    vq.partial_fit(np.random.default_rng(0).standard_normal((32, DIM)).astype(np.float32))
    state = {k: v.astype(np.float64) for k, v in vq.state_dict().items()}
    state[key].flat[0] = value
    fresh = vqcore.VectorQuantizer(DIM, 8, affine_param=True, seed=3)
    before = snapshot(fresh)
    with pytest.raises(ValueError, match=words):
        fresh.load_state_dict(state)
    assert_same_state(before, snapshot(fresh))
    state[key].flat[0] = vq.state_dict()[key].flat[0]  # the same dict with the value restored loads
    fresh.load_state_dict(state)


def test_load_refuses_a_file_whose_arrays_do_not_match_its_configuration(tmp_path):
    vq = vqcore.VectorQuantizer(DIM, 8, seed=0)
    state = vq.state_dict()
    state["_codebook.embed"] = np.zeros((1, 9, DIM), np.float32)
    vqcore.state.write_npz(tmp_path / "q.npz", kind="VectorQuantizer", config=vq.config, state=state)
    with pytest.raises(ValueError, match="declares shape"):
        vqcore.VectorQuantizer.load(tmp_path / "q.npz")


def test_load_refuses_a_stored_configuration_with_a_clear_value_error(tmp_path):
    vq = vqcore.VectorQuantizer(DIM, 8, seed=0)
    config = dict(vq.config, eps=-1.0)
    vqcore.state.write_npz(tmp_path / "q.npz", kind="VectorQuantizer", config=config, state=vq.state_dict())
    with pytest.raises(ValueError, match="configuration is refused.*eps"):
        vqcore.VectorQuantizer.load(tmp_path / "q.npz")
