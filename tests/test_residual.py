"""ResidualQuantizer: encoding against naive references, EMA parity with the seed's ResidualVQ, files, bad input."""
import warnings

import numpy as np
import pytest

import vqcore
import vqcore.beam

from . import naive
from .mpi_scripts._launch import describe, mpi_available, run_mpi


def clustered(n, d, seed=0):
    """Rows with structure at several scales, so every stage has something to quantize."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((8, d)) * 4
    fine = rng.standard_normal((8, d))
    return (coarse[rng.integers(0, 8, n)] + fine[rng.integers(0, 8, n)]
            + 0.3 * rng.standard_normal((n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def trained():
    x = clustered(1500, 6)
    rq = vqcore.ResidualQuantizer(6, 12, 4, seed=0).fit(x, iters=10, progress=False)
    return rq, x


def test_greedy_encoding_equals_the_naive_reference(trained):
    rq, x = trained
    codes = rq.encode(x)
    want, _ = naive.residual_greedy(x, rq.codebooks)
    assert codes.dtype == np.uint8 and codes.shape == (len(x), 4)
    assert np.mean(codes == want) > 0.999  # float32 residuals may flip an exact near-tie
    np.testing.assert_array_equal(rq.encode(x, beam_size=1), codes)


def test_error_after_each_stage_never_increases_on_training_data(trained):
    rq, x = trained
    _, errors = naive.residual_greedy(x, rq.codebooks)
    per_stage = errors.mean(axis=0)
    assert np.all(np.diff(per_stage) <= 0), per_stage
    assert per_stage[0] < (x.astype(np.float64) ** 2).sum(axis=1).mean()
    score = rq.score(x)
    np.testing.assert_allclose(score["mse_per_stage"], per_stage / x.shape[1], rtol=1e-4)


def test_decode_is_the_sum_of_the_chosen_codes_for_every_prefix(trained):
    rq, x = trained
    codes = rq.encode(x[:50])
    books = rq.codebooks.astype(np.float64)
    for m in range(0, 5):
        want = sum((books[i][codes[:, i]] for i in range(m)), np.zeros((50, 6)))
        np.testing.assert_allclose(rq.decode(codes[:, :m]), want, rtol=1e-5, atol=1e-5)
    vectors, again = rq.quantize(x[:50])
    np.testing.assert_array_equal(again, codes)
    np.testing.assert_allclose(vectors, rq.decode(codes))


def test_larger_beams_never_give_larger_training_error(trained):
    rq, x = trained
    errors = []
    for beam in (1, 2, 4, 8):
        diff = x - rq.decode(rq.encode(x, beam_size=beam))
        errors.append(float((diff.astype(np.float64) ** 2).sum()))
    assert all(b <= a * (1 + 1e-6) for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0]


def test_beam_covering_every_path_finds_the_exact_best_sum():
    rng = np.random.default_rng(3)
    books = rng.standard_normal((3, 3, 4)).astype(np.float32)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    rq = vqcore.ResidualQuantizer(4, 3, 3, seed=0)
    rq.load_state_dict({f"layers.{i}._codebook.{k}": v for i in range(3) for k, v in
                        dict(embed=books[i][None], embed_avg=books[i][None], cluster_size=np.ones((1, 3)),
                             initted=np.ones(1)).items()})
    codes = rq.encode(x, beam_size=27)
    want_codes, want_err = naive.residual_exhaustive(x, books)
    got = ((x.astype(np.float64) - books.astype(np.float64)[np.arange(3), codes.astype(int)].sum(axis=1)) ** 2).sum(1)
    np.testing.assert_allclose(got, want_err, rtol=1e-9)
    np.testing.assert_array_equal(codes, want_codes)
    greedy_codes, greedy_err = naive.residual_greedy(x, books)
    assert np.any(greedy_err[:, -1] > want_err + 1e-9)  # the case is not one greedy already solves


def test_groups_are_independent_stacks_on_slices():
    x = clustered(800, 8, seed=1)
    grouped = vqcore.ResidualQuantizer(8, 10, 3, groups=2, seed=0).fit(x, iters=5, progress=False)
    codes = grouped.encode(x)
    assert codes.shape == (800, 2, 3) and grouped.codebooks.shape == (2, 3, 10, 4)
    for g in range(2):
        want, _ = naive.residual_greedy(x[:, 4 * g:4 * g + 4], grouped.codebooks[g])
        assert np.mean(codes[:, g] == want) > 0.999
    out = grouped.decode(codes[..., :2])
    books = grouped.codebooks
    for g in range(2):
        np.testing.assert_allclose(out[:, 4 * g:4 * g + 4],
                                   books[g][0][codes[:, g, 0]] + books[g][1][codes[:, g, 1]], rtol=1e-5, atol=1e-6)
    assert grouped.encode(x[:7], beam_size=3).shape == (7, 2, 3)


def _seed_stack(grouped, **options):
    torch = pytest.importorskip("torch")
    seed = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    if grouped:
        return seed.GroupedResidualVQ(dim=8, groups=2, num_quantizers=3, codebook_size=16, **options).train()
    return seed.ResidualVQ(dim=8, num_quantizers=3, codebook_size=16, **options).train()


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("options", [dict(), dict(use_cosine_sim=True), dict(shared_codebook=True), dict(decay=0.9)],
                         ids=["euclidean", "cosine", "shared", "decay"])
def test_ema_training_equals_stepping_the_seed_residual_vq(grouped, options):
    torch = pytest.importorskip("torch")
    layer = _seed_stack(grouped, **options)
    ours = vqcore.ResidualQuantizer(8, 16, 3, groups=2 if grouped else 1, seed=0, **options)
    state = layer.state_dict()
    assert set(state) == set(ours.state_dict())
    ours.load_state_dict(state)
    rng = np.random.default_rng(5)
    for step in range(4):
        x = (rng.standard_normal((2, 32, 8)) * (1 + step)).astype(np.float32)
        with torch.no_grad():
            quantized, indices, _ = layer(torch.from_numpy(x))
        out, codes = ours.partial_fit(x)
        want = indices.numpy()
        if grouped:  # the seed stacks groups first: (groups, b, n, stages)
            want = np.moveaxis(want, 0, -2)
        np.testing.assert_array_equal(codes, want)
        np.testing.assert_allclose(out, quantized.numpy(), rtol=1e-4, atol=1e-5)
        theirs = layer.state_dict()
        for key, value in ours.state_dict().items():
            np.testing.assert_allclose(value, theirs[key].numpy(), rtol=1e-4, atol=1e-6, err_msg=key)


def test_decode_equals_the_seed_output_from_indices():
    torch = pytest.importorskip("torch")
    layer = _seed_stack(False).eval()
    ours = vqcore.ResidualQuantizer(8, 16, 3, seed=0).load_state_dict(layer.state_dict())
    codes = np.random.default_rng(0).integers(0, 16, (20, 3))
    with torch.no_grad():
        want = layer.get_output_from_indices(torch.from_numpy(codes)[None])[0].numpy()
    np.testing.assert_allclose(ours.decode(codes), want, rtol=1e-6)


def test_ema_fit_runs_epochs_of_partial_fit():
    x = clustered(600, 6, seed=2)
    a = vqcore.ResidualQuantizer(6, 8, 2, seed=1)
    b = vqcore.ResidualQuantizer(6, 8, 2, seed=1)
    a.fit(x, method="ema", batch_size=200, epochs=2, shuffle=False, progress=False)
    for _ in range(2):
        for start in range(0, 600, 200):
            b.partial_fit(x[start:start + 200])
    np.testing.assert_array_equal(a.codebooks, b.codebooks)
    assert len(a.usage()["perplexity"]) == 2


def test_refine_passes_do_not_increase_the_training_error():
    x = clustered(1200, 6, seed=3)
    plain = vqcore.ResidualQuantizer(6, 8, 3, seed=0).fit(x, iters=6, progress=False)
    refined = vqcore.ResidualQuantizer(6, 8, 3, seed=0).fit(x, iters=6, refine=2, progress=False)
    assert refined.score(x, beam_size=8)["mse"] <= plain.score(x, beam_size=8)["mse"] * 1.01


def test_projections_from_a_seed_state_are_applied():
    torch = pytest.importorskip("torch")
    seed = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    layer = seed.ResidualVQ(dim=8, codebook_dim=4, num_quantizers=2, codebook_size=8).eval()
    ours = vqcore.ResidualQuantizer(8, 8, 2, codebook_dim=4, seed=0).load_state_dict(layer.state_dict())
    x = np.random.default_rng(1).standard_normal((1, 10, 8)).astype(np.float32)
    with torch.no_grad():
        quantized, indices, _ = layer(torch.from_numpy(x))
    vectors, codes = ours.quantize(x)
    np.testing.assert_array_equal(codes, indices.numpy())
    np.testing.assert_allclose(vectors, quantized.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2])
def test_files_round_trip(tmp_path, groups):
    x = clustered(500, 8, seed=4)
    rq = vqcore.ResidualQuantizer(8, 300, 2, groups=groups, beam_size=2, seed=0, decay=0.9)
    rq.fit(x, iters=3, progress=False)
    rq.save(tmp_path / "rq.npz")
    again = vqcore.load(tmp_path / "rq.npz")
    assert isinstance(again, vqcore.ResidualQuantizer) and again.config == rq.config
    codes = rq.encode(x)
    assert codes.dtype == np.uint16  # 300 codes need more than a byte
    np.testing.assert_array_equal(again.encode(x), codes)
    for key, value in rq.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[key], value)
    with pytest.raises(ValueError, match="not a ProductQuantizer"):
        vqcore.ProductQuantizer.load(tmp_path / "rq.npz")


def test_load_refuses_files_that_are_not_vqcore(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a vqcore file"):
        vqcore.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable"):
        vqcore.load(tmp_path / "junk.npz")


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(groups=3), ValueError, "groups=3 does not divide dim=8"),
        (dict(beam_size=0), ValueError, "beam_size=0"),
        (dict(num_quantizers=0), ValueError, "num_quantizers=0"),
        (dict(codebook_size=2.0), TypeError, "codebook_size"),
        (dict(use_cosine_sim=True, beam_size=2), ValueError, "beam_size > 1"),
        (dict(affine_param=True), TypeError, "unknown codebook options ['affine_param']"),
        (dict(comm="world"), TypeError, "comm='world'"),
        (dict(decay=2.0), ValueError, "decay=2.0"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, words):
    args = dict(dim=8, codebook_size=4, num_quantizers=2)
    args.update(kwargs)
    with pytest.raises(error) as info:
        vqcore.ResidualQuantizer(**args)
    assert words in str(info.value)


def test_bad_input_changes_nothing():
    x = clustered(200, 8, seed=5)
    rq = vqcore.ResidualQuantizer(8, 4, 2, seed=0)
    before = rq.state_dict()
    bad = x.copy()
    bad[3, 2] = np.nan
    cases = [
        (lambda: rq.partial_fit(bad), ValueError, "NaN or Inf"),
        (lambda: rq.fit(bad, progress=False), ValueError, "NaN or Inf"),
        (lambda: rq.fit(x[:, :5], progress=False), ValueError, "dim=8"),
        (lambda: rq.fit(x.astype(np.int64), progress=False), TypeError, "int64"),
        (lambda: rq.fit(x, method="sgd"), ValueError, "method='sgd'"),
        (lambda: rq.fit(x, init="kmeans++"), ValueError, "init='kmeans++'"),
        (lambda: rq.encode(x, beam_size=0), ValueError, "beam_size=0"),
        (lambda: rq.decode(np.full((3, 2), 4)), ValueError, "[0, 4)"),
        (lambda: rq.decode(np.full((3, 2), -1)), ValueError, "[0, 4)"),
        (lambda: rq.decode(np.zeros((3, 3), int)), ValueError, "at most 2 stages"),
        (lambda: rq.decode(np.zeros((3, 2))), TypeError, "integers"),
        (lambda: rq.load_state_dict({"layers.0._codebook.embed": np.zeros((1, 5, 8))}), ValueError, "shape"),
    ]
    for call, error, words in cases:
        with pytest.raises(error) as info:
            call()
        assert words in str(info.value), (words, str(info.value))
    after = rq.state_dict()
    assert all(np.array_equal(before[key], after[key]) for key in before)


def test_encode_refuses_codebooks_waiting_for_kmeans_init():
    rq = vqcore.ResidualQuantizer(4, 4, 2, kmeans_init=True, seed=0)
    with pytest.raises(ValueError, match="not been trained"):
        rq.encode(np.ones((3, 4), np.float32))
    rq.partial_fit(clustered(50, 4))
    assert rq.encode(np.ones((3, 4), np.float32)).shape == (3, 2)


def test_shared_codebook_trains_with_ema_only():
    with pytest.raises(ValueError, match="method='ema'"):
        vqcore.ResidualQuantizer(4, 4, 2, shared_codebook=True).fit(np.zeros((10, 4), np.float32), progress=False)


def test_grouped_decode_needs_the_group_axis():
    rq = vqcore.ResidualQuantizer(8, 4, 2, groups=2, seed=0)
    with pytest.raises(ValueError, match="groups=2"):
        rq.decode(np.zeros((5, 2), int))


def test_untrained_projections_warn():
    with pytest.warns(UserWarning, match="projections"):
        vqcore.ResidualQuantizer(8, 4, 2, codebook_dim=3, seed=0).fit(clustered(100, 8), iters=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vqcore.ResidualQuantizer(8, 4, 2, seed=0).fit(clustered(100, 8), iters=1, progress=False)


@pytest.mark.skipif(not mpi_available(), reason='needs mpiexec and mpi4py: pip install "vqcore[mpi]"')
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_training_on_shards_equals_one_process_on_the_concatenation(ranks):
    # RQ (plain, grouped) and PQ k-means fits and RQ EMA steps; rank 1 holds no rows
    result = run_mpi("residual.py", ranks)
    assert result.returncode == 0 and f"OK {ranks}" in result.stdout, describe(result)


def test_beam_training_starts_like_greedy_training_and_encodes_in_chunks(monkeypatch):
    x = clustered(900, 6, seed=6)
    greedy = vqcore.ResidualQuantizer(6, 8, 3, seed=0).fit(x, iters=4, progress=False)
    same = vqcore.ResidualQuantizer(6, 8, 3, seed=0).fit(x, iters=4, beam_size=1, progress=False)
    np.testing.assert_array_equal(same.codebooks, greedy.codebooks)
    beamed = vqcore.ResidualQuantizer(6, 8, 3, beam_size=3, seed=0).fit(x, iters=4, progress=False)
    np.testing.assert_array_equal(beamed.codebooks[0], greedy.codebooks[0])  # stage 0 sees the input in both
    assert not np.array_equal(beamed.codebooks[1], greedy.codebooks[1])  # later stages see the beams' residuals
    whole = beamed.encode(x)
    monkeypatch.setattr(vqcore.beam, "BEAM_BLOCK_BYTES", 1)  # one row per block
    np.testing.assert_array_equal(beamed.encode(x), whole)


def test_beam_training_refines_from_beam_codes():
    x = clustered(900, 6, seed=7)
    rq = vqcore.ResidualQuantizer(6, 8, 3, beam_size=2, seed=0).fit(x, iters=4, refine=1, progress=False)
    assert rq.score(x)["mse"] < rq.score(x, beam_size=1)["mse"] * 1.01


def test_state_of_vqtorch_residual_vq_loads_and_quantizes_alike():
    torch = pytest.importorskip("torch")
    vqtorch = pytest.importorskip("vqtorch")
    torch.manual_seed(1)
    layer = vqtorch.ResidualVQ(dim=8, num_quantizers=3, codebook_size=16).eval()
    ours = vqcore.ResidualQuantizer(8, 16, 3).load_state_dict(layer.state_dict())
    x = np.random.default_rng(2).standard_normal((1, 20, 8)).astype(np.float32)
    with torch.no_grad():
        quantized, indices, _ = layer(torch.from_numpy(x))
    vectors, codes = ours.quantize(x)
    np.testing.assert_array_equal(codes, indices.numpy())
    np.testing.assert_allclose(vectors, quantized.numpy(), rtol=1e-6, atol=1e-6)
    assert set(ours.state_dict()) == set(layer.state_dict())


def test_partial_fit_refused_in_a_later_stage_leaves_every_stage_and_the_generator_unchanged(monkeypatch):
    """Stage 2 raising (here: its EMA step) undoes stage 1's update and rewinds the shared generator."""
    import copy

    from vqcore import ResidualQuantizer

    quantizer = ResidualQuantizer(dim=4, codebook_size=8, num_quantizers=2, seed=0, kmeans_init=True)
    rng = np.random.default_rng(1)
    quantizer.partial_fit(rng.standard_normal((64, 4)).astype(np.float32))
    before = copy.deepcopy(quantizer.state_dict())
    generator = copy.deepcopy(quantizer.rng.bit_generator.state)

    def refuse(*args, **kwargs):
        raise ValueError("stage 2 refused")
    monkeypatch.setattr(quantizer._stages[0][1], "apply_ema", refuse)
    with pytest.raises(ValueError, match="stage 2 refused"):
        quantizer.partial_fit(rng.standard_normal((64, 4)).astype(np.float32))
    after = quantizer.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert np.array_equal(np.asarray(after[key]), np.asarray(value)), key
    assert quantizer.rng.bit_generator.state == generator
