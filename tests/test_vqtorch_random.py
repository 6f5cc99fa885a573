"""Randomised features by invariants and statistics, on every backend.

(The torch backend is also compared draw for draw with the seed in test_vqtorch_parity.)
"""
import math

import pytest
import torch

from tests.torch_reference import SeedVectorQuantize, backends
from vqtorch import VectorQuantize
from vqtorch.losses import orthogonal_loss


def _clusters(n_per=60, centers=6, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(centers, dim, generator=gen) * 4
    x = means.repeat_interleave(n_per, 0) + 0.3 * torch.randn(centers * n_per, dim, generator=gen)
    return x[torch.randperm(len(x), generator=gen)].view(1, -1, dim)


def _inertia(x, codes):
    return torch.cdist(x.view(-1, x.shape[-1]), codes).min(dim=1).values.pow(2).mean().item()


@pytest.mark.parametrize("backend", backends())
def test_kmeans_init_state_and_quality(backend):
    x = _clusters()
    ours_inertia, seed_inertia, sampled_inertia = [], [], []
    for seed in range(5):
        torch.manual_seed(seed)
        layer = VectorQuantize(dim=8, codebook_size=6, kmeans_init=True, kmeans_iters=10, backend=backend).eval()
        assert layer._codebook.initted.item() == 0
        layer(x)
        cb = layer._codebook
        assert cb.initted.item() == 1
        # k-means leaves embed_avg = means * counts and counts summing to the rows seen.
        assert cb.cluster_size.sum().item() == x.shape[1]
        torch.testing.assert_close(cb.embed_avg, cb.embed * cb.cluster_size.unsqueeze(-1))
        ours_inertia.append(_inertia(x, cb.embed[0]))
        torch.manual_seed(seed)
        ref = SeedVectorQuantize(dim=8, codebook_size=6, kmeans_init=True).eval()
        ref(x)
        seed_inertia.append(_inertia(x, ref._codebook.embed[0]))
        sampled_inertia.append(_inertia(x, x[0, torch.randperm(x.shape[1])[:6]]))
    mean = sum(ours_inertia) / 5
    assert mean < 0.7 * sum(sampled_inertia) / 5
    assert mean < 1.5 * sum(seed_inertia) / 5 + 1e-3


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("cosine", [False, True])
def test_dead_codes_are_replaced_by_batch_rows(backend, cosine):
    torch.manual_seed(0)
    layer = VectorQuantize(dim=8, codebook_size=16, threshold_ema_dead_code=2.0, use_cosine_sim=cosine,
                           backend=backend).train()
    x = torch.randn(2, 40, 8)
    layer(x)
    cb = layer._codebook
    rows = torch.nn.functional.normalize(x, dim=-1).view(-1, 8) if cosine else x.view(-1, 8)
    replaced = cb.cluster_size[0] == 2.0  # reset_cluster_size defaults to the threshold
    # 80 rows over 16 codes with decay 0.8: EMA sizes are at most 0.2 * count, so most codes expire.
    assert replaced.sum() >= 8
    assert (cb.cluster_size[0] >= 2.0 - 1e-6).all()
    replaced_codes = cb.embed[0][replaced]
    match = torch.cdist(replaced_codes, rows, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    torch.testing.assert_close(match, torch.zeros_like(match), atol=1e-5, rtol=0)
    # Drawn without replacement when the batch is large enough.
    assert len(torch.unique(replaced_codes, dim=0)) == len(replaced_codes)
    torch.testing.assert_close(cb.embed_avg[0][replaced], replaced_codes * 2.0)


@pytest.mark.parametrize("backend", backends())
def test_stochastic_codes_follow_softmax_of_distances(backend):
    torch.manual_seed(0)
    temp = 0.7
    layer = VectorQuantize(dim=4, codebook_size=5, stochastic_sample_codes=True, sample_codebook_temp=temp,
                           ema_update=False, backend=backend).train()
    point = torch.randn(1, 1, 4) * 0.5
    n = 6000
    _, ind, _ = layer(point.expand(1, n, 4))
    counts = torch.bincount(ind.view(-1), minlength=5).double()
    dist = -torch.cdist(point[0], layer.codebook).double()[0]
    probs = torch.softmax(dist / temp, dim=0)
    sigma = torch.sqrt(n * probs * (1 - probs))
    assert (counts - n * probs).abs().max() <= 5 * sigma.max()
    # Eval mode is deterministic: the nearest code.
    _, ind_eval, _ = layer.eval()(point)
    assert ind_eval.item() == int(torch.argmax(dist))


@pytest.mark.parametrize("backend", backends())
def test_orthogonal_subset_uses_the_drawn_codes(backend):
    layer = VectorQuantize(dim=8, codebook_size=32, orthogonal_reg_weight=1.0, orthogonal_reg_max_codes=5,
                           commitment_weight=0.0, ema_update=False, backend=backend).train()
    x = torch.randn(2, 10, 8)
    torch.manual_seed(11)
    _, _, loss = layer(x)
    torch.manual_seed(11)
    pick = torch.randperm(32)[:5]
    expected = orthogonal_loss(layer._codebook.embed[:, pick].detach())
    torch.testing.assert_close(loss.detach(), expected.view(1))
    # Over many draws the subset loss averages to the full-codebook pairwise term.
    codes = layer._codebook.embed.detach()
    normed = torch.nn.functional.normalize(codes[0], dim=-1)
    off_diag = (normed @ normed.T).pow(2)
    off_diag = (off_diag.sum() - off_diag.diagonal().sum()) / (32 * 31)
    draws = torch.stack([layer(x)[2].detach() for _ in range(400)]).mean()
    expected_mean = (1 / 5 + (4 / 5) * off_diag) - 1 / 5  # E[sum cos^2]/m^2 - 1/m
    assert math.isclose(draws.item(), expected_mean.item(), rel_tol=0.1)
