"""The backends' kernels against dense, obviously-correct torch references (the seed's one-hot products)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests import naive
from tests.torch_reference import backends
from vqtorch.backends.torch_ops import TorchBackend
from vqtorch.backends import select_backend


def _backend(name):
    if name == "torch-small-blocks":
        return TorchBackend(block_elements=7)  # forces many row blocks, some ragged
    return select_backend(name, torch.empty(0))


NAMES = ["torch-small-blocks"] + backends()


def _data(c=2, n=53, k=9, d=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(c, n, d, generator=gen), torch.randn(c, k, d, generator=gen)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cosine", [False, True])
def test_nearest_matches_dense_argmax(name, cosine):
    x, embed = _data()
    dense = torch.einsum("cnd,ckd->cnk", x.double(), embed.double()) if cosine else \
        -torch.cdist(x.double(), embed.double())
    metric = "cosine" if cosine else "euclidean"
    torch.testing.assert_close(_backend(name).nearest(x, embed, metric=metric), dense.argmax(-1))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("masked", [False, True])
def test_cluster_stats_match_one_hot_products(name, masked):
    x, embed = _data()
    ind = torch.randint(0, 9, (2, 53), generator=torch.Generator().manual_seed(1))
    mask = torch.rand(2, 53, generator=torch.Generator().manual_seed(2)) > 0.4 if masked else None
    one_hot = F.one_hot(ind, 9).double()
    if masked:
        one_hot[~mask] = 0
    counts, sums = _backend(name).cluster_stats(x, ind, 9, mask)
    torch.testing.assert_close(counts, one_hot.sum(1).float())
    torch.testing.assert_close(sums, torch.einsum("cnd,cnk->ckd", x.double(), one_hot).float())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cosine", [False, True])
def test_ema_update_matches_formula(name, cosine):
    x, embed = _data()
    gen = torch.Generator().manual_seed(3)
    cluster_size = torch.rand(2, 9, generator=gen) * 3
    embed_avg = torch.randn(2, 9, 5, generator=gen)
    counts = torch.randint(0, 5, (2, 9), generator=gen).float()
    sums = torch.randn(2, 9, 5, generator=gen)
    decay, eps = 0.7, 1e-3
    size_ref = cluster_size.double() * decay + counts.double() * (1 - decay)
    avg_ref = embed_avg.double() * decay + sums.double() * (1 - decay)
    total = size_ref.sum(-1, keepdim=True)
    smoothed = (size_ref + eps) / (total + 9 * eps) * total
    codes_ref = avg_ref / smoothed.unsqueeze(-1)
    if cosine:
        codes_ref = F.normalize(codes_ref, dim=-1)
    _backend(name).ema_update_(cluster_size, embed_avg, embed, counts, sums, decay=decay, eps=eps,
                               metric="cosine" if cosine else "euclidean")
    torch.testing.assert_close(cluster_size, size_ref.float())
    torch.testing.assert_close(embed_avg, avg_ref.float())
    torch.testing.assert_close(embed, codes_ref.float())


@pytest.mark.parametrize("name", NAMES)
def test_batch_stats_are_biased_mean_and_variance(name):
    x, _ = _data()
    mean, var = _backend(name).batch_stats(x)
    torch.testing.assert_close(mean, x.double().mean(1, keepdim=True).float())
    torch.testing.assert_close(var, x.double().var(1, unbiased=False, keepdim=True).float())


@pytest.mark.parametrize("name", ["torch", "vqcore"])
@pytest.mark.parametrize("offset", [0.0, 300.0, 1e4])
def test_nearest_is_certified_exact_on_uncentred_data(name, offset):
    # where float32 ||x||^2 + ||c||^2 - 2 x.c loses the answer, both backends give vqcore's exact one
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((1, 2000, 24)) + offset).astype(np.float32)
    codes = (rng.standard_normal((1, 150, 24)) + offset).astype(np.float32)
    codes[0, 75:] = codes[0, :75]  # exact duplicates: ties go to the lowest index
    got = _backend(name).nearest(torch.from_numpy(x), torch.from_numpy(codes), metric="euclidean")
    want = naive.nearest(x[0].astype(np.float64), codes[0].astype(np.float64))
    np.testing.assert_array_equal(got[0].numpy(), want)


def test_vqcore_search_is_a_checked_custom_op():
    from vqtorch.backends.vqcore_kernels import nearest_op  # noqa: F401  (registers vqcore::nearest)

    x, embed = torch.randn(2, 40, 8), torch.randn(2, 16, 8)
    torch.library.opcheck(torch.ops.vqcore.nearest.default, (x, embed, False))
    torch.library.opcheck(torch.ops.vqcore.nearest.default, (x, embed, True))
    np.testing.assert_array_equal(torch.ops.vqcore.nearest(x, embed, False).numpy(),
                                  np.stack([naive.nearest(a, b) for a, b in zip(x.numpy(), embed.numpy())]))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_torch_rerank_of_ties_far_rows_and_split_pair_blocks(monkeypatch, metric):
    """Rows re-ranked by the float64 direct form: exact ties (lowest index), rows too far out for fp32
    scores (every code is a candidate), and candidate pairs split over many small blocks."""
    from vqtorch.backends import torch_ops

    monkeypatch.setattr(torch_ops, "_PAIR_ELEMENTS", 50)  # a few pairs per block at d=16
    rng = np.random.default_rng(8)
    codes = rng.standard_normal((1, 90, 16)).astype(np.float32)
    codes[0, 45:] = codes[0, :45]
    x = np.concatenate([codes[0, rng.integers(0, 90, 300)] + 1e-3 * rng.standard_normal((300, 16)),
                        rng.standard_normal((200, 16)) * 1e25])[None].astype(np.float32)
    got = TorchBackend().nearest(torch.from_numpy(x), torch.from_numpy(codes), metric=metric)
    scale = 2.0 ** -84  # brings the far rows near 1 exactly, so float64 squares stay finite
    want = naive.nearest(x[0].astype(np.float64) * scale, codes[0].astype(np.float64) * scale, metric)
    np.testing.assert_array_equal(got[0].numpy(), want)
    assert got.max() < 45


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_torch_search_refuses_non_finite_rows(metric, bad):
    """NaN/Inf reach the search only from inside a layer (after project_in): refused as vqcore refuses them,
    never an index out of range or a silent code 0."""
    x, codes = torch.randn(1, 6, 4), torch.randn(1, 8, 4)
    x[0, 3, 1] = bad
    with pytest.raises(ValueError, match="1 rows to quantize contain NaN or Inf"):
        TorchBackend().nearest(x, codes, metric=metric)


def test_torch_search_under_float64_default_dtype():
    x, codes = torch.randn(1, 30, 4), torch.randn(1, 8, 4)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for metric in ("euclidean", "cosine"):
            got = TorchBackend().nearest(x, codes, metric=metric)
            want = naive.nearest(x[0].double().numpy(), codes[0].double().numpy(), metric)
            np.testing.assert_array_equal(got[0].numpy(), want)
    finally:
        torch.set_default_dtype(default)


def test_torch_search_stays_exact_under_cpu_autocast():
    """Autocast would run the scores' addmm in bfloat16, far outside the bound; the search turns it off.
    Near-duplicate codes: without that, 56 of these 3,000 rows were ranked wrongly."""
    rng = np.random.default_rng(11)
    base = rng.standard_normal((256, 32))
    codes = np.concatenate([base, base + 1e-4 * rng.standard_normal(base.shape)]).astype(np.float32)
    x = (base[rng.integers(0, 256, 3000)] + 1e-3 * rng.standard_normal((3000, 32))).astype(np.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = TorchBackend().nearest(torch.from_numpy(x)[None], torch.from_numpy(codes)[None], metric="euclidean")
    np.testing.assert_array_equal(got[0].numpy(), naive.nearest(x, codes))
