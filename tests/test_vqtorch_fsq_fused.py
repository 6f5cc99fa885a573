"""vqtorch.FSQ's fused CPU path (projections + bound in one kernel) against its module-call path.

The module-call path (``project_in`` -> bound/round -> ``project_out`` as separate calls) is
the seed's, bit for bit (tests/test_vqtorch_fsq.py). The fused path must give the same
numbers up to summation order: tight in float64, float32 rounding in float32, equal
indices; and it must step aside wherever it would change what the layer means.
"""
import pytest
import torch
from torch import nn

import vqtorch.fsq
from vqtorch import FSQ

CASES = [
    # (kwargs, input shape)
    (dict(levels=[8, 5, 5, 5], dim=12), (2, 40, 12)),
    (dict(levels=[7, 4, 3], dim=5, num_codebooks=2), (2, 5, 3, 4)),  # image, two codebooks
    (dict(levels=[5, 3], dim=7, num_codebooks=3), (2, 7, 3, 4, 5)),  # video
    (dict(levels=[8, 6, 4, 2], dim=64), (3, 1001, 64)),  # rows split over threads
]


def pair(dtype=torch.float32, **kwargs):
    """(fused, module-call) layers with the same parameters."""
    torch.manual_seed(0)
    fused = FSQ(**kwargs).to(dtype)
    reference = FSQ(**kwargs).to(dtype)
    reference.load_state_dict(fused.state_dict())
    reference._fused_applies = lambda z: False
    return fused, reference


def step(layer, x, grad):
    """Outputs, indices and the gradients of the input and every parameter for ``(out * grad).sum()``."""
    leaf = x.clone().requires_grad_()
    out, indices = layer(leaf)
    out.backward(grad)
    grads = [leaf.grad] + [p.grad for p in layer.parameters()]
    layer.zero_grad()
    return out, indices, grads


def calls_fused(layer, x):
    """Whether ``layer`` takes the fused path for input ``x``."""
    z, _ = vqtorch.fsq.channel_last_tokens(x, layer.dim)
    return layer._fused_applies(z)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, dict(rtol=1e-12, atol=1e-12)),
                                       (torch.float32, dict(rtol=1e-4, atol=1e-4))])
@pytest.mark.parametrize("kwargs,shape", CASES, ids=lambda v: str(v))
def test_fused_projections_match_module_calls(kwargs, shape, dtype, tol):
    fused, reference = pair(dtype, **kwargs)
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=gen) * 2).to(dtype)
    grad = torch.randn(shape, generator=gen).to(dtype)
    assert calls_fused(fused, x) and not calls_fused(reference, x)
    out_f, idx_f, grads_f = step(fused, x, grad)
    out_r, idx_r, grads_r = step(reference, x, grad)
    assert torch.equal(idx_f, idx_r) and idx_f.dtype == torch.int32
    assert out_f.dtype == dtype and out_f.shape == out_r.shape
    torch.testing.assert_close(out_f, out_r, **tol)
    for g_f, g_r in zip(grads_f, grads_r):
        assert g_f.dtype == g_r.dtype and g_f.shape == g_r.shape
        torch.testing.assert_close(g_f, g_r, **tol)


def test_broadcast_gradient_from_sum():
    """``out.sum().backward()`` hands the kernel a zero-stride gradient: it is read in place, correctly."""
    fused, reference = pair(torch.float64, levels=[8, 5, 5, 5], dim=16)
    x = torch.randn(4, 300, 16, dtype=torch.float64)
    results = []
    for layer in (fused, reference):
        leaf = x.clone().requires_grad_()
        layer(leaf)[0].sum().backward()
        results.append([leaf.grad] + [p.grad for p in layer.parameters()])
    for g_f, g_r in zip(*results):
        torch.testing.assert_close(g_f, g_r, rtol=1e-12, atol=1e-12)


def test_frozen_projections_and_no_grad():
    fused, reference = pair(levels=[5, 4], dim=6)
    x = torch.randn(2, 50, 6)
    with torch.no_grad():
        out_f, idx_f = fused(x)
        out_r, idx_r = reference(x)
    assert torch.equal(idx_f, idx_r)
    torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-5)
    fused.requires_grad_(False)
    leaf = x.clone().requires_grad_()
    fused(leaf)[0].sum().backward()
    assert leaf.grad is not None and all(p.grad is None for p in fused.parameters())


def test_create_graph_gives_the_plain_gradient_and_a_second_derivative():
    fused, _ = pair(torch.float64, levels=[8, 5, 3], dim=10)
    x = torch.randn(3, 200, 10, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 200, 10, dtype=torch.float64)
    out, _ = fused(x)
    plain = torch.autograd.grad(out, [x, *fused.parameters()], g, retain_graph=True)
    graphed = torch.autograd.grad(out, [x, *fused.parameters()], g, create_graph=True)
    for a, b in zip(plain, graphed):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12)
    # the recorded backward is differentiable in the weights: d/dW of |dL/dx|^2
    (second,) = torch.autograd.grad(graphed[0].square().sum(), fused.project_in.weight)
    assert second.shape == fused.project_in.weight.shape and second.abs().sum() > 0


def test_hooks_subclasses_and_autocast_take_the_module_calls():
    fused, _ = pair(levels=[5, 4], dim=6)
    x = torch.randn(2, 30, 6)
    seen = []
    handle = fused.project_in.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    assert not calls_fused(fused, x)
    fused(x)
    assert seen == [torch.Size([2, 30, 2])]
    handle.remove()
    assert calls_fused(fused, x)

    class Scaled(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    fused.project_out = Scaled(2, 6)
    assert not calls_fused(fused, x)

    _, plain = pair(levels=[5, 4], dim=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not calls_fused(plain, x)
    assert not calls_fused(plain, x.bfloat16()) and not calls_fused(plain.double(), x)


def test_empty_input():
    fused, _ = pair(levels=[5, 4], dim=6)
    x = torch.randn(2, 0, 6, requires_grad=True)
    out, indices = fused(x)
    assert out.shape == (2, 0, 6) and indices.shape == (2, 0)
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("dim", [None, 10])
def test_compiled_layer_takes_the_module_calls(dim):
    """Under torch.compile the fused kernels (opaque numpy) step aside for tensor ops, with the eager numbers."""
    fused, reference = pair(levels=[8, 5, 3], dim=dim)
    compiled = torch.compile(fused, backend="aot_eager")
    x = torch.randn(2, 30, fused.dim)
    grad = torch.randn(2, 30, fused.dim)
    out_c, idx_c, grads_c = step(compiled, x, grad)
    out_r, idx_r, grads_r = step(reference, x, grad)
    assert torch.equal(idx_c, idx_r)
    torch.testing.assert_close(out_c, out_r, rtol=0, atol=0)
    for g_c, g_r in zip(grads_c, grads_r):
        torch.testing.assert_close(g_c, g_r, rtol=1e-6, atol=1e-6)
