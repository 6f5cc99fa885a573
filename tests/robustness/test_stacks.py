"""ResidualQuantizer and ProductQuantizer under hostile inputs and random call sequences."""
import os
import tempfile
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vqcore

from .helpers import ALLOWED, assert_finite_state, assert_same_state, call_checked, count_case, snapshot
from .strategies import DIM, arrays, codes_for, options

FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
CODEBOOK = ("decay", "eps", "threshold_ema_dead_code", "reset_cluster_size", "kmeans_init", "kmeans_iters",
            "stochastic_sample_codes", "sample_codebook_temp", "ema_update")


def build(kind, opts, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if kind == "residual":
                return vqcore.ResidualQuantizer(DIM, 8, num_quantizers=2, seed=seed, **opts)
            return vqcore.ProductQuantizer(DIM, 8, num_subspaces=2, seed=seed, **opts)
        except ALLOWED:
            return None


def state_only(snap):
    return {k: v for k, v in snap.items() if k.startswith("state:")}


def stack_property(data, steps):
    count_case()
    kind = data.draw(st.sampled_from(["residual", "product"]))
    q = build(kind, data.draw(options(names=CODEBOOK)), data.draw(st.integers(0, 3)))
    if q is None:
        return
    columns = 2
    ops = st.lists(st.sampled_from(["partial_fit", "encode", "decode", "save_load", "fit"]), min_size=1,
                   max_size=steps)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for op in data.draw(ops):
            if op == "partial_fit":
                x = data.draw(arrays())
                if np.size(x) == 0:  # known bug, see test_known_bugs.test_empty_serial_batch_is_refused_by_stacks
                    continue
                call_checked(q, "partial_fit", x)
            elif op == "fit":
                x = data.draw(arrays(max_rows=40))
                call_checked(q, "fit", x, iters=2, progress=False)
            elif op == "encode":
                x = data.draw(arrays())
                before = snapshot(q)
                ok, codes = call_checked(q, "encode", x)
                assert_same_state(before, snapshot(q), "encode is inference")
                if ok:
                    assert np.array_equal(codes, q.encode(x))
            elif op == "decode":
                call_checked(q, "decode", codes_for(data.draw, (3, columns), q.codebook_size))
            elif op == "save_load":
                path = os.path.join(tmp, "q.npz")
                ok, _ = call_checked(q, "save", path)
                if ok:
                    back = type(q).load(path)
                    assert_same_state(state_only(snapshot(q)), state_only(snapshot(back)), "save/load")
            assert_finite_state(q, f"{kind} {op}")


@FAST
@given(st.data())
def test_stack_call_sequences(data):
    stack_property(data, steps=5)


@pytest.mark.slow
@LONG
@given(st.data())
def test_stack_call_sequences_long(data):
    stack_property(data, steps=15)
