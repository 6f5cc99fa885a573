"""vqtorch.LFQ against the seed's LFQ (vector-quantize-pytorch 1.14.5), and its entropy functions.

The entropies are computed without the seed's (tokens, codebooks, codebook_size) matrix:
a factorised form (default) and a blocked softmax (reference). Both are checked with
``gradcheck`` in float64, against each other, and through the layer against the seed.
"""
import warnings

import pytest
import torch
from torch import nn

from tests.test_vqtorch_fsq import assert_same, build_pair, train_pair, weighted_sum
from vqtorch import LFQ
from vqtorch.lfq import softmax_entropies

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    seed_lfq = pytest.importorskip("vector_quantize_pytorch.lookup_free_quantization")

CASES = [
    # (kwargs, input shape, mask, forward kwargs)
    (dict(codebook_size=16), (2, 30, 4), False, {}),
    (dict(codebook_size=2), (2, 30, 1), False, {}),
    (dict(codebook_size=64, dim=10), (2, 30, 10), True, {}),
    (dict(codebook_size=32, dim=12, num_codebooks=3), (2, 12, 5, 4), False, {}),  # image
    (dict(codebook_size=8, num_codebooks=2), (2, 6, 3, 4, 2), False, {}),  # video, no projections
    (dict(codebook_size=256, codebook_scale=0.5, diversity_gamma=2.0), (3, 20, 8), True, {}),
    (dict(codebook_size=128, entropy_loss_weight=0.3, commitment_loss_weight=0.0), (2, 25, 7), False,
     dict(inv_temperature=3.0)),
    (dict(codebook_size=16, frac_per_sample_entropy=0.5), (3, 20, 4), False, {}),
    (dict(codebook_size=64, dim=6, frac_per_sample_entropy=0.3, num_codebooks=2), (3, 20, 6), True, {}),
    (dict(codebook_size=32, straight_through_activation=nn.Tanh()), (2, 20, 5), False, dict(inv_temperature=10.0)),
    (dict(codebook_size=16, keep_num_codebooks_dim=True), (2, 20, 4), False, {}),
    (dict(dim=5), (2, 20, 5), False, {}),
]


def lfq_call(mask, kwargs):
    def call(layer, x):
        ret, breakdown = layer(x, mask=mask, return_loss_breakdown=True, **kwargs)
        return (ret, breakdown), weighted_sum(ret.quantized) + ret.entropy_aux_loss
    return call


@pytest.mark.parametrize("kwargs,shape,use_mask,forward_kwargs", CASES, ids=lambda v: str(v))
def test_training_steps_match_seed(kwargs, shape, use_mask, forward_kwargs):
    theirs, ours = build_pair(seed_lfq.LFQ, LFQ, **kwargs)
    gen = torch.Generator().manual_seed(0)
    # small inputs keep the code distribution soft, so the entropy terms carry real gradients
    inputs = [torch.randn(shape, generator=gen) * 0.05 for _ in range(3)]
    tokens = shape[2:] if len(shape) > 3 else shape[1:2]
    mask = (torch.rand((shape[0], int(torch.tensor(tokens).prod())), generator=gen) > 0.3) if use_mask else None
    # float32 rounding: the seed's own gradients are ~1e-6 off their float64 values (see
    # test_factorized_and_blocked_equal_the_full_matrix for the exact comparison in float64)
    train_pair(theirs, ours, inputs, lfq_call(mask, forward_kwargs), rtol=1e-4, atol=1e-5)
    assert torch.equal(ours.codebook, theirs.codebook)

    ours.eval(), theirs.eval()
    ret_o, ret_t = ours(inputs[0]), theirs(inputs[0])
    assert_same(ret_o, ret_t, 0, 0, "eval outputs")
    for project_out in (True, False):
        torch.testing.assert_close(ours.indices_to_codes(ret_o.indices, project_out=project_out),
                                   theirs.indices_to_codes(ret_t.indices, project_out=project_out), rtol=0, atol=0)
    torch.testing.assert_close(ours.indices_to_codes(ret_o.indices), ret_o.quantized, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_inputs_are_cast_to_float32_like_seed(dtype):
    theirs, ours = build_pair(seed_lfq.LFQ, LFQ, codebook_size=64, dim=9)
    x = (torch.randn(2, 20, 9) * 0.05).to(dtype)
    # gradients come back in the input dtype: one float16/bfloat16 step is 1e-3 / 8e-3 relative
    rtol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(dtype, 1e-4)
    train_pair(theirs, ours, [x], lfq_call(None, {}), steps=2, rtol=rtol, atol=1e-5)


@pytest.mark.parametrize("k,c,scale,inv_temperature", [
    (2, 1, 1.0, 100.0), (16, 1, 1.0, 100.0), (64, 2, 0.5, 30.0), (32, 3, 1.0, 1.0), (256, 1, 0.25, 100.0),
])
@pytest.mark.parametrize("factorized", [True, False])
def test_entropy_gradcheck(k, c, scale, inv_temperature, factorized):
    codebook = LFQ(codebook_size=k, codebook_scale=scale).codebook.double()
    d = codebook.shape[1]
    rows = (torch.randn(7, c, d, dtype=torch.float64) * 0.02).requires_grad_()
    weights = torch.randn(c, k, dtype=torch.float64)

    def loss(r):
        per_sample, avg = softmax_entropies(r, codebook, inv_temperature, factorized=factorized)
        return per_sample * 1.7 + (avg * weights).sum()

    assert torch.autograd.gradcheck(loss, (rows,), eps=1e-7, atol=1e-6, rtol=1e-5)


def naive_entropies(rows, codebook, inv_temperature):
    """The seed's formulas on the full (t, c, k) probabilities."""
    prob = (rows @ codebook.t() * (2 * inv_temperature)).softmax(-1)
    per_sample = (-prob * prob.clamp(min=1e-5).log()).sum(-1).mean()
    return per_sample, prob.mean(0)


@pytest.mark.parametrize("k", [2, 8, 1024, 4096])
def test_factorized_and_blocked_equal_the_full_matrix(k):
    codebook = LFQ(codebook_size=k).codebook.double()
    rows = torch.randn(300, 2, codebook.shape[1], dtype=torch.float64) * 0.03
    ws = torch.randn(2, k, dtype=torch.float64)
    grads = []
    for fn in (naive_entropies, lambda r, cb, t: softmax_entropies(r, cb, t, factorized=True),
               lambda r, cb, t: softmax_entropies(r, cb, t, factorized=False)):
        r = rows.clone().requires_grad_()
        per_sample, avg = fn(r, codebook, 100.0)
        ((per_sample - (avg * avg.clamp(min=1e-5).log()).sum()) * 3 + (avg * ws).sum()).backward()
        grads.append((per_sample.detach(), avg.detach(), r.grad))
    for other in grads[1:]:
        for a, b in zip(other, grads[0]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_blocks_are_small(monkeypatch):
    """The factorised entropies never build a (t, k) matrix: watch the largest softmax they run."""
    import vqtorch.lfq as lfq

    sizes = []
    real = torch.Tensor.softmax

    def spy(self, *args, **kwargs):
        sizes.append(self.numel())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "softmax", spy)
    layer = LFQ(codebook_size=2 ** 16, dim=16)
    ret = layer((torch.randn(1, 2048, 16) * 0.01).requires_grad_())
    ret.entropy_aux_loss.backward()
    assert max(sizes) <= lfq.BLOCK_ELEMENTS
    assert max(sizes) * 16 < 2048 * 2 ** 16


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(), ValueError, "dim or codebook_size"),
    (dict(codebook_size=1000), ValueError, "1000.*1024"),
    (dict(codebook_size=1), ValueError, "got 1"),
    (dict(codebook_size=16, num_codebooks=0), ValueError, "num_codebooks=0"),
    (dict(codebook_size=16, num_codebooks=2, keep_num_codebooks_dim=False), ValueError, "num_codebooks=2"),
    (dict(codebook_size=16, frac_per_sample_entropy=0.0), ValueError, "frac_per_sample_entropy"),
    (dict(codebook_size=16, dim=2.5), TypeError, "2.5"),
    (dict(dim=64), ValueError, "2\\*\\*64"),
    (dict(codebook_size=2 ** 40), ValueError, "2\\*\\*30"),
])
def test_bad_construction(kwargs, error, words):
    with pytest.raises(error, match=words):
        LFQ(**kwargs)


def test_bad_inputs():
    layer = LFQ(codebook_size=16, dim=6)
    with pytest.raises(ValueError, match="expected dim=6"):
        layer(torch.randn(2, 10, 5))
    with pytest.raises(ValueError, match=r"\(10, 6\)"):
        layer(torch.randn(10, 6))
    with pytest.raises(ValueError, match=r"mask.*\(2, 10\)"):
        layer(torch.randn(2, 10, 6), mask=torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[0, 16\).*\[0, 16\]"):
        layer.indices_to_codes(torch.tensor([[0, 16]]))
    with pytest.raises(TypeError, match="float"):
        layer.indices_to_codes(torch.tensor([[0.0]]))


def test_state_dict_keeps_the_seed_persistent_mask():
    theirs, ours = build_pair(seed_lfq.LFQ, LFQ, codebook_size=64, dim=10)
    assert list(ours.state_dict()) == ["mask", "project_in.weight", "project_in.bias",
                                       "project_out.weight", "project_out.bias"]
    assert dict(ours.named_buffers()).keys() == dict(theirs.named_buffers()).keys()


def test_integer_codebook_scale_gives_float_codes_like_seed():
    """ResidualLFQ's first stage gets ``codebook_scale=2 ** 0``, an int: codes must still be float32
    (int64 codes broke the commitment loss's backward on CUDA)."""
    theirs, ours = build_pair(seed_lfq.LFQ, LFQ, codebook_size=16, codebook_scale=1)
    x = torch.randn(2, 20, 4, generator=torch.Generator().manual_seed(0)) * 0.05
    train_pair(theirs, ours, [x], lfq_call(None, {}), steps=2, rtol=1e-4, atol=1e-5)
    ours.eval(), theirs.eval()
    ret_o, ret_t = ours(x), theirs(x)
    assert ret_o.quantized.dtype == torch.float32
    assert_same(ret_o, ret_t, 0, 0, "eval outputs")
