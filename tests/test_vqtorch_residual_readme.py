"""The seed's README examples for ResidualVQ and GroupedResidualVQ run unchanged against vqtorch.

The examples below are quoted verbatim from vector-quantize-pytorch 1.14.5's README (MIT licence),
the code a user of that package already has.  Each runs twice under the same torch seed: once with
``vector_quantize_pytorch`` bound to vqtorch's classes (the import alias a user switching libraries
would use), once with the real package; the variables the example leaves behind must agree in
shape and dtype, on almost every index and on the losses.
"""
import random
import sys
import types
import warnings

import pytest
import torch

import vqtorch

pytestmark = pytest.mark.filterwarnings("ignore:non-integer arguments to randrange:DeprecationWarning")

# The seed scores codes with a float32 cdist; where two codes are within its rounding error of the
# input (common at dim=256 with small initial codes), vqtorch's exact search may pick the other one,
# and the EMA then moves both codebooks slightly apart.  So the examples must agree on almost every
# index and on the losses, not bit for bit (tests/test_vqtorch_residual.py checks bit-level parity
# on data without such ties).
MIN_INDEX_AGREEMENT = 0.97
LOSS_TOL = dict(rtol=2e-2, atol=1e-6)

EXAMPLES = {
    "residual_vq": """\
import torch
from vector_quantize_pytorch import ResidualVQ

residual_vq = ResidualVQ(
    dim = 256,
    num_quantizers = 8,      # specify number of quantizers
    codebook_size = 1024,    # codebook size
)

x = torch.randn(1, 1024, 256)

quantized, indices, commit_loss = residual_vq(x)

# (1, 1024, 256), (1, 1024, 8), (1, 8)
# (batch, seq, dim), (batch, seq, quantizer), (batch, quantizer)

# if you need all the codes across the quantization layers, just pass return_all_codes = True

quantized, indices, commit_loss, all_codes = residual_vq(x, return_all_codes = True)

# *_, (8, 1, 1024, 256)
# all_codes - (quantizer, batch, seq, dim)
""",
    "residual_vq_shared_stochastic": """\
import torch
from vector_quantize_pytorch import ResidualVQ

residual_vq = ResidualVQ(
    dim = 256,
    num_quantizers = 8,
    codebook_size = 1024,
    stochastic_sample_codes = True,
    sample_codebook_temp = 0.1,         # temperature for stochastically sampling codes, 0 would be equivalent to non-stochastic
    shared_codebook = True              # whether to share the codebooks for all quantizers or not
)

x = torch.randn(1, 1024, 256)
quantized, indices, commit_loss = residual_vq(x)

# (1, 1024, 256), (8, 1, 1024), (8, 1)
# (batch, seq, dim), (quantizer, batch, seq), (quantizer, batch)
""",
    "grouped_residual_vq": """\
import torch
from vector_quantize_pytorch import GroupedResidualVQ

residual_vq = GroupedResidualVQ(
    dim = 256,
    num_quantizers = 8,      # specify number of quantizers
    groups = 2,
    codebook_size = 1024,    # codebook size
)

x = torch.randn(1, 1024, 256)

quantized, indices, commit_loss = residual_vq(x)

# (1, 1024, 256), (2, 1, 1024, 8), (2, 1, 8)
# (batch, seq, dim), (groups, batch, seq, quantizer), (groups, batch, quantizer)
""",
    "residual_vq_kmeans_init": """\
import torch
from vector_quantize_pytorch import ResidualVQ

residual_vq = ResidualVQ(
    dim = 256,
    codebook_size = 256,
    num_quantizers = 4,
    kmeans_init = True,   # set to True
    kmeans_iters = 10     # number of kmeans iterations to calculate the centroids for the codebook on init
)

x = torch.randn(1, 1024, 256)
quantized, indices, commit_loss = residual_vq(x)
""",
}


def _alias_module():
    """A stand-in ``vector_quantize_pytorch`` whose classes are vqtorch's."""
    alias = types.ModuleType("vector_quantize_pytorch")
    for name in vqtorch.__all__:
        setattr(alias, name, getattr(vqtorch, name))
    return alias


def _run(code, seed=0):
    torch.manual_seed(seed)
    random.seed(seed)
    namespace = {"__name__": "__readme__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        exec(compile(code, "vector-quantize-pytorch README", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_readme_example_runs_unchanged_and_matches_the_seed(name, monkeypatch):
    code = EXAMPLES[name]
    import vector_quantize_pytorch  # noqa: F401  (the real package, imported before the alias is installed)

    expected = _run(code)
    monkeypatch.setitem(sys.modules, "vector_quantize_pytorch", _alias_module())
    got = _run(code)
    module = got["residual_vq"]
    assert isinstance(module, (vqtorch.ResidualVQ, vqtorch.GroupedResidualVQ))
    compared = [key for key in ("quantized", "indices", "commit_loss", "all_codes") if key in expected]
    assert {"quantized", "indices", "commit_loss"} <= set(compared)
    for key in compared:
        assert got[key].shape == expected[key].shape and got[key].dtype == expected[key].dtype, key
    agreement = (got["indices"] == expected["indices"]).double().mean().item()
    assert agreement >= MIN_INDEX_AGREEMENT, agreement
    torch.testing.assert_close(got["commit_loss"], expected["commit_loss"], **LOSS_TOL)
    assert list(module.state_dict()) == list(expected["residual_vq"].state_dict())
