"""vqtorch.RandomProjectionQuantizer against the seed's (vector-quantize-pytorch 1.14.5)."""
import warnings

import pytest
import torch

from vqtorch import RandomProjectionQuantizer

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    seed_rpq = pytest.importorskip("vector_quantize_pytorch.random_projection_quantizer")

CASES = [
    dict(dim=12, codebook_size=32, codebook_dim=6),
    dict(dim=12, codebook_size=32, codebook_dim=6, num_codebooks=3),
    dict(dim=10, codebook_size=16, codebook_dim=4, num_codebooks=2, norm=False),
    dict(dim=8, codebook_size=64, codebook_dim=8, num_codebooks=2, decay=0.5, backend="torch"),
]


def seed_kwargs(kwargs):
    return {k: v for k, v in kwargs.items() if k != "backend"}


@pytest.mark.parametrize("kwargs", CASES, ids=str)
def test_same_seed_same_quantizer_indices_and_loss(kwargs):
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = seed_rpq.RandomProjectionQuantizer(**seed_kwargs(kwargs))
    torch.manual_seed(3)
    ours = RandomProjectionQuantizer(**kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)

    for step in range(2):
        x = torch.randn(2, 25, kwargs["dim"]) * (1 + step)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            expected = theirs(x)
        indices = ours(x)
        assert indices.dtype == expected.dtype and torch.equal(indices, expected)
        targets = torch.randint(0, kwargs["codebook_size"], indices.shape)
        x_t, x_o = x.clone().requires_grad_(), x.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loss_t = theirs(x_t, indices=targets)
        loss_o = ours(x_o, indices=targets)
        torch.testing.assert_close(loss_o, loss_t, rtol=1e-6, atol=1e-6)
        loss_t.backward()
        loss_o.backward()
        torch.testing.assert_close(x_o.grad, x_t.grad, rtol=1e-5, atol=1e-7)
    # the codebook is frozen: forward runs the inner quantizer in eval mode
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)
    assert not ours.vq.training


def test_bad_input():
    with pytest.raises(ValueError, match="codebook_dim=0"):
        RandomProjectionQuantizer(dim=8, codebook_size=16, codebook_dim=0)
    with pytest.raises(TypeError, match="num_codebooks"):
        RandomProjectionQuantizer(dim=8, codebook_size=16, codebook_dim=4, num_codebooks=1.5)
    layer = RandomProjectionQuantizer(dim=8, codebook_size=16, codebook_dim=4)
    with pytest.raises(ValueError, match=r"\(batch, seq, 8\).*\(2, 5, 7\)"):
        layer(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"\(5, 8\)"):
        layer(torch.randn(5, 8))
    with pytest.raises(ValueError, match="16"):
        layer(torch.randn(2, 5, 8), indices=torch.full((2, 5), 16))
