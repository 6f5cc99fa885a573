"""Helpers that run the seed's layer (vector-quantize-pytorch 1.14.5) next to vqtorch's and compare."""
from __future__ import annotations

import warnings

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from vector_quantize_pytorch import VectorQuantize as SeedVectorQuantize

from vqtorch import VectorQuantize

__all__ = ["SeedVectorQuantize", "make_pair", "make_input", "assert_state_equal", "backends", "run_pair"]

# float32 sums in a different order (gather/index_add vs one-hot matmuls) differ by a few ulps.
TOL = dict(rtol=2e-5, atol=2e-5)


def backends():
    """Backends to test (vqcore ships in the same wheel, so both always exist)."""
    return ["torch", "vqcore"]


def make_pair(backend, seed=0, **kwargs):
    """A seed layer and ours holding the same state (loaded with strict=True)."""
    torch.manual_seed(seed)
    ref = SeedVectorQuantize(**kwargs)
    ours = VectorQuantize(**kwargs, backend=backend)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def make_input(layout, dim, *, batch=2, seq=24, generator=None):
    """Input of one layout: "bnd", "bdn" (channel first), "fmap" (b, c, h, w) or "bd" (2-D)."""
    shapes = {"bnd": (batch, seq, dim), "bdn": (batch, dim, seq), "fmap": (batch, dim, 4, 6), "bd": (batch * seq, dim)}
    return torch.randn(*shapes[layout], generator=generator)


def assert_state_equal(ref, ours, **tol):
    """Every buffer and parameter of the two modules, by the seed's state_dict keys."""
    tol = tol or TOL
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert list(ref_state) == list(our_state)
    for key, value in ref_state.items():
        if key.endswith("_needs_init"):
            # after its first update the seed re-registers these 0/1 flags as new CPU tensors,
            # whatever the module's device; ours stay where the module is
            value = value.to(our_state[key].device)
        torch.testing.assert_close(our_state[key], value, equal_nan=True, msg=lambda m: f"{key}: {m}", **tol)


def _step(module, x, weight_seed, fwd_kwargs, optimizer):
    x = x.clone().requires_grad_(True)
    out = module(x, **fwd_kwargs)
    quantize, loss = out[0], out[-1]
    # A fixed random weighting of the output makes every input gradient entry distinct.
    weight = torch.randn(quantize.shape, generator=torch.Generator().manual_seed(weight_seed)).to(quantize.device)
    objective = (quantize * weight).sum() + loss.sum()
    if objective.requires_grad:
        objective.backward()
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters()}
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad()
    return out, x.grad, grads


def run_pair(ref, ours, inputs, *, train=True, fwd_kwargs=None, lr=None, rng_seed=None, tol=None):
    """Feed the same inputs to both layers, comparing outputs, input/parameter gradients and state.

    ``rng_seed`` re-seeds torch before each layer's forward so random draws (gumbel noise,
    k-means seeding, dead-code replacement) coincide on the torch backend.
    """
    tol = tol or TOL
    fwd_kwargs = fwd_kwargs or {}
    ref.train(train)
    ours.train(train)
    opts = [None, None]
    if lr is not None and any(True for _ in ref.parameters()):
        opts = [torch.optim.SGD(m.parameters(), lr=lr) for m in (ref, ours)]
    for i, x in enumerate(inputs):
        results = []
        for module, opt in zip((ref, ours), opts):
            if rng_seed is not None:
                torch.manual_seed(rng_seed + i)
            results.append(_step(module, x, i, fwd_kwargs, opt))
        (ref_out, ref_xgrad, ref_grads), (our_out, our_xgrad, our_grads) = results
        assert len(ref_out) == len(our_out)
        for a, b in zip(ref_out, our_out):
            assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
            if a.dtype.is_floating_point:
                torch.testing.assert_close(b, a, equal_nan=True, **tol)
            else:
                torch.testing.assert_close(b, a)
        if ref_xgrad is None:
            assert our_xgrad is None
        else:
            torch.testing.assert_close(our_xgrad, ref_xgrad, **tol)
        for name, grad in ref_grads.items():
            if grad is None:
                assert our_grads[name] is None or not our_grads[name].any(), name
            else:
                torch.testing.assert_close(our_grads[name], grad, msg=lambda m: f"grad {name}: {m}", **tol)
        assert_state_equal(ref, ours, **tol)
