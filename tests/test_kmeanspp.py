"""k-means++ seeding, k-means|| , restarts and subsampling in vqcore.kmeans."""
import numpy as np
import pytest

import vqcore
from vqcore import cluster

from . import naive


def blobs(n, d, centers, seed=0, dtype=np.float32, spread=5.0):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centers, d)) * spread
    labels = rng.integers(0, centers, n)
    return (means[labels] + rng.standard_normal((n, d))).astype(dtype)


def inertia(x, means):
    x = x.astype(np.float64)
    labels = naive.nearest(x, means) if len(x) <= 500 else vqcore.nearest(x, means.astype(x.dtype))
    return float(((x - means[labels]) ** 2).sum())


def test_greedy_seeding_equals_the_naive_greedy_kmeanspp():
    x = blobs(300, 4, 6, seed=1, dtype=np.float64)
    for seed in range(3):
        centers, chosen = vqcore.cluster.kmeans_plusplus(x, 9, seed=seed)
        want = naive.kmeanspp_greedy(x, 9, np.random.default_rng(seed), trials=2 + int(np.log(9)))
        np.testing.assert_array_equal(chosen, want)
        np.testing.assert_array_equal(centers, x[want])


def test_seeding_spreads_over_well_separated_blobs():
    # one centre per blob: random rows would pick two in the same blob most of the time
    x = blobs(2000, 2, 8, seed=2, spread=50.0)
    centers, _ = cluster.kmeans_plusplus(x, 8, seed=0)
    true_means = np.stack([x[naive.nearest(x, centers) == j].mean(axis=0) for j in range(8)])
    assert len(np.unique(naive.nearest(true_means, centers))) == 8


def test_weighted_seeding_never_picks_a_zero_weight_row():
    x = blobs(200, 3, 4, seed=3)
    weights = np.zeros(200)
    weights[::2] = 1.0
    _, chosen = cluster.kmeans_plusplus(x, 10, seed=0, sample_weight=weights)
    assert np.all(chosen % 2 == 0)


@pytest.mark.parametrize("init", ["k-means++", "k-means||"])
def test_objective_matches_scikit_learn_on_blobs(init):
    from sklearn.cluster import KMeans

    x = blobs(6000, 16, 64, seed=0)
    ours, theirs, random = [], [], []
    for seed in range(4):
        means, _ = vqcore.kmeans(x, 64, iters=20, init=init, seed=seed)
        ours.append(inertia(x, means))
        random.append(inertia(x, vqcore.kmeans(x, 64, iters=20, seed=seed)[0]))
        km = KMeans(64, init="k-means++", n_init=1, max_iter=20, tol=0, algorithm="lloyd", random_state=seed).fit(x)
        theirs.append(km.inertia_)
    assert np.mean(ours) / np.mean(theirs) < 1.05, (np.mean(ours), np.mean(theirs))
    assert np.mean(ours) < 0.8 * np.mean(random)  # the issue: random starts leave blobs merged


def test_objective_matches_scikit_learn_on_digits():
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)
    ours, theirs = [], []
    for seed in range(4):
        ours.append(inertia(x, vqcore.kmeans(x, 32, iters=30, init="k-means++", seed=seed)[0]))
        km = KMeans(32, init="k-means++", n_init=1, max_iter=30, tol=0, algorithm="lloyd", random_state=seed).fit(x)
        theirs.append(km.inertia_)
    assert abs(np.mean(ours) / np.mean(theirs) - 1) < 0.03, (np.mean(ours), np.mean(theirs))


def test_n_init_keeps_the_best_run():
    x = blobs(1500, 6, 24, seed=4)
    single = inertia(x, vqcore.kmeans(x, 24, iters=5, init="k-means++", seed=7)[0])
    best = inertia(x, vqcore.kmeans(x, 24, iters=5, init="k-means++", seed=7, n_init=6)[0])
    assert best <= single * (1 + 1e-6)  # the first of the six runs is the single run
    runs = [inertia(x, vqcore.kmeans(x, 24, iters=5, init="random", seed=s)[0]) for s in range(6)]
    assert vqcore.kmeans(x, 24, iters=5, seed=0, n_init=1)[0].shape == (24, 6)
    assert min(runs) < max(runs)  # restarts do differ, so keeping the best matters


def test_shared_uniforms_do_not_depend_on_the_sharding():
    whole = cluster._shared_uniforms(5, 3, 0, 100)
    parts = np.concatenate([cluster._shared_uniforms(5, 3, start, stop - start)
                            for start, stop in ((0, 13), (13, 13), (13, 70), (70, 100))])
    np.testing.assert_array_equal(parts, whole)


def test_subsampling_keeps_about_the_limit_and_nothing_below_it():
    x = blobs(20000, 4, 10, seed=5)
    full = vqcore.kmeans(x, 10, iters=8, init="k-means++", seed=0)
    same = vqcore.kmeans(x, 10, iters=8, init="k-means++", seed=0, max_points_per_cluster=2000)
    np.testing.assert_array_equal(full[0], same[0])  # 2000 * 10 >= n: no subsampling
    means, counts = vqcore.kmeans(x, 10, iters=8, init="k-means++", seed=0, max_points_per_cluster=100)
    assert abs(counts.sum() - 1000) < 5 * np.sqrt(1000)  # Bernoulli(1000 / 20000) per row
    assert inertia(x, means) < 1.05 * inertia(x, full[0])


def test_init_size_seeds_from_a_subset():
    x = blobs(20000, 4, 10, seed=6)
    full = inertia(x, vqcore.kmeans(x, 10, iters=8, init="k-means++", seed=0)[0])
    sub = inertia(x, vqcore.kmeans(x, 10, iters=8, init="k-means++", seed=0, init_size=160)[0])
    assert sub < 1.1 * full


def test_kmeans_parallel_in_one_process_picks_data_rows():
    x = blobs(800, 3, 5, seed=7)
    means, counts = vqcore.kmeans(x, 12, iters=0, init="k-means||", seed=1)
    rows = {tuple(r) for r in x}
    assert all(tuple(m) in rows for m in means) and counts.sum() == 800


def test_batched_sets_are_seeded_independently():
    x = np.stack([blobs(400, 3, 5, seed=s) for s in range(2)])
    means, _ = vqcore.kmeans(x, 5, iters=3, init="k-means++", seed=0)
    assert means.shape == (2, 5, 3)
    for h in range(2):
        rows = {tuple(r) for r in x[h]}
        first = vqcore.kmeans(x, 5, iters=0, init="k-means++", seed=0)[0][h]
        assert all(tuple(m) in rows for m in first)


def test_fewer_rows_than_clusters_warns_for_kmeanspp():
    x = blobs(5, 2, 2, seed=8)
    with pytest.warns(UserWarning, match="n_samples=5 < num_clusters=7"):
        means, counts = vqcore.kmeans(x, 7, iters=2, init="k-means++", seed=0)
    assert means.shape == (7, 2) and counts.sum() == 5


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(init="kmeans++"), ValueError, "init='kmeans++'"),
        (dict(n_init=0), ValueError, "n_init=0"),
        (dict(init=np.zeros((2, 2)), n_init=3), ValueError, "n_init=3"),
        (dict(max_points_per_cluster=0), ValueError, "max_points_per_cluster=0"),
        (dict(init_size=0), ValueError, "init_size=0"),
        (dict(n_init=1.5), TypeError, "n_init"),
    ],
)
def test_bad_arguments(kwargs, error, words):
    with pytest.raises(error) as info:
        vqcore.kmeans(blobs(10, 2, 2), 2, **kwargs)
    assert words in str(info.value)


def test_bad_sample_weight():
    with pytest.raises(ValueError, match="sample_weight"):
        cluster.kmeans_plusplus(blobs(10, 2, 2), 2, sample_weight=-np.ones(10))


def test_rows_init_draws_distinct_data_rows_reproducibly():
    x = blobs(300, 3, 4, seed=9)
    a, _ = vqcore.kmeans(x, 7, iters=0, init="rows", seed=2)
    b, _ = vqcore.kmeans(x, 7, iters=0, init="rows", seed=2)
    np.testing.assert_array_equal(a, b)
    rows = {tuple(r) for r in x}
    assert all(tuple(m) in rows for m in a) and len({tuple(m) for m in a}) == 7
