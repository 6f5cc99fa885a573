"""vqtorch.VectorQuantize: checkpoints both ways, codebook access, half precision, bad input."""
import inspect
from functools import partial

import pytest
import torch

from tests.torch_reference import SeedVectorQuantize, backends, make_pair
from vqtorch import VectorQuantize

DIM, K = 12, 24
STATE_CONFIGS = [
    {},
    dict(use_cosine_sim=True),
    dict(heads=2, separate_codebook_per_head=True, codebook_dim=6),
    dict(learnable_codebook=True, ema_update=False),
    dict(orthogonal_reg_weight=1.0),
    dict(kmeans_init=True),
    dict(affine_param=True),
]


def test_constructor_has_every_seed_argument_with_its_default():
    seed_params = inspect.signature(SeedVectorQuantize.__init__).parameters
    ours = inspect.signature(VectorQuantize.__init__).parameters
    for name, param in seed_params.items():
        assert name in ours, name
        assert ours[name].default == param.default, name
    assert ours["backend"].default == "auto"


@pytest.mark.parametrize("kwargs", STATE_CONFIGS)
def test_state_dict_keys_shapes_dtypes_equal_seed(kwargs):
    torch.manual_seed(0)
    ref = SeedVectorQuantize(dim=DIM, codebook_size=K, **kwargs)
    ours = VectorQuantize(dim=DIM, codebook_size=K, **kwargs)
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert list(ref_state) == list(our_state)
    for key in ref_state:
        assert ref_state[key].shape == our_state[key].shape and ref_state[key].dtype == our_state[key].dtype, key
    # Same construction order as the seed: equal torch seeds give equal initial weights.
    torch.manual_seed(0)
    again = VectorQuantize(dim=DIM, codebook_size=K, **kwargs)
    for key, value in ref_state.items():
        if not key.endswith(("codebook_mean", "codebook_variance")):  # torch.empty: arbitrary bits
            torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)
    # Ours into a fresh seed layer and back, strictly.
    torch.manual_seed(1)
    fresh = SeedVectorQuantize(dim=DIM, codebook_size=K, **kwargs)
    fresh.load_state_dict(our_state, strict=True)
    ours.load_state_dict(ref_state, strict=True)


@pytest.mark.parametrize("backend", backends())
def test_trained_affine_checkpoint_loads_both_ways(backend):
    ref, ours = make_pair(backend, dim=DIM, codebook_size=K, affine_param=True)
    x = torch.randn(2, 10, DIM)
    ref.train()(x)
    ours.train()(x)
    # The seed registers batch_mean/batch_variance at the first forward; a fresh vqtorch
    # layer still takes such a checkpoint with strict=True.
    fresh = VectorQuantize(dim=DIM, codebook_size=K, affine_param=True, backend=backend)
    fresh.load_state_dict(ref.state_dict(), strict=True)
    torch.testing.assert_close(fresh._codebook.batch_mean, ref._codebook.batch_mean)
    ref.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(ref.eval()(x)[0], fresh.eval()(x)[0], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kwargs,shape", [
    ({}, (2, 5)),
    (dict(heads=2, codebook_dim=6), (2, 5, 2)),
    (dict(heads=2, separate_codebook_per_head=True, codebook_dim=6), (2, 5, 2)),
    (dict(heads=3, separate_codebook_per_head=True, codebook_dim=4, channel_last=False), (2, 5, 3)),
    (dict(codebook_dim=6), (2, 3, 4)),
])
def test_codes_and_outputs_from_indices_match_seed(kwargs, shape):
    ref, ours = make_pair("torch", dim=DIM, codebook_size=K, **kwargs)
    indices = torch.randint(0, K, shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours.get_codes_from_indices(indices), ref.get_codes_from_indices(indices))
    if kwargs.get("separate_codebook_per_head") or kwargs.get("heads", 1) == 1:
        torch.testing.assert_close(ours.get_output_from_indices(indices), ref.get_output_from_indices(indices))


def test_codebook_property_and_setter():
    ref, ours = make_pair("torch", dim=DIM, codebook_size=K)
    torch.testing.assert_close(ours.codebook, ref.codebook)
    new = torch.randn(K, DIM)
    ours.codebook = new
    torch.testing.assert_close(ours._codebook.embed[0], new)
    learnable = VectorQuantize(dim=DIM, codebook_size=K, heads=2, separate_codebook_per_head=True,
                               learnable_codebook=True, ema_update=False)
    codes = torch.randn(2, K, DIM)
    learnable.codebook = codes  # a Parameter: written without autograd
    torch.testing.assert_close(learnable.codebook.detach(), codes)
    with pytest.raises(ValueError, match="shape"):
        ours.codebook = torch.randn(K + 1, DIM)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("train", [True, False])
def test_half_precision_input(backend, dtype, train):
    # No projection: the seed's float32 Linear would reject half input.
    ref, ours = make_pair(backend, dim=DIM, codebook_size=K, heads=2, separate_codebook_per_head=True,
                          codebook_dim=DIM // 2)
    x = torch.randn(2, 16, DIM).to(dtype)
    ref.train(train)
    ours.train(train)
    ref_q, ref_ind, ref_loss = ref(x)
    our_q, our_ind, our_loss = ours(x.clone().requires_grad_(train))
    assert our_q.dtype == dtype  # the seed returns float32 here
    torch.testing.assert_close(our_ind, ref_ind)
    if train:
        # Straight-through: the output is the input plus a detached offset, rounded once to dtype.
        torch.testing.assert_close(our_q, ref_q.to(dtype))
        torch.testing.assert_close(our_loss, ref_loss, rtol=1e-5, atol=1e-6)
        assert our_loss.dtype == torch.float32
    else:
        torch.testing.assert_close(our_q, ref_q.to(dtype), rtol=0, atol=0)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=2e-5, atol=2e-5)


def test_sync_codebook_defaults_off_without_process_group():
    assert VectorQuantize(dim=4, codebook_size=8)._codebook.comm is None


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(learnable_codebook=True), ValueError, "ema_update=False"),
    (dict(affine_param=True, use_cosine_sim=True), ValueError, "use_cosine_sim"),
    (dict(reinmax=True), ValueError, "straight_through"),
    (dict(sync_update_v=0.5), ValueError, "learnable_codebook"),
    (dict(sync_update_v=1.5, learnable_codebook=True, ema_update=False), ValueError, "sync_update_v"),
    (dict(decay=1.5), ValueError, "decay"),
    (dict(heads=0), ValueError, "heads"),
    (dict(heads=2.0), TypeError, "heads"),
    (dict(codebook_dim=0), ValueError, "codebook_dim"),
    (dict(backend="cuda"), ValueError, "backend"),
    (dict(in_place_codebook_optimizer=3), TypeError, "in_place_codebook_optimizer"),
    (dict(orthogonal_reg_weight=1.0, orthogonal_reg_active_codes_only=True, heads=2,
          separate_codebook_per_head=True), ValueError, "orthogonal_reg_active_codes_only"),
])
def test_incompatible_options_raise(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        VectorQuantize(dim=DIM, codebook_size=K, **kwargs)


@pytest.mark.parametrize("kwargs,x,call,exc,words", [
    ({}, torch.randn(2, 5, DIM + 1), {}, ValueError, "dim=12"),
    ({}, torch.randn(2, 5, 3, DIM), {}, ValueError, "shape"),
    ({}, torch.randint(0, 3, (2, 5, DIM)), {}, TypeError, "floating"),
    (dict(accept_image_fmap=True), torch.randn(2, DIM, 3), {}, ValueError, "shape"),
    ({}, torch.randn(2, 5, DIM), dict(mask=torch.ones(2, 4, dtype=torch.bool)), ValueError, "mask"),
    ({}, torch.randn(2, 5, DIM), dict(mask=torch.ones(2, 5)), ValueError, "bool"),
    ({}, torch.randn(2, DIM), dict(mask=torch.ones(2, 1, dtype=torch.bool)), ValueError, "mask"),
    ({}, torch.randn(2, 5, DIM), dict(indices=torch.full((2, 5), K)), ValueError, "indices"),
    ({}, torch.randn(2, 5, DIM), dict(indices=torch.zeros(2, 5)), TypeError, "integer"),
])
def test_bad_call_raises(kwargs, x, call, exc, words):
    layer = VectorQuantize(dim=DIM, codebook_size=K, **kwargs)
    with pytest.raises(exc, match=words):
        layer(x, **call)


def test_vqcore_backend_refuses_non_cpu_tensors():
    from vqtorch.backends import select_backend

    with pytest.raises(ValueError, match="backend='torch'"):
        select_backend("vqcore", torch.empty(1, device="meta"))


def test_in_place_optimizer_only_steps_codebook():
    torch.manual_seed(0)
    layer = VectorQuantize(dim=DIM, codebook_size=K, codebook_dim=6, learnable_codebook=True, ema_update=False,
                           in_place_codebook_optimizer=partial(torch.optim.SGD, lr=0.5))
    before = layer._codebook.embed.detach().clone()
    proj = layer.project_in.weight.detach().clone()
    layer.train()(torch.randn(2, 8, DIM))
    assert not torch.equal(before, layer._codebook.embed.detach())
    assert torch.equal(proj, layer.project_in.weight.detach())


@pytest.mark.skipif(not hasattr(__import__("vqcore"), "VectorQuantizer"), reason="vqcore.VectorQuantizer missing")
@pytest.mark.parametrize("kwargs", [dict(codebook_dim=6), dict(use_cosine_sim=True, heads=2,
                                                                separate_codebook_per_head=True, codebook_dim=6),
                                    dict(affine_param=True)])
def test_to_vqcore_holds_the_same_quantizer(kwargs):
    torch.manual_seed(0)
    layer = VectorQuantize(dim=DIM, codebook_size=K, **kwargs)
    x = torch.randn(2, 16, DIM)
    layer.train()(x)  # trained statistics (and affine buffers) travel too
    quantizer = layer.to_vqcore()
    for key, value in layer.state_dict().items():
        torch.testing.assert_close(torch.from_numpy(quantizer.state_dict()[key]), value)
    y = torch.randn(2, 16, DIM)
    with torch.no_grad():
        q, ind, _ = layer.eval()(y)
    q_np, ind_np = quantizer.quantize(y.numpy())
    torch.testing.assert_close(torch.from_numpy(ind_np), ind)
    torch.testing.assert_close(torch.from_numpy(q_np), q, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(torch.from_numpy(quantizer.decode(ind_np)), layer.get_output_from_indices(ind),
                               rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("backend", backends())
def test_half_model_keeps_float32_codebook(backend):
    torch.manual_seed(0)
    layer = VectorQuantize(dim=DIM, codebook_size=K, codebook_dim=5, heads=2, backend=backend)
    ref = VectorQuantize(dim=DIM, codebook_size=K, codebook_dim=5, heads=2, backend=backend)
    ref.load_state_dict(layer.state_dict())
    layer = layer.to(torch.bfloat16)
    assert all(t.dtype == torch.float32 for t in layer._codebook.state_dict().values())
    assert layer.project_in.weight.dtype == torch.bfloat16
    x = torch.randn(2, 10, DIM).to(torch.bfloat16).requires_grad_()
    q, ind, loss = layer.train()(x)
    (q.float().sum() + loss.sum()).backward()
    assert q.dtype == x.grad.dtype == torch.bfloat16 and loss.dtype == torch.float32
    # The search runs in float32 on the bfloat16 projection: the nearest code of the projected input.
    z = layer.project_in(x.detach()).float().view(2, 10, 2, 5).reshape(-1, 5)
    codes = ref._codebook.embed[0]
    expected = torch.cdist(z, codes, compute_mode="donot_use_mm_for_euclid_dist").argmin(-1)
    torch.testing.assert_close(ind.reshape(-1), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_finite_check_is_exact_when_the_sum_overflows(dtype):
    from vqtorch.layer import all_finite

    big = torch.full((64,), torch.finfo(dtype).max / 2, dtype=dtype)  # finite, but the sum overflows
    assert all_finite(big)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = big.clone()
        x[17] = bad
        assert not all_finite(x)
        assert not all_finite(torch.where(torch.arange(64) == 5, torch.tensor(bad, dtype=dtype), torch.zeros((), dtype=dtype)))


def _state(module):
    return {key: value.clone() for key, value in module.state_dict().items()}


def _assert_state_is(module, before):
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


UPDATING = [dict(), dict(affine_param=True), dict(kmeans_init=True),
            dict(stochastic_sample_codes=True, sample_codebook_temp=1.0)]
UPDATING_IDS = ["ema", "affine", "kmeans", "stochastic"]


@pytest.mark.parametrize("backend", ["vqcore", "torch"])
@pytest.mark.parametrize("kwargs", UPDATING, ids=UPDATING_IDS)
@pytest.mark.parametrize("case", ["projection-overflow", "statistics-overflow"])
def test_a_batch_that_would_write_inf_is_refused_with_the_state_unchanged(backend, kwargs, case):
    """Finite x that project_in turns into Inf, or whose float32 EMA sums / affine variances
    overflow: a ValueError, and every buffer as it was. Before, the affine statistics changed
    before the search refused, and the EMA wrote Inf into embed and embed_avg."""
    from vqtorch import VectorQuantize

    torch.manual_seed(0)
    projected = case == "projection-overflow"
    layer = VectorQuantize(dim=8, codebook_size=16, codebook_dim=4 if projected else None, backend=backend,
                           **kwargs).train()
    layer(torch.randn(2, 32, 8))  # a normal step first: initialised state to protect
    x = torch.randn(2, 32, 8)
    if projected:
        with torch.no_grad():
            layer.project_in.weight.fill_(1.0)  # 8 * 3e38 overflows
        x[1, 3] = 3e38
        match = r"project_in turned x \(values up to 3e\+38 in magnitude\) into NaN or Inf"
    else:
        x[1, :10] = 3e38  # finite; ten of them in one code overflow a float32 sum
        match = "overflow"
    before = _state(layer)
    with pytest.raises(ValueError, match=match):
        layer(x)
    _assert_state_is(layer, before)


@pytest.mark.parametrize("backend", ["vqcore", "torch"])
@pytest.mark.parametrize("kwargs", UPDATING, ids=UPDATING_IDS)
def test_large_finite_values_that_overflow_nothing_still_train(backend, kwargs):
    """Values near 1e17 (squares 1e34, sums of 64 rows far below 3.4e38) train as in the seed; so do
    values near 3e38 when nothing is summed (frozen codebook, no affine statistics)."""
    from vqtorch import VectorQuantize

    torch.manual_seed(0)
    layer = VectorQuantize(dim=8, codebook_size=16, backend=backend, **kwargs).train()
    layer(torch.randn(2, 32, 8) * 1e17)
    assert all(torch.isfinite(value).all() for value in layer.state_dict().values() if value.is_floating_point())
    if not kwargs.get("affine_param"):
        before = _state(layer)
        out, _, _ = layer(torch.randn(2, 32, 8) * (3e38 / 8), freeze_codebook=True)
        assert torch.isfinite(out).all()
        _assert_state_is(layer, before)


@pytest.mark.parametrize("backend", ["vqcore", "torch"])
def test_a_stack_whose_later_codebook_refuses_undoes_the_earlier_ones(backend):
    """Group 1 trains, then group 2's batch overflows: group 1's update is undone too."""
    from vqtorch import GroupedResidualVQ

    torch.manual_seed(0)
    stack = GroupedResidualVQ(dim=16, groups=2, num_quantizers=2, codebook_size=16, backend=backend).train()
    stack(torch.randn(2, 32, 16))
    before = _state(stack)
    x = torch.randn(2, 32, 16)
    x[1, :10, 8:] = 3e38  # only the second group's features
    with pytest.raises(ValueError, match="overflow"):
        stack(x)
    _assert_state_is(stack, before)


def test_an_interrupted_training_call_leaves_the_layer_unchanged():
    """Anything that raises after the codebook step (here in project_out) undoes that step too."""
    from vqtorch import VectorQuantize

    torch.manual_seed(0)
    layer = VectorQuantize(dim=8, codebook_size=16, codebook_dim=4).train()
    layer(torch.randn(2, 32, 8))
    before = _state(layer)
    handle = layer.project_out.register_forward_hook(lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        layer(torch.randn(2, 32, 8))
    handle.remove()
    _assert_state_is(layer, before)


@pytest.mark.parametrize("stack", [False, True], ids=["VectorQuantize", "ResidualVQ"])
def test_a_refused_call_keeps_earlier_graphs_usable(stack):
    """Gradient accumulation: batch 1's graph, batch 2 refused, then batch 1's backward. The restore
    writes through .data, so no saved tensor looks modified in place."""
    from vqtorch import ResidualVQ, VectorQuantize

    torch.manual_seed(0)
    kwargs = dict(dim=8, codebook_size=16, codebook_dim=4, affine_param=True)
    layer = (ResidualVQ(num_quantizers=2, **kwargs) if stack else
             VectorQuantize(learnable_codebook=True, ema_update=False, **kwargs)).train()
    layer(torch.randn(2, 10, 8))
    x = torch.randn(2, 10, 8, requires_grad=True)
    out, _, loss = layer(x)
    with pytest.raises(ValueError, match="overflows"):
        layer(torch.randn(2, 10, 8) * 1e20)
    (out.sum() + loss.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_calls_under_inference_mode_leave_later_calls_working():
    """Snapshot copies are normal tensors even when taken under inference_mode."""
    from vqtorch import VectorQuantize

    torch.manual_seed(0)
    layer = VectorQuantize(dim=8, codebook_size=16, kmeans_init=True, affine_param=True).eval()
    with torch.inference_mode():
        layer(torch.randn(2, 32, 8))
    layer.train()
    layer(torch.randn(2, 32, 8))
    assert bool(layer._codebook.initted)


def test_a_stack_initialising_in_eval_is_undone_as_a_whole():
    """k-means init happens in evaluation too: a later stage failing undoes the first stage's init."""
    from vqtorch import ResidualVQ

    torch.manual_seed(0)
    stack = ResidualVQ(dim=8, codebook_size=16, num_quantizers=2, kmeans_init=True).eval()
    before = _state(stack)
    handle = stack.layers[1].register_forward_pre_hook(lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        stack(torch.randn(2, 32, 8))
    handle.remove()
    _assert_state_is(stack, before)
    assert not bool(stack.layers[0]._codebook.initted)


def test_state_that_was_already_non_finite_does_not_refuse_calls_that_do_not_write_it():
    """A frozen training call or an eval call writes no EMA state: an Inf already in embed_avg (the
    seed can save one) is not blamed on the batch."""
    from vqtorch import VectorQuantize

    torch.manual_seed(0)
    layer = VectorQuantize(dim=8, codebook_size=16, affine_param=True).train()
    layer(torch.randn(2, 32, 8))
    with torch.no_grad():
        layer._codebook.embed_avg[0, 3, 0] = float("inf")
    for call in (lambda x: layer.train()(x, freeze_codebook=True), lambda x: layer.eval()(x)):
        before = _state(layer)
        x = torch.randn(2, 32, 8)
        out, indices, _ = call(x)  # not refused
        assert out.shape == x.shape and torch.isfinite(out).all() and indices.shape == (2, 32)
        after = layer.state_dict()
        assert torch.equal(after["_codebook.embed_avg"], before["_codebook.embed_avg"])  # Inf left as it was
        assert torch.equal(after["_codebook.embed"], before["_codebook.embed"])
        # the call did run: it updated the affine batch statistics, which it checks
        assert not torch.equal(after["_codebook.batch_mean"], before["_codebook.batch_mean"])
        assert torch.isfinite(after["_codebook.batch_mean"]).all()
