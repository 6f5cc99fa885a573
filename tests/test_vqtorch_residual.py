"""Numbers-level parity of vqtorch.ResidualVQ / GroupedResidualVQ with the seed (vector-quantize-pytorch 1.14.5).

Each case builds the seed's module under a fixed torch seed, loads its state into ours with
strict=True, then runs several SGD training steps and an eval forward on the same inputs,
comparing every output, input and parameter gradients and every buffer (tests.torch_reference),
and finally ``get_output_from_indices`` in eval.  Python's ``random`` (quantize dropout) and
torch's generator (k-means seeds, dead codes, gumbel noise) are re-seeded before each module's
forward, so both modules see the same draws; randomised options must then agree exactly.
"""
import random
import warnings
from functools import lru_cache, partial

import pytest
import torch

from tests.test_vqtorch_digits import _train as train_digits_autoencoder
from tests.torch_reference import TOL, SeedVectorQuantize, assert_state_equal, backends, make_input, run_pair
from vqtorch import GroupedResidualVQ, ResidualVQ, VectorQuantize
from vqtorch.residual import dropout_last_stage

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from vector_quantize_pytorch import GroupedResidualVQ as SeedGroupedResidualVQ
    from vector_quantize_pytorch import ResidualVQ as SeedResidualVQ

# The seed's grouped classes draw random.randint(0, 1e7), a float bound Python 3.11 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:non-integer arguments to randrange:DeprecationWarning")

DIM, K, Q = 12, 16, 4
# SGD on the projections: codes that no row picked grow to ~1e4 under the seed's Laplace smoothing, so a
# large step makes the stack chaotic and float32 rounding (a few ulps) would decide the comparison.
LR = 0.02
# vqcore sums rows in another order than the seed's one-hot products (a few ulps); with codes of ~1e4 those ulps
# reach ~1e-4 in gradients that sum over rows.  Indices are still compared exactly.
VQCORE_TOL = dict(rtol=1e-4, atol=1e-4)


def _tol(backend):
    return VQCORE_TOL if backend == "vqcore" else None


def _seed_python_random(module, base=1000):
    """Re-seed Python's ``random`` before each forward of ``module`` (call i uses base + i)."""
    calls = [0]

    def hook(_module, _args):
        random.seed(base + calls[0])
        calls[0] += 1

    module.register_forward_pre_hook(hook)


def _pair(seed_cls, our_cls, backend, seed=0, **kwargs):
    """The seed's module and ours (``backend`` None: a class without that option) with the same state."""
    torch.manual_seed(seed)
    ref = seed_cls(**kwargs)
    ours = our_cls(**kwargs) if backend is None else our_cls(**kwargs, backend=backend)
    ours.load_state_dict(ref.state_dict(), strict=True)
    for module in (ref, ours):
        _seed_python_random(module)
    return ref, ours


def _inputs(layout, dim=DIM, steps=3):
    gen = torch.Generator().manual_seed(123)
    return [make_input(layout, dim, generator=gen) for _ in range(steps)]


def _mask():
    gen = torch.Generator().manual_seed(7)
    mask = torch.rand(2, 24, generator=gen) > 0.3
    mask[:, 0] = True
    return mask


def _seed_stopping_at(stop, num=Q, cutoff=0):
    """A fixed dropout seed whose draw stops after stage ``stop`` (so later stages are dropped)."""
    return next(s for s in range(1000) if random.Random(s).randrange(cutoff, num) == stop)


def _ce_indices(shape, seed=3):
    return torch.randint(0, K, shape, generator=torch.Generator().manual_seed(seed))


def _eval_decode_matches(ref, ours, x, fwd_kwargs=None):
    """Eval indices decode to the same outputs through both modules."""
    ref.eval()
    ours.eval()
    _, indices, *_ = ref(x, **(fwd_kwargs or {}))
    torch.testing.assert_close(ours.get_output_from_indices(indices), ref.get_output_from_indices(indices), **TOL)
    torch.testing.assert_close(ours.get_codes_from_indices(indices), ref.get_codes_from_indices(indices), **TOL)


# (name, constructor kwargs, input layout, forward kwargs)
RVQ_CASES = [
    ("plain", {}, "bnd", {}),
    ("shared-codebook", dict(shared_codebook=True), "bnd", {}),
    ("projection", dict(codebook_dim=6), "bnd", {}),
    ("projection-shared", dict(codebook_dim=6, shared_codebook=True), "bnd", {}),
    ("cosine", dict(use_cosine_sim=True), "bnd", {}),
    ("image-fmap", dict(accept_image_fmap=True), "fmap", {}),
    ("channel-first", dict(channel_last=False), "bdn", {}),
    ("two-d", dict(codebook_dim=6), "bd", {}),
    ("dropout-fixed-seed", dict(quantize_dropout=True), "bnd",
     dict(rand_quantize_dropout_fixed_seed=_seed_stopping_at(1))),
    ("dropout-global-random", dict(quantize_dropout=True), "bnd", {}),
    ("dropout-multiple-cutoff", dict(quantize_dropout=True, quantize_dropout_multiple_of=2,
                                     quantize_dropout_cutoff_index=1), "bnd", {}),
    ("dropout-image-fmap", dict(quantize_dropout=True, accept_image_fmap=True), "fmap", {}),
    ("dropout-all-codes", dict(quantize_dropout=True, codebook_dim=6), "bnd",
     dict(return_all_codes=True, rand_quantize_dropout_fixed_seed=_seed_stopping_at(0))),
    ("all-codes", {}, "bnd", dict(return_all_codes=True)),
    ("all-codes-image-fmap", dict(accept_image_fmap=True), "fmap", dict(return_all_codes=True)),
    ("mask", {}, "bnd", dict(mask=_mask())),
    ("mask-dropout", dict(quantize_dropout=True), "bnd", dict(mask=_mask())),
    ("cross-entropy", {}, "bnd", dict(indices=_ce_indices((2, 24, Q)))),
    ("cross-entropy-projection", dict(codebook_dim=6), "bnd", dict(indices=_ce_indices((2, 24, Q)))),
    ("decay-commitment", dict(decay=0.5, eps=1e-3, commitment_weight=0.3), "bnd", {}),
    ("ce-commitment-mask", dict(commitment_use_cross_entropy_loss=True), "bnd", dict(mask=_mask())),
    ("no-commitment", dict(commitment_weight=0.0, decay=0.99), "bnd", {}),
    ("learnable", dict(learnable_codebook=True, ema_update=False), "bnd", dict(return_all_codes=True)),
    ("freeze", {}, "bnd", dict(freeze_codebook=True)),
]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("name,kwargs,layout,fwd", RVQ_CASES, ids=[c[0] for c in RVQ_CASES])
def test_residual_vq_matches_seed(backend, name, kwargs, layout, fwd):
    ref, ours = _pair(SeedResidualVQ, ResidualVQ, backend, dim=DIM, num_quantizers=Q, codebook_size=K, **kwargs)
    inputs = _inputs(layout)
    run_pair(ref, ours, inputs, train=True, fwd_kwargs=fwd, lr=LR, tol=_tol(backend))
    run_pair(ref, ours, inputs[:1], train=False, fwd_kwargs=fwd, tol=_tol(backend))
    if "indices" not in fwd and layout != "bdn":
        _eval_decode_matches(ref, ours, inputs[1], {"mask": fwd["mask"]} if "mask" in fwd else None)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("train", [True, False])
def test_half_precision_residuals_are_float32_as_in_the_seed(backend, dtype, train):
    """The seed's codebooks return float32, so its residuals are float32 after stage 0: same indices,
    losses and state here; the output comes back in the input's dtype (as VectorQuantize's does)."""
    ref, ours = _pair(SeedResidualVQ, ResidualVQ, backend, dim=DIM, num_quantizers=Q, codebook_size=K)
    # Codes far beyond float16's range: float16 residuals would overflow to inf after stage 0.
    with torch.no_grad():
        for module in (ref, ours):
            for layer in module.layers:
                layer._codebook.embed.mul_(1e5)
    x = (torch.randn(2, 24, DIM) * 1e4).to(dtype)
    ref.train(train)
    ours.train(train)
    ref_q, ref_ind, ref_loss = ref(x)
    our_q, our_ind, our_loss = ours(x)
    assert our_q.dtype == dtype and ref_q.dtype == torch.float32
    torch.testing.assert_close(our_ind, ref_ind, rtol=0, atol=0)
    torch.testing.assert_close(our_q, ref_q.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(our_loss, ref_loss, rtol=1e-5, atol=0)
    assert_state_equal(ref, ours, **(_tol(backend) or {}))


# Randomised options: k-means seeds, dead-code rows and gumbel noise drawn by torch in the seed's order.
RANDOM_CASES = [
    ("kmeans-init", dict(kmeans_init=True, kmeans_iters=3)),
    ("kmeans-init-cosine-shared", dict(kmeans_init=True, use_cosine_sim=True, shared_codebook=True)),
    ("dead-codes", dict(threshold_ema_dead_code=1.5)),
    ("dead-codes-projection-dropout", dict(threshold_ema_dead_code=1.5, codebook_dim=6, quantize_dropout=True)),
    ("stochastic", dict(stochastic_sample_codes=True, sample_codebook_temp=0.5)),
]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("name,kwargs", RANDOM_CASES, ids=[c[0] for c in RANDOM_CASES])
def test_random_options_match_seed_draw_for_draw(backend, name, kwargs):
    ref, ours = _pair(SeedResidualVQ, ResidualVQ, backend, dim=DIM, num_quantizers=3, codebook_size=K, **kwargs)
    run_pair(ref, ours, _inputs("bnd"), train=True, lr=LR, rng_seed=50, tol=_tol(backend))


VQ_RANDOM_CASES = [
    dict(kmeans_init=True, kmeans_iters=4),
    dict(kmeans_init=True, use_cosine_sim=True, heads=2, separate_codebook_per_head=True, codebook_dim=6),
    dict(threshold_ema_dead_code=1.5),
    dict(threshold_ema_dead_code=1.5, use_cosine_sim=True, heads=2, separate_codebook_per_head=True, codebook_dim=6),
]


@pytest.mark.parametrize("kwargs", VQ_RANDOM_CASES)
def test_vector_quantize_default_backend_follows_seed_draws(kwargs):
    """VectorQuantize on the default CPU backend (vqcore kernels) draws k-means seeds and dead-code rows as the seed."""
    torch.manual_seed(0)
    ref = SeedVectorQuantize(dim=DIM, codebook_size=K, **kwargs)
    ours = VectorQuantize(dim=DIM, codebook_size=K, **kwargs)  # backend="auto"
    ours.load_state_dict(ref.state_dict(), strict=True)
    run_pair(ref, ours, _inputs("bnd"), train=True, rng_seed=31)


GROUPED_CASES = [
    ("plain", {}, "bnd", {}),
    ("dropout", dict(quantize_dropout=True), "bnd", {}),
    ("dropout-cutoff-projection", dict(quantize_dropout=True, quantize_dropout_cutoff_index=2, codebook_dim=4),
     "bnd", {}),
    ("image-fmap", dict(accept_image_fmap=True), "fmap", {}),
    ("image-fmap-dropout", dict(accept_image_fmap=True, quantize_dropout=True), "fmap", {}),
    ("mask-kmeans", dict(kmeans_init=True, kmeans_iters=2), "bnd", dict(mask=_mask())),
    ("cross-entropy", {}, "bnd", dict(indices=tuple(_ce_indices((2, 24, Q), seed=s) for s in (1, 2)))),
]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("name,kwargs,layout,fwd", GROUPED_CASES, ids=[c[0] for c in GROUPED_CASES])
def test_grouped_residual_vq_matches_seed(backend, name, kwargs, layout, fwd):
    ref, ours = _pair(SeedGroupedResidualVQ, GroupedResidualVQ, backend, dim=DIM, groups=2, num_quantizers=Q,
                      codebook_size=K, **kwargs)
    inputs = _inputs(layout)
    run_pair(ref, ours, inputs, train=True, fwd_kwargs=fwd, lr=LR, rng_seed=9, tol=_tol(backend))
    run_pair(ref, ours, inputs[:1], train=False, fwd_kwargs=fwd, tol=_tol(backend))
    if "indices" not in fwd:
        _eval_decode_matches(ref, ours, inputs[1], fwd)
        torch.testing.assert_close(ours.codebooks, ref.codebooks, **TOL)


@pytest.mark.parametrize("backend", backends())
def test_grouped_all_codes_is_a_tuple_per_group(backend):
    ref, ours = _pair(SeedGroupedResidualVQ, GroupedResidualVQ, backend, dim=DIM, groups=3, num_quantizers=2,
                      codebook_size=K, quantize_dropout=True)
    x = _inputs("bnd", steps=1)[0]
    out_ref, out_ours = ref(x, return_all_codes=True), ours(x, return_all_codes=True)
    assert isinstance(out_ours[3], tuple) and len(out_ours[3]) == len(out_ref[3]) == 3
    for a, b in zip(out_ref[:3] + out_ref[3], out_ours[:3] + out_ours[3]):
        torch.testing.assert_close(b, a, **TOL)
    assert_state_equal(ref, ours)


@pytest.mark.parametrize("layout,kwargs", [("bd", {}), ("bdn", dict(channel_last=False))])
def test_dropout_with_layouts_the_seed_cannot_drop(layout, kwargs):
    """1.14.5 sizes its -1 indices from x.shape[:2] and fails to stack them for (b, d) and channel-first input."""
    layer = ResidualVQ(dim=DIM, num_quantizers=Q, codebook_size=K, quantize_dropout=True, **kwargs).train()
    x = _inputs(layout, steps=1)[0]
    _, indices, _ = layer(x, rand_quantize_dropout_fixed_seed=_seed_stopping_at(1))
    _, full, _ = layer.eval()(x)
    assert indices.shape == full.shape
    assert (indices[..., 2:] == -1).all() and (indices[..., :2] >= 0).all()


def test_dropped_stages_give_minus_one_and_zero_loss():
    layer = ResidualVQ(dim=DIM, num_quantizers=Q, codebook_size=K, quantize_dropout=True).train()
    x = _inputs("bnd", steps=1)[0]
    stop = 1
    _, indices, losses = layer(x, rand_quantize_dropout_fixed_seed=_seed_stopping_at(stop))
    assert (indices[..., stop + 1:] == -1).all() and (indices[..., :stop + 1] >= 0).all()
    assert (losses[..., stop + 1:] == 0).all() and (losses[..., :stop + 1] > 0).all()
    # Decoding from the first stop + 1 columns only equals decoding with the dropped stages marked -1.
    torch.testing.assert_close(layer.get_output_from_indices(indices[..., :stop + 1]),
                               layer.get_output_from_indices(indices))


@pytest.mark.parametrize("multiple_of,cutoff", [(1, 0), (2, 0), (3, 1), (4, 2)])
def test_dropout_draw_follows_python_random(multiple_of, cutoff):
    num = 7
    for seed in range(30):
        draw = random.Random(seed).randrange(cutoff, num)
        expected = -(-(draw + 1) // multiple_of) * multiple_of - 1  # round the stage count up
        assert dropout_last_stage(num, cutoff, multiple_of, seed) == expected


@pytest.mark.parametrize("make", [
    lambda: ResidualVQ(dim=DIM, num_quantizers=3, codebook_size=K, codebook_dim=6, shared_codebook=True),
    lambda: GroupedResidualVQ(dim=DIM, groups=2, num_quantizers=2, codebook_size=K, codebook_dim=4),
])
def test_state_dict_loads_into_the_seed_strictly(make):
    torch.manual_seed(1)
    ours = make()
    for p in ours.parameters():
        p.data.normal_()
    for name, buf in ours.named_buffers():
        buf.data.uniform_()
    seed_cls = SeedResidualVQ if isinstance(ours, ResidualVQ) else SeedGroupedResidualVQ
    kwargs = dict(dim=DIM, codebook_size=K)
    kwargs.update(dict(num_quantizers=3, codebook_dim=6, shared_codebook=True) if seed_cls is SeedResidualVQ
                  else dict(groups=2, num_quantizers=2, codebook_dim=4))
    ref = seed_cls(**kwargs)
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert_state_equal(ref, ours, rtol=0, atol=0)


# -- bad input: errors before any state changes --------------------------------------------------------------


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _unchanged(module, before):
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


@pytest.mark.parametrize("kwargs,error", [
    (dict(heads=2), ValueError),
    (dict(quantize_dropout=True, quantize_dropout_cutoff_index=Q), ValueError),
    (dict(quantize_dropout_cutoff_index=-1), ValueError),
    (dict(quantize_dropout_multiple_of=0), ValueError),
    (dict(num_quantizers=0), ValueError),
    (dict(num_quantizers=2.0), TypeError),
    (dict(codebook_dim=6, accept_image_fmap=True), ValueError),
])
def test_bad_options_are_refused(kwargs, error):
    options = dict(dim=DIM, num_quantizers=Q, codebook_size=K)
    options.update(kwargs)
    with pytest.raises(error, match=next(iter(kwargs)) if "accept" not in str(kwargs) else "codebook_dim"):
        ResidualVQ(**options)


@pytest.mark.parametrize("groups", [5, 0])
def test_groups_must_divide_dim(groups):
    with pytest.raises(ValueError, match="groups"):
        GroupedResidualVQ(dim=DIM, groups=groups, num_quantizers=2, codebook_size=K)


@pytest.mark.parametrize("indices,match", [
    (_ce_indices((2, 24, Q - 1)), "columns"),
    (_ce_indices((2, 24, Q)).index_fill(1, torch.tensor([3]), -1), "-1"),
    (_ce_indices((2, 24, Q)).index_fill(1, torch.tensor([3]), K), "indices must lie"),
    (_ce_indices((2, 23, Q)), "do not match"),
    (_ce_indices((2, 24, Q)).float(), "integer"),
])
def test_bad_cross_entropy_indices_change_nothing(indices, match):
    layer = ResidualVQ(dim=DIM, num_quantizers=Q, codebook_size=K, quantize_dropout=True).train()
    before = _snapshot(layer)
    with pytest.raises((ValueError, TypeError), match=match):
        layer(_inputs("bnd", steps=1)[0], indices=indices)
    _unchanged(layer, before)


def test_bad_grouped_input_changes_nothing():
    layer = GroupedResidualVQ(dim=DIM, groups=2, num_quantizers=2, codebook_size=K).train()
    before = _snapshot(layer)
    x = _inputs("bnd", steps=1)[0]
    good, bad = _ce_indices((2, 24, 2)), _ce_indices((2, 24, 2)).index_fill(1, torch.tensor([0]), -1)
    with pytest.raises(ValueError, match="-1"):
        layer(x, indices=(good, bad))
    with pytest.raises(ValueError, match="groups=2"):
        layer(x, indices=(good,))
    with pytest.raises(ValueError, match="dim=12"):
        layer(x[..., :8])
    _unchanged(layer, before)


def test_decoding_fewer_columns_needs_dropout():
    layer = ResidualVQ(dim=DIM, num_quantizers=Q, codebook_size=K)
    with pytest.raises(ValueError, match="quantize_dropout"):
        layer.get_output_from_indices(_ce_indices((2, 24, Q - 1)))
    with pytest.raises(ValueError, match="columns"):
        layer.get_codes_from_indices(_ce_indices((2, 24, Q + 1)))


# -- export to vqcore ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: ResidualVQ(dim=DIM, num_quantizers=3, codebook_size=K, codebook_dim=6, shared_codebook=True),
    lambda: ResidualVQ(dim=DIM, num_quantizers=3, codebook_size=K, use_cosine_sim=True, decay=0.5),
    lambda: GroupedResidualVQ(dim=DIM, groups=2, num_quantizers=3, codebook_size=K, codebook_dim=4),
])
def test_to_vqcore_encodes_and_decodes_as_eval_mode(make):
    torch.manual_seed(4)
    module = make()
    x = _inputs("bnd", steps=1)[0]
    module.train()
    for _ in range(2):
        module(x)  # trained codebooks, not the initial ones
    module.eval()
    _, indices, _ = module(x)
    quantizer = module.to_vqcore()
    codes = quantizer.encode(x.numpy())
    expected = indices if isinstance(module, ResidualVQ) else indices.movedim(0, -2)  # group axis last in vqcore
    assert (codes.astype("int64") == expected.numpy()).all()
    decoded = torch.from_numpy(quantizer.decode(codes))
    torch.testing.assert_close(decoded, module.get_output_from_indices(indices).detach(), **TOL)
    for key, value in quantizer.state_dict().items():
        torch.testing.assert_close(torch.as_tensor(value), module.state_dict()[key].float(), rtol=0, atol=0)


DIGITS_STEPS = 30


@lru_cache(maxsize=1)
def _seed_digits_curve():
    return train_digits_autoencoder(partial(SeedResidualVQ, num_quantizers=3), {}, steps=DIGITS_STEPS)


@pytest.mark.parametrize("backend", backends())
def test_digits_autoencoder_trains_like_the_seeds(backend):
    """A residual autoencoder on scikit-learn's digits (k-means init, dead codes): the seed's curve."""
    seed_start, seed_end = _seed_digits_curve()
    start, end = train_digits_autoencoder(partial(ResidualVQ, num_quantizers=3), {"backend": backend},
                                          steps=DIGITS_STEPS)
    assert seed_end < 0.6 * seed_start  # the task is learnable in this budget
    assert end < 0.6 * start
    # Same random draws and the same arithmetic up to rounding: the same curve.
    assert abs(end - seed_end) <= 1e-3 * seed_end, (end, seed_end)


@pytest.mark.parametrize("train", [True, False])
def test_python_random_is_consumed_as_by_the_seed(train):
    """Grouped stacks draw one randint per call (even in eval), plain stacks only when dropping."""
    x = _inputs("bnd", steps=1)[0]
    after = []
    for cls in (SeedGroupedResidualVQ, GroupedResidualVQ, SeedResidualVQ, ResidualVQ):
        extra = dict(groups=2) if "Grouped" in cls.__name__ else {}
        module = cls(dim=DIM, num_quantizers=Q, codebook_size=K, quantize_dropout=True, **extra).train(train)
        random.seed(5)
        module(x)
        after.append(random.random())
    assert after[0] == after[1] and after[2] == after[3]
    random.seed(5)
    assert (after[2] == random.random()) != train  # a plain stack draws only in training
