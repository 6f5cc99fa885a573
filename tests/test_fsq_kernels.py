"""vqcore.kernels.fsq_bound: FSQ's one-pass rounding and bound gradient against the unfused ops, bit for bit."""
import numpy as np
import pytest
import torch

from tests.naive import fsq_levels_and_index
from vqcore.kernels.fsq_bound import NAN_INDEX, fsq_bound_grad, fsq_round
from vqtorch.fsq import _LevelConstants, tanh_backward_fuses


def _constants(levels, tiles, dtype):
    constants = _LevelConstants(levels)
    return constants, constants.fused(tiles, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("levels,index_dtype", [([8, 5, 5, 5], np.float32), ([7, 6, 5, 4, 3], np.float64),
                                                 ([2, 2, 2], np.float32), ([4096, 4096, 3], np.float64)])
def test_round_matches_the_unfused_steps(dtype, levels, index_dtype):
    d, tiles, rows = len(levels), 16, 9
    constants, (_, half_l, offset, half_width, _) = _constants(levels, tiles, dtype)
    rng = np.random.default_rng(len(levels))
    t = np.tanh(rng.standard_normal((rows, tiles * d)) * 2).astype(dtype)
    t[0, :d] = 1.0   # the top level
    t[1, :d] = -1.0  # the bottom one
    t[2, :d] = 0.0
    codes = np.empty_like(t)
    indices = np.empty((rows, tiles), dtype=np.int32)
    fsq_round(t, half_l, offset, half_width, constants.radix, int(constants.index_base),
              np.empty(tiles, dtype=index_dtype), codes, indices)
    rounded, index = fsq_levels_and_index(t, half_l[:d], offset[:d], levels)
    assert np.array_equal(codes, rounded / half_width)  # numpy's divide: the same rounding
    assert np.array_equal(indices.ravel(), index)
    if max(levels) < 1000:  # larger levels overshoot: the bound's 1e-3 margin exceeds half a step
        assert indices[0, 0] == np.prod(levels) - 1 and indices[1, 0] == 0


def test_round_gives_nan_codes_a_fixed_index():
    constants, (_, half_l, offset, half_width, _) = _constants([8, 5, 5, 5], 2, np.float32)
    t = np.zeros((1, 8), dtype=np.float32)
    t[0, 5] = np.nan
    codes, indices = np.empty_like(t), np.empty((1, 2), dtype=np.int32)
    fsq_round(t, half_l, offset, half_width, constants.radix, int(constants.index_base),
              np.empty(2, dtype=np.float32), codes, indices)
    assert indices[0, 1] == NAN_INDEX and np.isnan(codes[0, 5])
    assert indices[0, 0] == constants.index_base  # the all-zero code, untouched by its neighbour


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("broadcast", [False, True])
def test_bound_grad_unfused_form_is_numpys(dtype, broadcast):
    _, (_, half_l, _, half_width, _) = _constants([8, 5, 5, 5], 8, dtype)
    rng = np.random.default_rng(1)
    t = np.tanh(rng.standard_normal((5, 32))).astype(dtype)
    grad = rng.standard_normal((1 if broadcast else 5, 32)).astype(dtype)
    out = np.empty_like(t)
    fsq_bound_grad(grad, t, half_l, half_width, False, out)
    one = dtype(1)
    assert np.array_equal(out, ((grad / half_width) * half_l) * (one - t * t))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bound_grad_in_the_form_torch_uses_is_torchs(dtype):
    """The probed form reproduces torch's tanh_backward on values other than the probe's,
    in vector bodies and scalar tails (widths 1 to 19)."""
    fused = tanh_backward_fuses(dtype)
    if fused is None:
        pytest.skip("torch's tanh_backward matches neither form here: the layer keeps torch's op")
    rng = np.random.default_rng(7)
    numpy_dtype = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
    for width in [*range(1, 20), 4099]:
        t = np.tanh(rng.standard_normal((3, width))).astype(numpy_dtype)
        grad = rng.standard_normal((3, width)).astype(numpy_dtype)
        ones = np.ones(width, dtype=numpy_dtype)
        out = np.empty_like(t)
        fsq_bound_grad(grad, t, ones, ones, fused, out)
        expected = torch.ops.aten.tanh_backward(torch.from_numpy(grad), torch.from_numpy(t)).numpy()
        assert np.array_equal(out, expected), width


def test_probe_tells_the_forms_apart():
    """The two forms differ on the probe's values, so a match names one of them."""
    rng = np.random.default_rng(0)
    grad = rng.standard_normal((1, 1027)).astype(np.float32)
    t = np.tanh(rng.standard_normal((1, 1027))).astype(np.float32)
    ones = np.ones(1027, dtype=np.float32)
    forms = [np.empty_like(t), np.empty_like(t)]
    for fused, out in zip((True, False), forms):
        fsq_bound_grad(grad, t, ones, ones, fused, out)
    assert not np.array_equal(*forms)
