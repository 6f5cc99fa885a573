"""vqtorch.FSQ against the seed's FSQ (vector-quantize-pytorch 1.14.5), number for number.

Both layers are built under the same torch seed (so projections start equal), then run
several SGD steps on the same inputs; every output, index, input gradient and parameter is
compared at each step. The shared helpers here also drive the LFQ tests.
"""
import warnings

import pytest
import torch

from vqtorch import FSQ

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    seed_fsq = pytest.importorskip("vector_quantize_pytorch.finite_scalar_quantization")


def build_pair(seed_class, our_class, torch_seed=0, **kwargs):
    """(seed layer, our layer) built under the same torch seed; state dicts load both ways, strictly."""
    torch.manual_seed(torch_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = seed_class(**kwargs)
    torch.manual_seed(torch_seed)
    ours = our_class(**kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return theirs, ours


def assert_same(ours, theirs, rtol, atol, what):
    """Recursively compare (named) tuples of tensors: dtype, shape and values."""
    if isinstance(theirs, (tuple, list)):
        assert type(ours).__name__ == type(theirs).__name__ and len(ours) == len(theirs), what
        for k, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, rtol, atol, f"{what}[{k}]")
        return
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, (what, ours.dtype, theirs.dtype)
    if ours.dtype.is_floating_point:
        torch.testing.assert_close(ours, theirs, rtol=rtol, atol=atol, msg=what)
    else:
        assert torch.equal(ours, theirs), what


def train_pair(theirs, ours, inputs, call, steps=3, lr=0.05, rtol=1e-5, atol=1e-6, torch_seed=1):
    """SGD steps on both layers; each step compares outputs, input gradients and parameters.

    ``call(layer, x)`` returns ``(outputs, loss)``; ``inputs`` is a list of input tensors
    (one per step, reused cyclically). Both calls of a step start from the same torch seed.
    """
    params_t, params_o = list(theirs.parameters()), list(ours.parameters())
    opt_t = torch.optim.SGD(params_t, lr=lr) if params_t else None
    opt_o = torch.optim.SGD(params_o, lr=lr) if params_o else None
    for step in range(steps):
        x = inputs[step % len(inputs)]
        x_t, x_o = x.clone().requires_grad_(), x.clone().requires_grad_()
        torch.manual_seed(torch_seed + step)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            out_t, loss_t = call(theirs, x_t)
        torch.manual_seed(torch_seed + step)
        out_o, loss_o = call(ours, x_o)
        assert_same(out_o, out_t, rtol, atol, f"outputs at step {step}")
        loss_t.backward()
        loss_o.backward()
        torch.testing.assert_close(x_o.grad, x_t.grad, rtol=rtol, atol=atol, msg=lambda m: f"input gradient, step {step}: {m}")
        for opt in (opt_t, opt_o):
            if opt is not None:
                opt.step()
                opt.zero_grad()
        for (name, p_o), p_t in zip(ours.named_parameters(), params_t):
            torch.testing.assert_close(p_o, p_t, rtol=rtol, atol=atol, msg=f"{name} after step {step}")


def weighted_sum(out, seed=123):
    """A loss that gives every output element its own gradient."""
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    return (out * g).sum()


CASES = [
    # (kwargs, input shape)
    (dict(levels=[8, 5, 5, 5]), (2, 40, 4)),
    (dict(levels=[7, 5, 3]), (2, 40, 3)),
    (dict(levels=[8, 6, 4, 2]), (3, 17, 4)),
    (dict(levels=[8, 5, 5, 5], dim=12), (2, 40, 12)),
    (dict(levels=[7, 4, 3], num_codebooks=2), (2, 6, 5, 4)),  # image, two codebooks, no projections
    (dict(levels=[5, 3], dim=7, num_codebooks=3), (2, 7, 3, 4, 5)),  # video with projections
    (dict(levels=[4, 4], num_codebooks=2, keep_num_codebooks_dim=True), (2, 9, 4)),
    (dict(levels=[6, 5], keep_num_codebooks_dim=True), (2, 9, 2)),
    (dict(levels=[17, 12, 25]), (2, 40, 3)),  # large odd/even levels
]


# With projections, vqtorch fuses them with the bound on CPU (float32/float64): its sums run in
# another order than BLAS's, so float32 values differ from the seed's in the last bits, and
# SGD steps carry the difference on; indices stay equal. float64 shows the same numbers
# (test_fused_projections_match_module_calls).
PROJECTION_TOL = dict(rtol=1e-4, atol=1e-5)


def tolerance(layer):
    """Bit for bit without projections; :data:`PROJECTION_TOL` with them."""
    return PROJECTION_TOL if layer.has_projections else dict(rtol=0, atol=0)


def fsq_call(layer, x):
    out, indices = layer(x)
    return (out, indices), weighted_sum(out)


@pytest.mark.parametrize("kwargs,shape", CASES, ids=lambda v: str(v))
def test_training_steps_match_seed(kwargs, shape):
    theirs, ours = build_pair(seed_fsq.FSQ, FSQ, **kwargs)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(shape, generator=gen) * 2 for _ in range(3)]
    train_pair(theirs, ours, inputs, fsq_call, **tolerance(ours))
    torch.testing.assert_close(ours.implicit_codebook, theirs.implicit_codebook, rtol=0, atol=0)
    # eval mode and the inverse map, through the projections too
    ours.eval(), theirs.eval()
    out_o, idx_o = ours(inputs[0])
    out_t, idx_t = theirs(inputs[0])
    assert torch.equal(idx_o, idx_t)
    torch.testing.assert_close(ours.indices_to_codes(idx_o), theirs.indices_to_codes(idx_t), **tolerance(ours))
    torch.testing.assert_close(ours.indices_to_codes(idx_o, project_out=False),
                               theirs.indices_to_codes(idx_t, project_out=False), rtol=0, atol=0)
    torch.testing.assert_close(ours.indices_to_codes(idx_o), out_o, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("allowed", [(torch.float32, torch.float64), (torch.float16, torch.bfloat16, torch.float32)])
def test_dtypes_match_seed(dtype, allowed):
    theirs, ours = build_pair(seed_fsq.FSQ, FSQ, levels=[8, 6, 5], allowed_dtypes=allowed)
    x = torch.randn(2, 30, 3).to(dtype)
    train_pair(theirs, ours, [x], fsq_call, steps=1, rtol=0, atol=0)


def test_codes_to_indices_and_bound_match_seed():
    theirs, ours = build_pair(seed_fsq.FSQ, FSQ, levels=[8, 5, 4, 3])
    z = torch.randn(50, 4) * 3
    torch.testing.assert_close(ours.bound(z), theirs.bound(z), rtol=0, atol=0)
    codes = theirs.quantize(z)
    torch.testing.assert_close(ours.quantize(z), codes, rtol=0, atol=0)
    assert torch.equal(ours.codes_to_indices(codes), theirs.codes_to_indices(codes))
    every = torch.arange(ours.codebook_size)
    assert torch.equal(ours.codes_to_indices(ours.indices_to_codes(every, project_out=False)), every.int())


def test_large_levels_round_trip_where_the_seed_truncates():
    """Levels >= 26: the seed's float index truncates below the integer; ours rounds (fixed upstream later)."""
    ours = FSQ([27, 40])
    every = torch.arange(ours.codebook_size)
    codes = ours.indices_to_codes(every, project_out=False)
    assert torch.equal(ours.codes_to_indices(codes), every.int())
    out, indices = ours(torch.randn(2, 500, 2) * 2)
    assert torch.equal(ours.indices_to_codes(indices, project_out=False), out)


def test_gradient_is_the_bound_derivative_in_float64():
    """Straight-through: d out / d z = d bound / d z / half_width, checked against autograd of the formula."""
    ours = FSQ([8, 5, 3])
    z = torch.randn(6, 10, 3, dtype=torch.float64, requires_grad=True)
    out, _ = ours(z)
    weighted_sum(out).backward()
    z2 = z.detach().clone().requires_grad_()
    bounded = ours.bound(z2)
    (weighted_sum(bounded / (ours._levels // 2))).backward()
    torch.testing.assert_close(z.grad, z2.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(levels=[]), ValueError, "empty"),
    (dict(levels=[8, 1]), ValueError, "levels=[8, 1]"),
    (dict(levels=[8, 2.5]), TypeError, "2.5"),
    (dict(levels="855"), TypeError, "str"),
    (dict(levels=[8, 5], num_codebooks=0), ValueError, "num_codebooks=0"),
    (dict(levels=[8, 5], num_codebooks=2, keep_num_codebooks_dim=False), ValueError, "num_codebooks=2"),
    (dict(levels=[8, 5], dim=0), ValueError, "dim=0"),
    (dict(levels=[2 ** 16, 2 ** 16]), ValueError, "int32"),
])
def test_bad_construction(kwargs, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        FSQ(**kwargs)


def test_bad_inputs():
    layer = FSQ([8, 5, 5], dim=6)
    with pytest.raises(ValueError, match="expected dim=6"):
        layer(torch.randn(2, 10, 5))
    with pytest.raises(ValueError, match=r"\(10, 6\)"):
        layer(torch.randn(10, 6))
    with pytest.raises(TypeError, match="tensor"):
        layer([[1.0] * 6])
    with pytest.raises(ValueError, match=r"\[0, 200\).*\[0, 200\]"):
        layer.indices_to_codes(torch.tensor([[0, 200]]))
    with pytest.raises(ValueError, match="-1"):
        layer.indices_to_codes(torch.tensor([[-1, 2]]))
    with pytest.raises(TypeError, match="float"):
        layer.indices_to_codes(torch.tensor([[0.0, 2.0]]))
    with pytest.raises(ValueError, match="codebook_dim=3"):
        layer.codes_to_indices(torch.zeros(4, 2))


def test_buffers_and_keys_like_seed():
    theirs, ours = build_pair(seed_fsq.FSQ, FSQ, levels=[8, 5, 5, 5], dim=16)
    assert dict(ours.named_buffers()).keys() == dict(theirs.named_buffers()).keys()
    for name, buffer in theirs.named_buffers():
        assert torch.equal(dict(ours.named_buffers())[name], buffer)
    assert ours.codebook_size == theirs.codebook_size == 1000
    assert ours.has_projections and ours.effective_codebook_dim == theirs.effective_codebook_dim


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("loss", ["sum", "weighted"])
@pytest.mark.parametrize("tokens", [3001, 7001])
def test_large_inputs_match_seed_bit_for_bit(dtype, loss, tokens):
    """Sizes where torch's elementwise ops run multi-threaded and vectorised, the CPU path (compiled
    rounding and gradient around torch's tanh) against the seed: outputs, indices and input
    gradients (a broadcast one from ``sum`` too), on 120,048 and 280,048 elements (odd row counts:
    rows of fewer than 256 codes)."""
    allowed = (torch.float32, torch.float64, torch.float16)
    theirs, ours = build_pair(seed_fsq.FSQ, FSQ, levels=[8, 5, 5, 5], num_codebooks=2, allowed_dtypes=allowed)
    x = (torch.randn(5, tokens, 8, generator=torch.Generator().manual_seed(3)) * 2).to(dtype)

    def call(layer, x):
        out, indices = layer(x)
        return (out, indices), out.sum() if loss == "sum" else weighted_sum(out)
    train_pair(theirs, ours, [x], call, steps=1, rtol=0, atol=0)


def test_gradient_under_create_graph_is_the_plain_one():
    """With create_graph the backward runs torch ops (recordable) instead of numpy: same bits."""
    layer = FSQ([8, 5, 3])
    z = torch.randn(4, 5000, 3, requires_grad=True)
    g = torch.randn(4, 5000, 3)
    out, _ = layer(z)
    (plain,) = torch.autograd.grad(out, z, g, retain_graph=True)
    (graphed,) = torch.autograd.grad(out, z, g.requires_grad_(), create_graph=True)
    assert torch.equal(plain, graphed.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_second_derivative_matches_seed(dtype):
    """A gradient penalty differentiates the gradient again: it reaches z through the bound's tanh,
    as in the seed (the backward recomputes t from z instead of using the forward's constant)."""
    theirs, ours = build_pair(seed_fsq.FSQ, FSQ, levels=[8, 5, 5, 5])
    results = []
    for layer in (theirs, ours):
        z = torch.randn(2, 300, 4, dtype=dtype, generator=torch.Generator().manual_seed(1), requires_grad=True)
        out, _ = layer(z)
        (grad,) = torch.autograd.grad((out ** 2).sum(), z, create_graph=True)
        (second,) = torch.autograd.grad((grad * torch.linspace(-1, 1, grad.numel(), dtype=dtype).view_as(grad)).sum(), z)
        results.append((grad.detach(), second))
    assert torch.equal(results[0][0], results[1][0])
    assert results[1][1].abs().sum() > 0
    # the same terms, multiplied and summed in another order than the seed's graph: equal to rounding
    # (absolute: some elements cancel to near 0; the values are of order 1)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(results[1][1], results[0][1], rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("kwargs,shape", [CASES[0], CASES[4], CASES[5]], ids=["plain", "image", "video-projections"])
def test_torch_path_matches_seed(kwargs, shape, monkeypatch):
    """The all-torch bound/round (CUDA, bfloat16), forced on CPU here: the seed's numbers too."""
    import vqtorch.fsq

    monkeypatch.setattr(vqtorch.fsq, "_on_numpy", lambda x: False)
    monkeypatch.setattr(vqtorch.fsq.FSQ, "_fused_applies", lambda self, z: False)
    theirs, ours = build_pair(seed_fsq.FSQ, FSQ, **kwargs)
    inputs = [torch.randn(shape, generator=torch.Generator().manual_seed(k)) * 2 for k in range(2)]
    train_pair(theirs, ours, inputs, fsq_call, steps=2, rtol=0, atol=0 if not ours.has_projections else 1e-6)
