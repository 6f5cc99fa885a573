import numpy as np
import pytest

import vqcore
from vqcore import ema

from .seed_helpers import seed_module, torch


def naive_cluster_stats(x, indices, k, mask=None):
    c, n, d = x.shape
    counts = np.zeros((c, k))
    sums = np.zeros((c, k, d))
    for h in range(c):
        for i in range(n):
            if mask is None or mask[h, i]:
                counts[h, indices[h, i]] += 1
                sums[h, indices[h, i]] += x[h, i]
    return counts, sums


@pytest.mark.parametrize("masked", [False, True])
def test_cluster_stats_match_naive(masked):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 301, 7)).astype(np.float32)
    idx = rng.integers(0, 13, (2, 301))
    mask = rng.random((2, 301)) < 0.5 if masked else None
    counts, sums = ema.cluster_stats(x, idx, 13, mask=mask)
    want_counts, want_sums = naive_cluster_stats(x, idx, 13, mask)
    assert counts.dtype == np.float32 and sums.dtype == np.float32
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_allclose(sums, want_sums, rtol=1e-5, atol=1e-5)


def test_cluster_stats_equal_the_seeds_one_hot_products():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 200, 5)).astype(np.float32)
    idx = rng.integers(0, 9, (1, 200))
    onehot = torch.nn.functional.one_hot(torch.from_numpy(idx), 9).float()
    bins = onehot.sum(dim=1).numpy()
    embed_sum = torch.einsum("hnd,hnc->hcd", torch.from_numpy(x), onehot).numpy()
    counts, sums = ema.cluster_stats(x, idx, 9)
    np.testing.assert_array_equal(counts, bins)
    np.testing.assert_allclose(sums, embed_sum, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("decay", [0.8, 0.3, 0.99])
@pytest.mark.parametrize("cosine", [False, True])
def test_ema_update_matches_the_seeds_formulas(decay, cosine):
    rng = np.random.default_rng(2)
    cluster_size = rng.random((2, 6)).astype(np.float32) * 5
    embed_avg = rng.standard_normal((2, 6, 3)).astype(np.float32)
    counts = rng.integers(0, 4, (2, 6)).astype(np.float32)
    sums = rng.standard_normal((2, 6, 3)).astype(np.float32)
    embed = np.zeros_like(embed_avg)
    cs_t, avg_t = torch.from_numpy(cluster_size.copy()), torch.from_numpy(embed_avg.copy())
    seed_module.ema_inplace(cs_t, torch.from_numpy(counts), decay)
    seed_module.ema_inplace(avg_t, torch.from_numpy(sums), decay)
    smoothed = seed_module.laplace_smoothing(cs_t, 6, 1e-5) * cs_t.sum(dim=-1, keepdim=True)
    want = avg_t / smoothed[..., None]
    if cosine:
        want = seed_module.l2norm(want)
    ema.ema_update_(cluster_size, embed_avg, embed, counts, sums, decay=decay, eps=1e-5,
                    metric="cosine" if cosine else "euclidean")
    np.testing.assert_allclose(cluster_size, cs_t.numpy(), rtol=1e-6)
    np.testing.assert_allclose(embed_avg, avg_t.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(embed, want.numpy(), rtol=1e-5, atol=1e-6)


def test_batch_stats_and_affine_maps():
    rng = np.random.default_rng(3)
    data = rng.standard_normal((2, 50, 4)).astype(np.float32) * 3 + 1
    mask = rng.random((2, 50)) < 0.7
    mask[1] = mask[0]  # the seed needs the same count per codebook set
    mean, var = ema.batch_stats(data, mask)
    kept = np.stack([data[h][mask[h]] for h in range(2)])
    np.testing.assert_allclose(mean, kept.mean(axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(var, kept.var(axis=1, keepdims=True), rtol=1e-5)
    embed = rng.standard_normal((2, 8, 4)).astype(np.float32)
    cm, cv = embed.mean(1, keepdims=True), embed.var(1, keepdims=True)
    moved = ema.affine_embed(embed, cm, cv, mean, var)
    np.testing.assert_allclose(moved.mean(1, keepdims=True), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(moved.var(1, keepdims=True), var, rtol=1e-4)
    np.testing.assert_allclose(ema.affine_to_codebook(moved, cm, cv, mean, var), embed, rtol=1e-4, atol=1e-5)


def test_decay_update():
    assert ema.decay_update(None, np.ones(2), 0.9).dtype == np.float32
    np.testing.assert_allclose(ema.decay_update(np.zeros(2), np.ones(2), 0.9), 0.1)


def test_expire_codes_replaces_only_dead_codes():
    rng = np.random.default_rng(4)
    embed = rng.standard_normal((1, 5, 3)).astype(np.float32)
    embed_avg = embed.copy()
    cluster_size = np.array([[5.0, 0.5, 3.0, 0.1, 2.0]], np.float32)
    samples = rng.standard_normal((1, 40, 3)).astype(np.float32)
    before = embed.copy()
    expired = ema.expire_codes_(cluster_size, embed_avg, embed, samples, threshold=1.0, reset_cluster_size=2.5,
                                rng=np.random.default_rng(0))
    np.testing.assert_array_equal(expired, [[False, True, False, True, False]])
    np.testing.assert_array_equal(embed[0, ~expired[0]], before[0, ~expired[0]])
    rows = {tuple(r) for r in samples[0]}
    assert all(tuple(r) in rows for r in embed[0, expired[0]])
    np.testing.assert_array_equal(cluster_size[0, expired[0]], 2.5)
    np.testing.assert_allclose(embed_avg[0, expired[0]], embed[0, expired[0]] * 2.5)
    off = ema.expire_codes_(cluster_size * 0, embed_avg, embed, samples, threshold=0, reset_cluster_size=1,
                            rng=np.random.default_rng(0))
    assert not off.any()


def test_codebook_defaults_follow_the_seed():
    cb = vqcore.EuclideanCodebook(4, 8)
    assert cb.threshold_ema_dead_code == 2 and cb.reset_cluster_size == 2
    bound = np.sqrt(6 / (8 * 4))  # kaiming uniform over a (1, 8, 4) tensor
    assert np.abs(cb.embed).max() <= bound and cb.embed.std() > bound / 4
    cos = vqcore.CosineSimCodebook(4, 8)
    np.testing.assert_allclose(np.linalg.norm(cos.embed, axis=-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="affine_param"):
        vqcore.CosineSimCodebook(4, 8, affine_param=True)
