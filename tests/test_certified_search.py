"""Certified exact search (issue 10): adversarial data against a float64 brute force, and the bound itself."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import vqcore
from vqcore.kernels import bf16
from vqcore.kernels.bf16 import HAS_BF16
from vqcore.search import PRECISIONS, assign, check_rows, engine_for, plan, scores_from_dist

from . import naive

# Every public precision, plus the bf16 kernel with the instruction emulated, so the bf16
# path is tested on CPUs without avx512_bf16 too.
ENGINES = list(PRECISIONS) + ["bf16-emulated"]


def search(x, codebook, metric="euclidean", engine="auto"):
    """``nearest(..., return_distances=True)`` through any engine (2-D input)."""
    if engine in PRECISIONS:
        return vqcore.nearest(x, codebook, metric=metric, precision=engine, return_distances=True)
    x, codebook = np.ascontiguousarray(x), np.ascontiguousarray(codebook, dtype=x.dtype)
    indices, dist = np.empty(len(x), np.int64), np.empty(len(x))
    assign(x, plan(codebook, metric, engine), metric, indices, dist)
    check_rows(x, indices)
    return indices, scores_from_dist(dist, metric, x.dtype)


def power_of_two_scale(*arrays):
    """A power of two bringing the largest magnitude near 1 (exact scaling: float64 squares neither
    underflow nor overflow)."""
    top = max(np.abs(a.astype(np.float64)).max() for a in arrays)
    return 2.0 ** -np.ceil(np.log2(top)) if top > 0 else 1.0


def brute_force(x, codebook, metric="euclidean"):
    """First minimiser of the float64 distance (largest dot product for cosine)."""
    s = power_of_two_scale(x, codebook)
    return naive.nearest(x.astype(np.float64) * s, codebook.astype(np.float64) * s, metric)


def assert_exact(x, codebook, metric="euclidean", precision="auto"):
    got, scores = search(x, codebook, metric, precision)
    want = brute_force(x, codebook, metric)
    wrong = np.flatnonzero(got != want)
    assert wrong.size == 0, f"{wrong.size} rows wrong, e.g. row {wrong[0]}: got {got[wrong[0]]}, want {want[wrong[0]]}"
    s = power_of_two_scale(x, codebook)
    scaled = naive.distances(x.astype(np.float64) * s, codebook.astype(np.float64) * s, metric)
    exact = scaled[np.arange(len(x)), want] / (s * s if metric == "cosine" else s)
    np.testing.assert_allclose(scores.astype(np.float64), exact, rtol=1e-6 if x.dtype == np.float32 else 1e-12,
                               atol=0)


def gaussian(n, k, d, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(dtype), rng.standard_normal((k, d)).astype(dtype)


@pytest.mark.parametrize("precision", ENGINES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0.0, 300.0, 1e4])
def test_uncentred_data_is_answered_exactly(precision, dtype, offset):
    x, codebook = gaussian(3000, 200, 24, dtype)
    assert_exact((x + offset).astype(dtype), (codebook + offset).astype(dtype), precision=precision)


@pytest.mark.parametrize("precision", ENGINES)
def test_small_spread_far_from_origin(precision):
    # The case: offset 10, spread 0.01 — the naive formula returned -0.0 distances.
    x, codebook = gaussian(2000, 64, 16, np.float32, seed=3)
    x, codebook = (10 + 0.01 * x).astype(np.float32), (10 + 0.01 * codebook).astype(np.float32)
    assert_exact(x, codebook, precision=precision)


@pytest.mark.parametrize("engine", ["auto", "bf16-emulated"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e-30, 1e-25, 1e-10, 1.0, 1e10, 1e30])
def test_every_scale(engine, dtype, scale):
    x, codebook = gaussian(1500, 50, 12, np.float64, seed=4)
    assert_exact((x * scale).astype(dtype), (codebook * scale).astype(dtype), precision=engine)


@pytest.mark.parametrize("dtype", [np.float64])
@pytest.mark.parametrize("scale", [1e-300, 1e150])
def test_float64_extremes(dtype, scale):
    x, codebook = gaussian(300, 20, 5, np.float64, seed=5)
    assert_exact(x * scale, codebook * scale)


@pytest.mark.parametrize("precision", ENGINES)
def test_near_duplicate_codes(precision):
    rng = np.random.default_rng(6)
    base = rng.standard_normal((100, 32)).astype(np.float32)
    codebook = np.concatenate([base, base + np.float32(1e-6) * rng.standard_normal(base.shape).astype(np.float32)])
    x = (base[rng.integers(0, 100, 4000)] + 0.01 * rng.standard_normal((4000, 32))).astype(np.float32)
    assert_exact(x, codebook, precision=precision)


@pytest.mark.parametrize("precision", ENGINES)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exact_duplicates_go_to_the_lowest_index(precision, metric):
    rng = np.random.default_rng(7)
    base = rng.standard_normal((40, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    codebook = np.concatenate([base, base, base])  # every code three times
    x = base[rng.integers(0, 40, 2000)] + 0.05 * rng.standard_normal((2000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    got = search(x, codebook, metric, precision)[0]
    assert got.max() < 40
    assert_exact(x, codebook, metric=metric, precision=precision)


@pytest.mark.parametrize("precision", ENGINES)
def test_codes_equal_to_inputs(precision):
    x, _ = gaussian(500, 1, 8, np.float32, seed=8)
    got, scores = search(x, x, "euclidean", precision)
    np.testing.assert_array_equal(got, np.arange(500))
    np.testing.assert_array_equal(scores, 0)


@pytest.mark.parametrize("precision", ENGINES)
def test_one_dimension_and_one_code(precision):
    x, codebook = gaussian(700, 30, 1, np.float32, seed=9)
    assert_exact(x, codebook, precision=precision)
    np.testing.assert_array_equal(search(x, codebook[:1], "euclidean", precision)[0], 0)


@pytest.mark.parametrize("precision", ENGINES)
def test_cosine_on_unit_vectors(precision):
    x, codebook = gaussian(3000, 300, 20, np.float32, seed=10)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    codebook /= np.linalg.norm(codebook, axis=1, keepdims=True)
    assert_exact(x, codebook, metric="cosine", precision=precision)


def test_non_contiguous_and_batched_input():
    x, codebook = gaussian(4000, 64, 40, np.float64, seed=11)
    xs = (x[::2, ::2] + 50).astype(np.float32)
    cs = np.asfortranarray((codebook[:, ::2] + 50).astype(np.float32))
    assert_exact(xs, cs)
    batched = vqcore.nearest(np.stack([xs, xs[::-1]]), np.stack([cs, cs[::-1]]))
    np.testing.assert_array_equal(batched[0], brute_force(xs, cs))
    np.testing.assert_array_equal(batched[1], brute_force(xs[::-1], cs[::-1]))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40), k=st.integers(1, 30), d=st.integers(1, 12),
    log_scale=st.integers(-30, 30), offset=st.sampled_from([0.0, 1.0, 1e3, 1e4]),
    duplicates=st.booleans(), seed=st.integers(0, 2 ** 16), precision=st.sampled_from(ENGINES),
)
def test_property_exact_on_random_adversarial_sets(n, k, d, log_scale, offset, duplicates, seed, precision):
    rng = np.random.default_rng(seed)
    codebook = rng.standard_normal((k, d))
    if duplicates and k > 1:
        codebook[k // 2:] = codebook[: k - k // 2]
    x = np.concatenate([codebook[rng.integers(0, k, n // 2)], rng.standard_normal((n - n // 2, d))])
    scale = 10.0 ** log_scale
    assert_exact(((x + offset) * scale).astype(np.float32), ((codebook + offset) * scale).astype(np.float32),
                 precision=precision)


@pytest.mark.parametrize("engine", ["fp32", "bf16", "bf16-emulated"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_score_error_never_exceeds_the_bound(engine, metric, offset):
    """The fast scores (formed as the kernels form them) are within the documented bound of the exact ones."""
    if engine == "bf16" and not HAS_BF16:
        pytest.skip("this CPU has no avx512_bf16")
    rng = np.random.default_rng(12)
    d = 95
    codebook = (offset + rng.standard_normal((64, d)) * rng.uniform(0.01, 10, (64, 1))).astype(np.float32)
    x = (offset + rng.standard_normal((500, d)) * 3).astype(np.float32)
    x[:20] = codebook[:20]  # zero distances
    x[20:40] = codebook[20:40] + np.float32(1e-3) * x[20:40]  # near ties
    if metric == "cosine":
        codebook /= np.linalg.norm(codebook, axis=1, keepdims=True)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    p = plan(codebook, metric, engine)
    x64 = x.astype(np.longdouble)
    if metric == "cosine":
        row_scale = 2.0 ** -np.ceil(np.log2(np.abs(x.astype(np.float64)).max(axis=1, keepdims=True)))
        v_exact = x64 * row_scale
    else:
        v_exact = (x64 - p.mu) * p.scale
    v = v_exact.astype(np.float64).astype(np.float32)
    if engine != "fp32":
        pairs = np.zeros((len(v), (d + 1) // 2), dtype=np.int32)
        bf16.to_bf16_pairs(v, pairs)
        fast = bf16.dot(pairs, p.operand, len(codebook), emulate=engine == "bf16-emulated") + p.bias
        rounded = bf16.bf16_round(v).astype(np.float64)
        rounded_norm = np.linalg.norm(rounded, axis=1, keepdims=True)
        residual_norm = np.linalg.norm(v.astype(np.float64) - rounded, axis=1, keepdims=True)
    else:
        fast = v @ p.operand + p.bias
        rounded_norm = residual_norm = 0.0
    c_exact = (codebook.astype(np.longdouble) - p.mu) * p.scale
    cross = v_exact @ c_exact.T
    exact = -cross if metric == "cosine" else (c_exact ** 2).sum(axis=1) - 2 * cross
    norm = np.linalg.norm(v.astype(np.float64), axis=1, keepdims=True)
    c0, c1, c2, c3, c4 = p.coefs
    bound = c0 * norm + c1 * residual_norm + c2 * rounded_norm + c3 + c4 * (1 + norm) ** 2
    error = np.abs(fast.astype(np.float64) - exact.astype(np.float64))
    assert (error <= bound).all(), (error / bound).max()
    assert (error / bound).max() > 1e-3  # the bound is not vacuous


def test_forced_precisions_agree_and_bad_precision_is_refused():
    x, codebook = gaussian(2000, 100, 30, np.float32, seed=13)
    answers = [search(x + 100, codebook + 100, "euclidean", p)[0] for p in ENGINES]
    for other in answers[1:]:
        np.testing.assert_array_equal(other, answers[0])
    assert engine_for(np.dtype(np.float32), "fp64") == "fp64"
    with pytest.raises(ValueError, match="precision='fp16'"):
        vqcore.nearest(x, codebook, precision="fp16")


def test_candidates_stay_few_on_gaussian_data():
    x, codebook = gaussian(4000, 256, 64, np.float32, seed=14)
    indices, dist = np.empty(4000, np.int64), np.empty(4000)
    candidates = np.zeros(4000, np.int32)
    assign(x, codebook, "euclidean", indices, dist, candidates=candidates)
    assert candidates.min() >= 1 and candidates.mean() < 1.5


def test_nan_and_inf_rows_are_refused():
    x, codebook = gaussian(100, 10, 4, np.float32, seed=15)
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[37, 2] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            vqcore.nearest(y, codebook)
        with pytest.raises(ValueError, match="NaN or Inf"):
            vqcore.nearest(y / np.float32(10), codebook, metric="cosine")


def test_kmeans_on_huge_values_uses_every_cluster():
    # The case: kmeans(x * 1e20, 3) put every row in one cluster.
    rng = np.random.default_rng(16)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float64)
    x = (centres[rng.integers(0, 3, 300)] + rng.standard_normal((300, 2))).astype(np.float32) * np.float32(1e20)
    _, counts = vqcore.kmeans(x, 3, seed=0)
    assert (counts > 50).all(), counts


def test_kmeans_on_offset_blobs_matches_the_centred_run():
    rng = np.random.default_rng(17)
    centres = rng.standard_normal((16, 8)) * 5
    x = (centres[rng.integers(0, 16, 4000)] + rng.standard_normal((4000, 8))).astype(np.float32)
    init = x[:16].copy()
    means, counts = vqcore.kmeans(x, 16, init=init, iters=5)
    shifted, shifted_counts = vqcore.kmeans(x + np.float32(3000), 16, init=init + np.float32(3000), iters=5)
    np.testing.assert_array_equal(counts, shifted_counts)
    np.testing.assert_allclose(shifted - 3000, means, atol=2e-3)


def test_float64_rows_far_beyond_a_tiny_codebook_are_ranked_not_refused():
    """Codes spread over 1e-218 put a row at 1 some 2**722 spreads away, past what the direct form can
    square at the codebook's scale; the row is ranked at its own power of two (found by hypothesis)."""
    x = np.array([[6.91659681e-218, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    codebook = x[:2]
    idx, dist = vqcore.nearest(x, codebook, return_distances=True)
    # rows 1 and 3 sit on code 1 exactly (naive float64 squares underflow and call it a tie);
    # row 2 is nearer code 0 by 6.9e-218, which float64 rounds to a tie, and ties go to index 0
    np.testing.assert_array_equal(idx, [0, 1, 0, 1])
    np.testing.assert_array_equal(dist, [0.0, 0.0, -1.0, 0.0])  # negative distances, as the seed scores
    far = vqcore.nearest(np.array([[-3e200, 1.0, 2.0]]), codebook)  # scaled by 2**722 this overflows float64
    assert far.tolist() == [0]  # float64 cannot tell the codes apart at this distance: the lowest index


def test_subnormal_float64_spreads_scale_by_the_largest_power_of_two():
    """Codes 2e-311 apart would need a scale of 2**1034, past float64's range (found by hypothesis)."""
    tiny = 2.22507386e-311
    x = np.array([[0.0, tiny, tiny], [tiny, tiny, tiny], [tiny, tiny, tiny], [tiny, 0.0, tiny]])
    np.testing.assert_array_equal(vqcore.nearest(x, x[:2]), [0, 1, 1, 1])


def test_cosine_on_subnormal_rows_is_exact_and_finite():
    """Rows of subnormal float64 values against codes near 1e-127: their dot products (near 1e-450)
    underflow float64, but the search ranks rows and codes each at their own power of two, so the
    exact largest product wins. The kernel's fast-math used to reassociate the scaled product into
    (x * c) * (2**1023 * scale) = 0 * inf: NaN scores, index -1, 'x contains NaN or Inf'."""
    from fractions import Fraction

    codebook = np.array([[-2.98e-128, -3.45e-128, -2.51e-127, -8.58e-128, -1.90e-128],
                         [1.50e-127, 1.60e-128, 1.40e-127, -3.90e-128, -2.50e-128]])
    x = np.array([[1e-323, -1.5e-323, 0.0, 0.0, 0.0],
                  [1e-310, -1.5e-310, 5e-311, 0.0, 0.0],
                  [-2.3e-308, 1e-308, 0.0, 0.0, 4e-309]])
    got, scores = vqcore.nearest(x, codebook, metric="cosine", return_distances=True)
    for row, code in zip(x, got):
        exact = [sum(Fraction(a) * Fraction(b) for a, b in zip(row, c)) for c in codebook]
        assert code == max(range(len(codebook)), key=lambda j: (exact[j], -j))
    assert np.isfinite(scores).all()
