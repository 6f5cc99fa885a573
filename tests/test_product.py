"""ProductQuantizer: encoding against the naive reference, batched k-means, EMA steps, files, bad input."""
import numpy as np
import pytest

import vqcore
from vqcore.codebook import kaiming_uniform

from . import naive


def data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((12, d)) * 3
    return (centers[rng.integers(0, 12, n)] + rng.standard_normal((n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def trained():
    x = data(2000, 12)
    return vqcore.ProductQuantizer(12, 16, 4, seed=0).fit(x, iters=10, progress=False), x


def test_encode_equals_the_naive_product_encoding(trained):
    pq, x = trained
    codes = pq.encode(x)
    assert codes.shape == (2000, 4) and codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, naive.product_encode(x, pq.codebooks))


def test_decode_concatenates_the_subspace_codes(trained):
    pq, x = trained
    codes = pq.encode(x[:30])
    want = np.concatenate([pq.codebooks[m][codes[:, m]] for m in range(4)], axis=1)
    np.testing.assert_array_equal(pq.decode(codes), want)
    vectors, again = pq.quantize(x[:30].reshape(3, 10, 12))
    assert vectors.shape == (3, 10, 12) and again.shape == (3, 10, 4)
    np.testing.assert_array_equal(again.reshape(30, 4), codes)


def test_fit_is_one_batched_kmeans_over_the_subspaces(trained):
    pq, x = trained
    split = np.ascontiguousarray(x.reshape(-1, 4, 3).transpose(1, 0, 2))
    rng = np.random.default_rng(0)
    kaiming_uniform(rng, (4, 16, 3))  # the codebook's initial draw comes first from the quantizer's generator
    means, counts = vqcore.kmeans(split, 16, iters=10, init="k-means++", seed=rng, max_points_per_cluster=256,
                                  init_size=16 * 16)
    np.testing.assert_array_equal(pq.codebooks, means)
    np.testing.assert_array_equal(pq.usage()["counts"], counts)
    score = pq.score(x)
    diff = x.astype(np.float64) - pq.decode(pq.encode(x))
    np.testing.assert_allclose(score["mse"], (diff ** 2).mean(), rtol=1e-6)
    assert len(score["perplexity"]) == 4 and score["dead_codes"] == [0, 0, 0, 0]


def test_quality_matches_faiss_product_quantizer():
    faiss = pytest.importorskip("faiss")
    x = data(8000, 16, seed=1)
    theirs = faiss.ProductQuantizer(16, 4, 5)
    theirs.train(x)
    their_mse = ((x - theirs.decode(theirs.compute_codes(x))) ** 2).mean()
    ours = vqcore.ProductQuantizer(16, 32, 4, seed=0).fit(x, progress=False)
    assert ours.score(x)["mse"] <= 1.02 * their_mse


def test_partial_fit_equals_a_vector_quantizer_with_separate_heads():
    x = data(256, 12, seed=2)
    pq = vqcore.ProductQuantizer(12, 8, 4, seed=0, decay=0.7)
    vq = vqcore.VectorQuantizer(12, 8, heads=4, separate_codebook_per_head=True, codebook_dim=3, decay=0.7, seed=1)
    vq.load_state_dict(pq.state_dict())
    for step in range(3):
        batch = x * (1 + step)
        out, codes = pq.partial_fit(batch)
        want_out, want_codes = vq.partial_fit(batch)
        np.testing.assert_array_equal(codes, want_codes)
        np.testing.assert_allclose(out, want_out, rtol=1e-6)
    for key, value in vq.state_dict().items():
        np.testing.assert_allclose(pq.state_dict()[key], value, rtol=1e-6)
    assert len(pq.usage()["perplexity"]) == 4


def test_ema_fit_runs_epochs_of_partial_fit():
    x = data(300, 6, seed=3)
    a = vqcore.ProductQuantizer(6, 4, 2, seed=5).fit(x, method="ema", batch_size=100, shuffle=False, progress=False)
    b = vqcore.ProductQuantizer(6, 4, 2, seed=5)
    for start in range(0, 300, 100):
        b.partial_fit(x[start:start + 100])
    np.testing.assert_array_equal(a.codebooks, b.codebooks)


def test_files_round_trip(tmp_path, trained):
    pq, x = trained
    pq.save(tmp_path / "pq.npz")
    again = vqcore.load(tmp_path / "pq.npz")
    assert isinstance(again, vqcore.ProductQuantizer) and again.config == pq.config
    np.testing.assert_array_equal(again.encode(x), pq.encode(x))


def test_vector_quantizer_files_load_through_vqcore_load(tmp_path):
    vq = vqcore.VectorQuantizer(4, 8, seed=0)
    vq.save(tmp_path / "vq.npz")
    again = vqcore.load(tmp_path / "vq.npz")
    assert isinstance(again, vqcore.VectorQuantizer)
    np.testing.assert_array_equal(again.codebook, vq.codebook)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(num_subspaces=5), ValueError, "num_subspaces=5 does not divide dim=12"),
        (dict(codebook_size=0), ValueError, "codebook_size=0"),
        (dict(use_cosine_sim=True), TypeError, "unknown codebook options"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, words):
    args = dict(dim=12, codebook_size=4, num_subspaces=3)
    args.update(kwargs)
    with pytest.raises(error) as info:
        vqcore.ProductQuantizer(**args)
    assert words in str(info.value)


def test_bad_input_changes_nothing():
    x = data(100, 12, seed=4)
    pq = vqcore.ProductQuantizer(12, 4, 3, seed=0)
    before = pq.state_dict()
    bad = x.copy()
    bad[0, 0] = np.inf
    cases = [
        (lambda: pq.fit(bad, progress=False), ValueError, "NaN or Inf"),
        (lambda: pq.partial_fit(bad), ValueError, "NaN or Inf"),
        (lambda: pq.fit(x[:, :6], progress=False), ValueError, "dim=12"),
        (lambda: pq.decode(np.zeros((2, 2), int)), ValueError, "exactly 3 subspaces"),
        (lambda: pq.decode(np.full((2, 3), 4)), ValueError, "[0, 4)"),
        (lambda: pq.fit(x, iters=-1), ValueError, "iters=-1"),
    ]
    for call, error, words in cases:
        with pytest.raises(error) as info:
            call()
        assert words in str(info.value), (words, str(info.value))
    after = pq.state_dict()
    assert all(np.array_equal(before[key], after[key]) for key in before)
