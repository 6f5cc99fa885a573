import os

import numpy as np
import pytest

import vqcore

from . import naive
from .seed_helpers import make_seed_layer, seed_forward, seed_state

DIM, K = 16, 32

PARITY_CONFIGS = {
    "euclidean": dict(),
    "cosine": dict(use_cosine_sim=True),
    "decay_eps": dict(decay=0.5, eps=1e-3),
    "heads_shared": dict(heads=2, codebook_dim=8),
    "heads_separate": dict(heads=2, codebook_dim=8, separate_codebook_per_head=True),
    "cosine_heads_separate": dict(heads=4, codebook_dim=4, separate_codebook_per_head=True, use_cosine_sim=True),
    "projection": dict(codebook_dim=12),
    "projection_heads": dict(heads=2, codebook_dim=5, separate_codebook_per_head=True),
    "affine": dict(affine_param=True),
    "affine_decays": dict(affine_param=True, affine_param_batch_decay=0.5, affine_param_codebook_decay=0.7, heads=2, codebook_dim=8),
    "no_ema": dict(ema_update=False),
}


def batches(count, shape=(4, 10, DIM), seed=0):
    rng = np.random.default_rng(seed)
    # a shifted, scaled distribution so affine statistics matter
    return [(rng.standard_normal(shape) * 1.5 + 0.3).astype(np.float32) for _ in range(count)]


def twin(config, seed=0):
    """The seed's layer and ours, holding the same state."""
    layer = make_seed_layer(seed, dim=DIM, codebook_size=K, **config)
    ours = vqcore.VectorQuantizer(DIM, K, **config)
    ours.load_state_dict(seed_state(layer))
    return layer, ours


def assert_states_close(ours, layer):
    theirs = seed_state(layer)
    mine = ours.state_dict()
    assert set(mine) == set(theirs)
    for key in theirs:
        np.testing.assert_allclose(mine[key], theirs[key], rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_training_steps_match_the_seed(name):
    layer, ours = twin(PARITY_CONFIGS[name])
    for x in batches(4):
        q_seed, i_seed = seed_forward(layer, x)
        q_ours, i_ours = ours.partial_fit(x)
        np.testing.assert_array_equal(i_ours, i_seed)
        np.testing.assert_allclose(q_ours, q_seed, rtol=1e-4, atol=1e-5)
        assert_states_close(ours, layer)


@pytest.mark.parametrize("name", ["euclidean", "cosine", "heads_shared", "affine"])
def test_eval_forward_matches_the_seed(name):
    layer, ours = twin(PARITY_CONFIGS[name])
    for x in batches(2, seed=1):
        seed_forward(layer, x)
        ours.partial_fit(x)
    x = batches(1, seed=2)[0]
    q_seed, i_seed = seed_forward(layer, x, training=False)
    q_ours, i_ours = ours.quantize(x)
    np.testing.assert_array_equal(i_ours, i_seed)
    np.testing.assert_array_equal(ours.encode(x), i_seed)
    np.testing.assert_allclose(q_ours, q_seed, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["euclidean", "heads_shared", "heads_separate", "affine"])
def test_masked_training_matches_the_seed(name):
    layer, ours = twin(PARITY_CONFIGS[name])
    rng = np.random.default_rng(3)
    for x in batches(3, seed=4):
        mask = rng.random(x.shape[:2]) < 0.6
        q_seed, i_seed = seed_forward(layer, x, mask=mask)
        q_ours, i_ours = ours.partial_fit(x, mask=mask)
        np.testing.assert_allclose(q_ours, q_seed, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(q_ours[~mask], x[~mask])  # masked positions give back the input
        assert_states_close(ours, layer)


def test_two_dimensional_input_matches_the_seed():
    layer, ours = twin(dict(heads=2, codebook_dim=8))
    for x in batches(3, shape=(20, DIM), seed=5):
        q_seed, i_seed = seed_forward(layer, x)
        q_ours, i_ours = ours.partial_fit(x)
        assert i_ours.shape == (20, 2)
        np.testing.assert_array_equal(i_ours, i_seed)
        np.testing.assert_allclose(q_ours, q_seed, rtol=1e-4, atol=1e-5)
    assert_states_close(ours, layer)


def test_decode_matches_the_seeds_get_output_from_indices():
    import torch

    layer, ours = twin(PARITY_CONFIGS["projection_heads"])
    indices = np.random.default_rng(0).integers(0, K, (3, 7, 2))
    want = layer.get_output_from_indices(torch.from_numpy(indices)).detach().numpy()
    np.testing.assert_allclose(ours.decode(indices), want, rtol=1e-5, atol=1e-6)


def test_kmeans_init_runs_kmeans_on_the_first_batch():
    x = batches(1, shape=(8, 64, DIM))[0]
    decay = 0.9
    ours = vqcore.VectorQuantizer(DIM, K, kmeans_init=True, kmeans_iters=5, seed=1, decay=decay)
    state0 = ours.state_dict()
    assert state0["_codebook.initted"][0] == 0 and not state0["_codebook.embed"].any()
    ours.partial_fit(x)
    state = ours.state_dict()
    assert state["_codebook.initted"][0] == 1
    # the same k-means (the quantizer's generator draws nothing before it), then one EMA step by hand
    rows = x.reshape(-1, DIM)
    means, counts = vqcore.kmeans(rows, K, iters=5, seed=np.random.default_rng(1))
    labels = naive.nearest(rows, means)
    step_counts = np.bincount(labels, minlength=K).astype(np.float64)
    step_sums = np.zeros((K, DIM))
    np.add.at(step_sums, labels, rows)
    size = decay * counts + (1 - decay) * step_counts
    avg = decay * means * counts[:, None] + (1 - decay) * step_sums
    smoothed = (size + 1e-5) / (size.sum() + K * 1e-5) * size.sum()
    np.testing.assert_allclose(state["_codebook.cluster_size"][0], size, rtol=1e-4)
    np.testing.assert_allclose(state["_codebook.embed"][0], avg / smoothed[:, None], rtol=1e-4, atol=1e-5)


def test_dead_codes_are_replaced_by_batch_vectors():
    x = batches(1, shape=(2, 50, DIM), seed=6)[0]
    ours = vqcore.VectorQuantizer(DIM, K, threshold_ema_dead_code=2.0, reset_cluster_size=3.0, seed=0)
    ours.partial_fit(x)
    state = ours.state_dict()
    size = state["_codebook.cluster_size"][0]
    replaced = size == 3.0
    assert replaced.sum() > 0
    rows = {tuple(r) for r in x.reshape(-1, DIM)}
    embed = state["_codebook.embed"][0]
    assert all(tuple(e) in rows for e in embed[replaced])
    np.testing.assert_allclose(state["_codebook.embed_avg"][0][replaced], embed[replaced] * 3.0)
    assert np.all(size >= 2.0)  # nothing below the threshold survives a step


def test_stochastic_sampling_follows_the_softmax():
    cb = vqcore.EuclideanCodebook(2, 3, stochastic_sample_codes=True, sample_codebook_temp=0.5, seed=0,
                                  threshold_ema_dead_code=0)
    cb.embed[0] = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
    x = np.zeros((1, 30000, 2), np.float32) + np.float32([0.2, 0.3])
    idx = cb.assign(x, cb.embed, training=True, sample_codebook_temp=0.5)
    logits = vqcore.distances(x[0, :1], cb.embed[0])[0] / 0.5
    p = np.exp(logits - logits.max())
    np.testing.assert_allclose(np.bincount(idx[0], minlength=3) / idx.size, p / p.sum(), atol=0.012)
    np.testing.assert_array_equal(cb.assign(x, cb.embed, training=False, sample_codebook_temp=0.5), 0)


def test_save_and_load_round_trip(tmp_path):
    ours = vqcore.VectorQuantizer(DIM, K, heads=2, codebook_dim=5, affine_param=True, seed=3)
    for x in batches(2):
        ours.partial_fit(x)
    path = tmp_path / "codebook.npz"
    ours.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["codebook.npz"]  # no temp file left
    back = vqcore.VectorQuantizer.load(path)
    assert back.config == ours.config
    for key, value in ours.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value)
    x = batches(1, seed=9)[0]
    np.testing.assert_array_equal(back.encode(x), ours.encode(x))
    np.testing.assert_allclose(back.decode(back.encode(x)), ours.decode(ours.encode(x)))


def test_load_refuses_foreign_files(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a vqcore file"):
        vqcore.VectorQuantizer.load(tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a readable"):
        vqcore.VectorQuantizer.load(tmp_path / "text.npz")
    ours = vqcore.VectorQuantizer(DIM, K)
    ours.save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as data:
        files = dict(data.items())
    files["format_version"] = np.array(99)
    np.savez(tmp_path / "future.npz", **files)
    with pytest.raises(ValueError, match="version 99"):
        vqcore.VectorQuantizer.load(tmp_path / "future.npz")


def test_failed_save_keeps_the_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "codebook.npz"
    vqcore.VectorQuantizer(DIM, K, seed=0).save(path)
    before = path.read_bytes()

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        vqcore.VectorQuantizer(DIM, K, seed=1).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["codebook.npz"]


def test_usage_reports_perplexity_and_dead_codes():
    ours = vqcore.VectorQuantizer(4, 8)
    ours._codebook.cluster_size[...] = [[4, 4, 4, 4, 0, 0, 0, 0]]
    usage = ours.usage()
    assert usage["dead_codes"] == 4
    np.testing.assert_allclose(usage["perplexity"], 4.0)
    assert ours.usage(dead_threshold=5)["dead_codes"] == 8


def test_fit_trains_and_improves_reconstruction():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((8, DIM)) * 4
    x = (centers[rng.integers(0, 8, 4000)] + rng.standard_normal((4000, DIM)) * 0.3).astype(np.float32)
    ours = vqcore.VectorQuantizer(DIM, 16, kmeans_init=True, threshold_ema_dead_code=1.0, seed=0)
    ours.partial_fit(x[:500])
    first = np.mean((ours.decode(ours.encode(x)) - x) ** 2)
    ours.fit(x, batch_size=500, epochs=3, progress=False)
    err = np.mean((ours.decode(ours.encode(x)) - x) ** 2)
    # noise variance is 0.09 per feature; a vector at a wrong centre costs ~32
    assert err < 0.2 and err <= first
    iterable = vqcore.VectorQuantizer(DIM, 8, kmeans_init=True, seed=0)
    iterable.fit([x[:2000], x[2000:]], progress=False)
    assert iterable.state_dict()["_codebook.initted"][0] == 1


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda q: q.partial_fit(np.zeros((2, 3, 5), np.float32)), ValueError, "dim=16"),
        (lambda q: q.partial_fit(np.full((2, DIM), np.nan, np.float32)), ValueError, "NaN"),
        (lambda q: q.partial_fit(np.zeros((2, 3, DIM)), mask=np.ones((2, 4), bool)), ValueError, "mask has shape"),
        (lambda q: q.partial_fit(np.zeros((2, 3, DIM)), mask=np.zeros((2, 3), bool)), ValueError, "all False"),
        (lambda q: q.partial_fit(np.zeros((2, 3, DIM)), mask=np.ones((2, 3))), TypeError, "bool"),
        (lambda q: q.decode(np.array([0, K])), ValueError, f"[0, {K})"),
        (lambda q: q.decode(np.array([0.5])), TypeError, "integers"),
        (lambda q: q.load_state_dict({"_codebook.embed": np.zeros((1, K, DIM))}), ValueError, "missing keys"),
    ],
)
def test_bad_input_leaves_state_untouched(call, error, words):
    ours = vqcore.VectorQuantizer(DIM, K, seed=0)
    before = ours.state_dict()
    with pytest.raises(error) as info:
        call(ours)
    assert words in str(info.value)
    for key, value in ours.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_state_dict_with_wrong_shapes_is_refused():
    ours = vqcore.VectorQuantizer(DIM, K)
    state = ours.state_dict()
    state["_codebook.embed"] = np.zeros((1, K + 1, DIM), np.float32)
    state["extra"] = np.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\].*_codebook.embed has shape"):
        ours.load_state_dict(state)


def test_bad_options():
    with pytest.raises(ValueError, match="affine_param"):
        vqcore.VectorQuantizer(DIM, K, affine_param=True, use_cosine_sim=True)
    with pytest.raises(ValueError, match="decay=1.5"):
        vqcore.VectorQuantizer(DIM, K, decay=1.5)
    with pytest.raises(ValueError, match="heads=0"):
        vqcore.VectorQuantizer(DIM, K, heads=0)


def test_freeze_codebook_assigns_without_training():
    layer, ours = twin(PARITY_CONFIGS["euclidean"])
    before = ours.state_dict()
    x = batches(1)[0]
    with __import__("torch").no_grad():
        q_seed, i_seed, _ = layer(__import__("torch").from_numpy(x), freeze_codebook=True)
    q_ours, i_ours = ours.partial_fit(x, freeze_codebook=True)
    np.testing.assert_array_equal(i_ours, i_seed.numpy())
    for key, value in ours.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(
    heads=st.sampled_from([1, 2, 4]),
    separate=st.booleans(),
    cosine=st.booleans(),
    two_d=st.booleans(),
    b=st.integers(1, 3),
    n=st.integers(1, 9),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_property_layouts(heads, separate, cosine, two_d, b, n, dtype):
    q = vqcore.VectorQuantizer(8, 5, heads=heads, codebook_dim=8 // heads, separate_codebook_per_head=separate,
                               use_cosine_sim=cosine, seed=0)
    shape = (b * n, 8) if two_d else (b, n, 8)
    x = np.random.default_rng(n).standard_normal(shape).astype(dtype)
    out, idx = q.partial_fit(x)
    assert out.shape == x.shape and out.dtype == dtype
    assert idx.shape == shape[:-1] + ((heads,) if heads > 1 else ())
    assert idx.min() >= 0 and idx.max() < 5
    vectors, idx2 = q.quantize(x)
    np.testing.assert_array_equal(q.encode(x), idx2)
    # the quantized output is the concatenation of the chosen codes
    np.testing.assert_allclose(vectors, q.decode(idx2), rtol=1e-6)


@pytest.mark.parametrize("options,first", [({}, True), ({"kmeans_init": True}, True), ({"kmeans_init": True}, False),
                                           ({"affine_param": True}, True)],
                         ids=["ema", "kmeans", "kmeans-on-the-refused-batch", "affine-then-ema"])
def test_a_batch_that_overflows_float32_is_refused_with_the_quantizer_unchanged(options, first):
    """Finite vectors near float32's limit: their per-code sums overflow. Before, Inf went into
    embed_avg and embed (k-means init included, which then marked the codebook initialised); now a
    ValueError, and every array and the random generator as they were. With affine statistics,
    equal huge rows pass the variance check and overflow the EMA afterwards: the accepted
    statistics are undone too."""
    from vqcore import VectorQuantizer

    rng = np.random.default_rng(0)
    quantizer = VectorQuantizer(dim=8, codebook_size=16, seed=0, **options)
    if first:
        quantizer.partial_fit(rng.standard_normal((64, 8)).astype(np.float32))
    before = {key: np.array(value, copy=True) for key, value in quantizer.state_dict().items()
              if isinstance(value, np.ndarray)}
    x = rng.standard_normal((64, 8)).astype(np.float32)
    x[:10] = 3e38
    if options.get("affine_param"):
        x[:] = 1e37  # no variance to overflow; 64 of them in one code overflow the EMA sum
    with pytest.raises(ValueError, match="EMA sums overflow|k-means on this batch overflows"):
        quantizer.partial_fit(x)
    after = quantizer.state_dict()
    for key, value in before.items():
        assert np.array_equal(after[key], value), key
    quantizer.partial_fit(rng.standard_normal((64, 8)).astype(np.float32))  # still usable


def test_codebooks_are_callable_as_their_forward():
    """``codebook(x)`` is ``codebook.forward(x)`` (the seed's modules are called)."""
    import copy

    from vqcore import EuclideanCodebook

    x = np.random.default_rng(0).standard_normal((1, 32, 4)).astype(np.float32)
    called = EuclideanCodebook(dim=4, codebook_size=8, seed=0)
    forwarded = copy.deepcopy(called)
    for got, want in zip(called(x), forwarded.forward(x)):
        np.testing.assert_array_equal(got, want)
