"""The original README examples (vector-quantize-pytorch 1.14.5) for FSQ, LFQ and
RandomProjectionQuantizer run unchanged on vqtorch: the one change a user makes is the import,
done here by an alias module named ``vector_quantize_pytorch`` that holds vqtorch's classes.

The example texts below are quoted verbatim from that README (section "Random Projection
Quantizer", "Finite Scalar Quantization", "Lookup Free Quantization").
"""
import sys
import types

import pytest
import torch

import vqtorch

RANDOM_PROJECTION = """\
import torch
from vector_quantize_pytorch import RandomProjectionQuantizer

quantizer = RandomProjectionQuantizer(
    dim = 512,               # input dimensions
    num_codebooks = 16,      # in USM, they used up to 16 for 5% gain
    codebook_dim = 256,      # codebook dimension
    codebook_size = 1024     # codebook size
)

x = torch.randn(1, 1024, 512)
indices = quantizer(x) # (1, 1024, 16) - (batch, seq, num_codebooks)
"""

FSQ_EXAMPLE = """\
import torch
from vector_quantize_pytorch import FSQ

levels = [8,5,5,5] # see 4.1 and A.4.1 in the paper
quantizer = FSQ(levels)

x = torch.randn(1, 1024, 4) # 4 since there are 4 levels
xhat, indices = quantizer(x)

print(xhat.shape)    # (1, 1024, 4) - (batch, seq, dim)
print(indices.shape) # (1, 1024)    - (batch, seq)

assert xhat.shape == x.shape
assert torch.all(xhat == quantizer.indices_to_codes(indices))
"""

LFQ_EXAMPLE = """\
import torch
from vector_quantize_pytorch import LFQ

# you can specify either dim or codebook_size
# if both specified, will be validated against each other

quantizer = LFQ(
    codebook_size = 65536,      # codebook size, must be a power of 2
    dim = 16,                   # this is the input feature dimension, defaults to log2(codebook_size) if not defined
    entropy_loss_weight = 0.1,  # how much weight to place on entropy loss
    diversity_gamma = 1.        # within entropy loss, how much weight to give to diversity of codes, taken from https://arxiv.org/abs/1911.05894
)

image_feats = torch.randn(1, 16, 32, 32)

quantized, indices, entropy_aux_loss = quantizer(image_feats, inv_temperature=100.)  # you may want to experiment with temperature

# (1, 16, 32, 32), (1, 32, 32), (1,)

assert image_feats.shape == quantized.shape
assert (quantized == quantizer.indices_to_codes(indices)).all()
"""

LFQ_SEQUENCE_AND_VIDEO = """\

seq = torch.randn(1, 32, 16)
quantized, *_ = quantizer(seq)

assert seq.shape == quantized.shape

video_feats = torch.randn(1, 16, 10, 32, 32)
quantized, *_ = quantizer(video_feats)

assert video_feats.shape == quantized.shape

"""

LFQ_MULTIPLE_CODEBOOKS = """\
import torch
from vector_quantize_pytorch import LFQ

quantizer = LFQ(
    codebook_size = 4096,
    dim = 16,
    num_codebooks = 4  # 4 codebooks, total codebook dimension is log2(4096) * 4
)

image_feats = torch.randn(1, 16, 32, 32)

quantized, indices, entropy_aux_loss = quantizer(image_feats)

# (1, 16, 32, 32), (1, 32, 32, 4), (1,)

assert image_feats.shape == quantized.shape
assert (quantized == quantizer.indices_to_codes(indices)).all()
"""


@pytest.fixture
def alias(monkeypatch):
    """``import vector_quantize_pytorch`` gives vqtorch's classes for the duration of a test."""
    module = types.ModuleType("vector_quantize_pytorch")
    for name in ("FSQ", "LFQ", "RandomProjectionQuantizer", "VectorQuantize"):
        setattr(module, name, getattr(vqtorch, name))
    monkeypatch.setitem(sys.modules, "vector_quantize_pytorch", module)
    return module


def run(*blocks):
    """Run README blocks in one namespace (later blocks continue earlier ones); return it."""
    namespace = {"__name__": "__readme__"}
    for code in blocks:
        exec(compile(code, "README.md (vector-quantize-pytorch 1.14.5)", "exec"), namespace)
    return namespace


def test_random_projection_quantizer(alias):
    torch.manual_seed(0)
    namespace = run(RANDOM_PROJECTION)
    assert isinstance(namespace["quantizer"], vqtorch.RandomProjectionQuantizer)
    assert namespace["indices"].shape == (1, 1024, 16)  # the README's comment
    assert int(namespace["indices"].min()) >= 0 and int(namespace["indices"].max()) < 1024


def test_fsq(alias, capsys):
    namespace = run(FSQ_EXAMPLE)
    assert isinstance(namespace["quantizer"], vqtorch.FSQ)
    assert capsys.readouterr().out.split("\n")[:2] == ["torch.Size([1, 1024, 4])", "torch.Size([1, 1024])"]


def test_lfq_image_sequence_and_video(alias):
    namespace = run(LFQ_EXAMPLE)
    assert isinstance(namespace["quantizer"], vqtorch.LFQ)
    assert namespace["indices"].shape == (1, 32, 32)
    assert namespace["entropy_aux_loss"].requires_grad is False  # no parameters, input without grad
    run_after = dict(namespace)
    exec(compile(LFQ_SEQUENCE_AND_VIDEO, "README.md", "exec"), run_after)
    assert run_after["quantized"].shape == (1, 16, 10, 32, 32)


def test_lfq_multiple_codebooks(alias):
    namespace = run(LFQ_MULTIPLE_CODEBOOKS)
    assert isinstance(namespace["quantizer"], vqtorch.LFQ)
    assert namespace["indices"].shape == (1, 32, 32, 4)
    run_after = dict(namespace)
    exec(compile(LFQ_SEQUENCE_AND_VIDEO, "README.md", "exec"), run_after)
    assert run_after["quantized"].shape == (1, 16, 10, 32, 32)
