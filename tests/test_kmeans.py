import warnings

import numpy as np
import pytest

import vqcore

from . import naive


def blobs(n, d, centers, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centers, d)) * 5
    labels = rng.integers(0, centers, n)
    return (means[labels] + rng.standard_normal((n, d))).astype(dtype)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_init_gives_textbook_lloyd(metric, dtype):
    x = blobs(400, 5, 6, dtype=dtype)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    init = x[:8].copy()
    means, counts = vqcore.kmeans(x, 8, iters=4, init=init, metric=metric)
    want_means, want_counts = naive.lloyd(x, init, 4, metric)
    assert means.dtype == dtype and counts.dtype == np.int64
    np.testing.assert_allclose(means, want_means, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(counts, want_counts)
    assert counts.sum() == len(x)


def test_objective_never_increases():
    x = blobs(3000, 8, 20, seed=1)
    means, _ = vqcore.kmeans(x, 32, iters=0, seed=0)
    previous = naive.inertia(x[:500], means)  # a fixed subset keeps the reference fast
    full_prev = np.inf
    for _ in range(6):
        means, _ = vqcore.kmeans(x, 32, iters=1, init=means)
        labels = vqcore.nearest(x, means)
        full = float(((x - means[labels]).astype(np.float64) ** 2).sum())
        assert full <= full_prev * (1 + 1e-6)
        full_prev = full
    assert naive.inertia(x[:500], means) < previous


def test_empty_cluster_keeps_previous_mean():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0]])
    init = np.array([[0.0, 0.0], [10.0, 10.0], [100.0, 100.0]])  # the third attracts nothing
    means, counts = vqcore.kmeans(x, 3, iters=3, init=init)
    np.testing.assert_array_equal(counts, [2, 1, 0])
    np.testing.assert_allclose(means, [[0.05, 0.0], [10.0, 10.0], [100.0, 100.0]])


def test_batched_codebooks_are_independent():
    x = np.stack([blobs(200, 3, 4, seed=s) for s in range(3)])
    init = x[:, :5].copy()
    means, counts = vqcore.kmeans(x, 5, iters=3, init=init)
    assert means.shape == (3, 5, 3) and counts.shape == (3, 5)
    for h in range(3):
        m, c = vqcore.kmeans(x[h], 5, iters=3, init=init[h])
        np.testing.assert_allclose(means[h], m, rtol=1e-6)
        np.testing.assert_array_equal(counts[h], c)


def test_seed_makes_it_reproducible_and_init_is_drawn_from_data():
    x = blobs(500, 4, 5)
    a = vqcore.kmeans(x, 7, iters=0, seed=3)[0]
    b = vqcore.kmeans(x, 7, iters=0, seed=3)[0]
    c = vqcore.kmeans(x, 7, iters=0, seed=4)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    rows = {tuple(r) for r in x}
    assert all(tuple(r) in rows for r in a) and len({tuple(r) for r in a}) == 7  # no repeats


def test_all_points_equal():
    x = np.ones((50, 3), np.float32)
    means, counts = vqcore.kmeans(x, 4, iters=5, seed=0)
    np.testing.assert_array_equal(means, np.ones((4, 3)))
    assert counts.sum() == 50 and counts[0] == 50  # ties go to the first mean


def test_k_equals_n_puts_one_point_per_cluster():
    x = blobs(16, 3, 16, seed=2)
    means, counts = vqcore.kmeans(x, 16, iters=5, seed=0)
    np.testing.assert_array_equal(counts, np.ones(16))
    assert sorted(map(tuple, means)) == sorted(map(tuple, x))


def test_k_greater_than_n_warns_and_samples_with_replacement():
    x = blobs(5, 2, 2, seed=3)
    with pytest.warns(UserWarning, match="n_samples=5 < num_clusters=9"):
        means, counts = vqcore.kmeans(x, 9, iters=3, seed=0)
    assert means.shape == (9, 2) and counts.sum() == 5
    rows = {tuple(r) for r in x}
    assert all(tuple(r) in rows for r in means)  # every mean is (the mean of) data rows


def test_cosine_means_are_unit_norm():
    x = blobs(300, 6, 5, seed=4)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    means, _ = vqcore.kmeans(x, 6, iters=4, metric="cosine", seed=1)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 1.0, rtol=1e-5)


def test_inertia_on_digits_matches_scikit_learn():
    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.cluster import KMeans

    x = datasets.load_digits().data.astype(np.float32)
    ours, theirs = [], []
    for seed in range(5):
        means, _ = vqcore.kmeans(x, 32, iters=30, seed=seed)
        ours.append(naive_inertia_fast(x, means))
        km = KMeans(32, init="random", n_init=1, max_iter=30, tol=0, algorithm="lloyd", random_state=seed).fit(x)
        theirs.append(km.inertia_)
    assert abs(np.mean(ours) / np.mean(theirs) - 1) < 0.02, (np.mean(ours), np.mean(theirs))


def naive_inertia_fast(x, means):
    d = ((x[:, None, :].astype(np.float64) - means[None]) ** 2).sum(-1)
    return d.min(axis=1).sum()


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(num_clusters=0), ValueError, "num_clusters=0"),
        (dict(num_clusters=2.5), TypeError, "num_clusters"),
        (dict(num_clusters=2, iters=-1), ValueError, "iters=-1"),
        (dict(num_clusters=2, metric="l1"), ValueError, "metric='l1'"),
        (dict(num_clusters=2, init=np.zeros((3, 2))), ValueError, "init has shape"),
        (dict(num_clusters=2, comm="world"), TypeError, "comm='world'"),
    ],
)
def test_bad_arguments(kwargs, error, words):
    x = blobs(10, 2, 2)
    with pytest.raises(error) as info:
        vqcore.kmeans(x, **kwargs)
    assert words in str(info.value)


def test_bad_data():
    with pytest.raises(ValueError, match="NaN or Inf"):
        vqcore.kmeans(np.array([[0.0, np.nan], [1.0, 1.0]]), 1)
    with pytest.raises(TypeError, match="int64"):
        vqcore.kmeans(np.zeros((4, 2), dtype=np.int64), 1)
    with pytest.raises(ValueError, match="no rows"):
        vqcore.kmeans(np.zeros((0, 2)), 2)
    # with starting means an empty shard is fine (it happens on MPI ranks)
    means, counts = vqcore.kmeans(np.zeros((0, 2)), 2, init=np.eye(2))
    np.testing.assert_array_equal(means, np.eye(2))
    np.testing.assert_array_equal(counts, [0, 0])
