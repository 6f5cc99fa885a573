"""Bugs the property tests found in files outside this suite's owner's; each test fails until fixed."""
import warnings

import numpy as np
import pytest

import vqcore

from .helpers import assert_finite_state, call_checked

DIM = 4


@pytest.mark.xfail(strict=True, reason="bug: ResidualQuantizer/ProductQuantizer.partial_fit accept a serial batch "
                   "of 0 rows and divide by zero counts: every code becomes +-inf (VectorQuantizer refuses it)")
@pytest.mark.parametrize("kind", ["residual", "product"])
def test_empty_serial_batch_is_refused_by_stacks(kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = (vqcore.ResidualQuantizer(DIM, 8, num_quantizers=2, seed=0) if kind == "residual"
             else vqcore.ProductQuantizer(DIM, 8, num_subspaces=2, seed=0))
        ok, _ = call_checked(q, "partial_fit", np.zeros((0, DIM), np.float32))
    assert not ok
    assert_finite_state(q)


@pytest.mark.xfail(strict=True, reason="bug: affine batch variance is computed in float64 and cast to float32 "
                   "without a range check (vqcore/ema.py batch_stats): rows near 1e20 give batch_variance=inf, "
                   "the search then refuses the moved rows ('x contains NaN or Inf') after the affine statistics "
                   "changed")
def test_affine_statistics_beyond_float32_leave_the_state_alone():
    x = np.array([[1.3e19, -1.3e19, 6.4e19, 1.0e19], [-5.4e19, 3.6e19, 1.3e20, 9.5e19]], np.float32)
    vq = vqcore.VectorQuantizer(DIM, 8, affine_param=True, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        call_checked(vq, "partial_fit", x)
    assert_finite_state(vq)
