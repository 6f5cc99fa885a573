import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import vqcore
from vqcore.kernels.search import MAX_BLOCK_ROWS

from . import naive

DTYPES = [np.float32, np.float64]


def data(n, k, d, dtype, seed=0, c=None):
    rng = np.random.default_rng(seed)
    shape_x = (n, d) if c is None else (c, n, d)
    shape_c = (k, d) if c is None else (c, k, d)
    return rng.standard_normal(shape_x).astype(dtype), rng.standard_normal(shape_c).astype(dtype)


def assert_nearest_matches(x, codebook, got, metric="euclidean"):
    """Indices equal the reference, except where two codes are within float rounding."""
    want = naive.nearest(x, codebook, metric)
    scores = naive.distances(x, codebook, metric)
    rows = np.arange(len(x))
    gap = scores[rows, want] - scores[rows, got]
    tol = 1e-4 if x.dtype == np.float32 else 1e-10
    assert np.all(gap <= tol * (1 + np.abs(scores[rows, want]))), gap.max()
    assert np.mean(got == want) > 0.99


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("n", [1, 2, 7, 31, MAX_BLOCK_ROWS - 1, MAX_BLOCK_ROWS, MAX_BLOCK_ROWS + 1, 2 * MAX_BLOCK_ROWS + 3])
def test_nearest_matches_naive(dtype, metric, n):
    x, codebook = data(n, 37, 13, dtype, seed=n)
    got = vqcore.nearest(x, codebook, metric=metric)
    assert got.dtype == np.int64 and got.shape == (n,)
    assert_nearest_matches(x, codebook, got, metric)


@pytest.mark.parametrize("k", [1, 2, 127, 1031])
def test_nearest_codebook_sizes(k):
    x, codebook = data(300, k, 8, np.float32, seed=k)
    assert_nearest_matches(x, codebook, vqcore.nearest(x, codebook))


def test_large_codebook_is_tiled_by_rows():
    # 8192 codes: blocks shrink so the per-thread buffer stays bounded.
    x, codebook = data(700, 8192, 4, np.float32, seed=3)
    assert_nearest_matches(x, codebook, vqcore.nearest(x, codebook))


def test_ties_go_to_lowest_index():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((5, 6)).astype(np.float32)
    codebook = np.concatenate([base, base, base])  # every code appears three times
    x = base[[4, 0, 2, 2, 1]] + np.float32(0.01)
    got = vqcore.nearest(x, codebook)
    np.testing.assert_array_equal(got, [4, 0, 2, 2, 1])
    got_cos = vqcore.nearest(x, codebook, metric="cosine")
    np.testing.assert_array_equal(got_cos, naive.nearest(x, codebook, "cosine"))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_multiple_codebooks(metric):
    x, codebook = data(257, 19, 5, np.float64, seed=4, c=3)
    got = vqcore.nearest(x, codebook, metric=metric)
    assert got.shape == (3, 257)
    for h in range(3):
        assert_nearest_matches(x[h], codebook[h], got[h], metric)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_return_distances_are_the_seeds_negative_distances(dtype, metric):
    x, codebook = data(100, 23, 9, dtype, seed=5)
    idx, dist = vqcore.nearest(x, codebook, metric=metric, return_distances=True)
    ref = naive.distances(x, codebook, metric)
    assert dist.dtype == dtype
    np.testing.assert_allclose(dist, ref[np.arange(100), idx], rtol=1e-4, atol=1e-3 if dtype == np.float32 else 1e-9)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_distances_matrix(metric):
    x, codebook = data(41, 17, 6, np.float64, seed=6)
    np.testing.assert_allclose(vqcore.distances(x, codebook, metric=metric), naive.distances(x, codebook, metric), atol=1e-9)
    xb, cb = data(11, 5, 3, np.float32, seed=7, c=2)
    got = vqcore.distances(xb, cb, metric=metric)
    assert got.shape == (2, 11, 5)
    for h in range(2):
        np.testing.assert_allclose(got[h], naive.distances(xb[h], cb[h], metric), rtol=1e-5, atol=1e-4)


def test_distance_of_a_code_to_itself_is_zero_not_nan():
    codebook = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32) * 1000
    idx, dist = vqcore.nearest(codebook, codebook, return_distances=True)
    np.testing.assert_array_equal(idx, np.arange(10))
    assert np.all(np.isfinite(dist)) and np.all(dist <= 0)


def test_empty_x_returns_empty():
    _, codebook = data(1, 4, 3, np.float32)
    got = vqcore.nearest(np.zeros((0, 3), np.float32), codebook)
    assert got.shape == (0,) and got.dtype == np.int64
    idx, dist = vqcore.nearest(np.zeros((2, 0, 3)), np.zeros((2, 4, 3)), return_distances=True)
    assert idx.shape == (2, 0) and dist.shape == (2, 0)
    assert vqcore.distances(np.zeros((0, 3), np.float32), codebook).shape == (0, 4)


def test_input_is_not_modified():
    x, codebook = data(50, 8, 4, np.float32)
    x0, c0 = x.copy(), codebook.copy()
    vqcore.nearest(x, codebook, return_distances=True)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(codebook, c0)


def test_non_contiguous_input():
    x, codebook = data(64, 8, 10, np.float64)
    got = vqcore.nearest(x[::2, ::2], codebook[:, ::2])
    assert_nearest_matches(x[::2, ::2], codebook[:, ::2], got)


@pytest.mark.parametrize(
    "x, codebook, error, words",
    [
        (np.full((3, 2), np.nan, np.float32), np.zeros((2, 2), np.float32), ValueError, "NaN or Inf"),
        (np.array([[1.0, np.inf]]), np.zeros((2, 2)), ValueError, "NaN or Inf"),
        (np.zeros((3, 2)), np.array([[0.0, np.nan]]), ValueError, "codebook contains NaN"),
        (np.zeros((3, 2), np.int64), np.zeros((2, 2)), TypeError, "astype(np.float32)"),
        (np.zeros(3), np.zeros((2, 3)), ValueError, "2-D or 3-D"),
        (np.zeros((3, 2)), np.zeros((2, 3)), ValueError, "d=2"),
        (np.zeros((3, 2)), np.zeros((1, 2, 2)), ValueError, "x (n, d)"),
        (np.zeros((2, 3, 2)), np.zeros((3, 4, 2)), ValueError, "leading dimensions"),
        (np.zeros((3, 2)), np.zeros((0, 2)), ValueError, "k=0"),
        ([["a"]], np.zeros((1, 1)), TypeError, "dtype"),
    ],
)
def test_bad_input(x, codebook, error, words):
    with pytest.raises(error, match=None) as info:
        vqcore.nearest(x, codebook)
    assert words in str(info.value)


def test_bad_metric():
    with pytest.raises(ValueError, match="metric='manhattan'"):
        vqcore.nearest(np.zeros((1, 2)), np.zeros((1, 2)), metric="manhattan")


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    n=st.integers(0, 60),
    k=st.integers(1, 20),
    d=st.integers(1, 9),
    metric=st.sampled_from(["euclidean", "cosine"]),
    seed=st.integers(0, 2**16),
)
def test_property_shapes_dtypes_and_optimality(dtype, n, k, d, metric, seed):
    x, codebook = data(n, k, d, dtype, seed=seed)
    idx, dist = vqcore.nearest(x, codebook, metric=metric, return_distances=True)
    assert idx.shape == (n,) and idx.dtype == np.int64 and dist.dtype == dtype
    assert np.all((idx >= 0) & (idx < k))
    if n:
        full = vqcore.distances(x, codebook, metric=metric)
        # the chosen code is (to rounding) as good as the best one
        tol = 1e-3 if dtype == np.float32 else 1e-9
        assert np.all(full[np.arange(n), idx] >= full.max(axis=1) - tol * (1 + np.abs(full).max()))


@settings(max_examples=25, deadline=None)
@given(x=hnp.arrays(np.float64, st.tuples(st.integers(1, 30), st.just(3)), elements=st.floats(-1e3, 1e3)))
def test_property_arbitrary_values(x):
    codebook = x[: max(1, len(x) // 2)]
    idx = vqcore.nearest(x, codebook)
    sq = ((x[:, None, :] - codebook[None]) ** 2).sum(-1)
    assert np.all(sq[np.arange(len(x)), idx] <= sq.min(axis=1) + 1e-6 * (1 + sq.max()))
