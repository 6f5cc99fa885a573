"""Parity of vqtorch's ResidualFSQ / ResidualLFQ and their grouped forms with the seed (1.14.5).

Same protocol as tests/test_vqtorch_residual.py: the seed's module is built under a fixed torch
seed, its state loaded into ours with strict=True, then several SGD steps and an eval forward compare
every output, gradients and buffers; Python's ``random`` (quantize dropout) and torch's generator
(LFQ's entropy subsampling) are re-seeded before each module's forward.  1.14.5's
``quantize_dropout_multiple_of > 1`` raises a NameError in these two files, so it is not compared.
"""
import sys
import warnings

import pytest
import torch

from tests.test_vqtorch_residual import _eval_decode_matches, _inputs, _mask, _pair, _seed_stopping_at
from tests.test_vqtorch_residual_readme import _alias_module, _run
from tests.torch_reference import TOL, assert_state_equal, run_pair
from vqtorch import GroupedResidualFSQ, GroupedResidualLFQ, ResidualFSQ, ResidualLFQ

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import vector_quantize_pytorch as seed

pytestmark = [pytest.mark.filterwarnings("ignore:non-integer arguments to randrange:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

Q = 4
LR = 0.05


# (name, seed class, our class, constructor kwargs, input dim, forward kwargs)
CASES = [
    ("fsq-plain", "ResidualFSQ", dict(dim=3, levels=[5, 4, 3]), {}),
    ("fsq-even-levels-projection", "ResidualFSQ", dict(dim=10, levels=[8, 6, 4]), {}),
    ("fsq-odd-levels", "ResidualFSQ", dict(dim=2, levels=[7, 5]), dict(return_all_codes=True)),
    ("fsq-dropout-fixed-seed", "ResidualFSQ", dict(dim=10, levels=[5, 4, 3], quantize_dropout=True),
     dict(rand_quantize_dropout_fixed_seed=_seed_stopping_at(1), return_all_codes=True)),
    ("fsq-dropout-global-random", "ResidualFSQ", dict(dim=3, levels=[5, 4, 3], quantize_dropout=True), {}),
    ("fsq-dropout-cutoff", "ResidualFSQ", dict(dim=3, levels=[5, 4, 3], quantize_dropout=True,
                                               quantize_dropout_cutoff_index=2), {}),
    ("fsq-grouped", "GroupedResidualFSQ", dict(dim=8, groups=2, levels=[5, 4]), {}),
    ("fsq-grouped-dropout", "GroupedResidualFSQ", dict(dim=12, groups=3, levels=[5, 3], quantize_dropout=True),
     {}),
    ("lfq-plain", "ResidualLFQ", dict(dim=4, codebook_size=16), {}),
    ("lfq-projection", "ResidualLFQ", dict(dim=10, codebook_size=8), dict(return_all_codes=True)),
    ("lfq-mask", "ResidualLFQ", dict(dim=10, codebook_size=16, diversity_gamma=0.5, entropy_loss_weight=0.3),
     dict(mask=_mask())),
    ("lfq-subsampled-entropy", "ResidualLFQ", dict(dim=4, codebook_size=16, frac_per_sample_entropy=0.5), {}),
    ("lfq-dropout-fixed-seed", "ResidualLFQ", dict(dim=10, codebook_size=16, quantize_dropout=True),
     dict(rand_quantize_dropout_fixed_seed=_seed_stopping_at(0), return_all_codes=True)),
    ("lfq-dropout-global-random", "ResidualLFQ", dict(dim=4, codebook_size=16, quantize_dropout=True,
                                                      commitment_loss_weight=0.5), dict(mask=_mask())),
    ("lfq-grouped", "GroupedResidualLFQ", dict(dim=8, groups=2, codebook_size=16), dict(mask=_mask())),
    ("lfq-grouped-dropout", "GroupedResidualLFQ", dict(dim=12, groups=2, codebook_size=8, quantize_dropout=True),
     {}),
]
OURS = {"ResidualFSQ": ResidualFSQ, "GroupedResidualFSQ": GroupedResidualFSQ, "ResidualLFQ": ResidualLFQ,
        "GroupedResidualLFQ": GroupedResidualLFQ}


def _make(name, kwargs):
    """Seed and our module with the same state (these classes have no ``backend`` option)."""
    return _pair(getattr(seed, name), OURS[name], None, num_quantizers=Q, **kwargs)


@pytest.mark.parametrize("name,kwargs,fwd", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_matches_seed(name, kwargs, fwd):
    ref, ours = _make(name, kwargs)
    inputs = _inputs("bnd", dim=kwargs["dim"])
    run_pair(ref, ours, inputs, train=True, fwd_kwargs=fwd, lr=LR, rng_seed=21)
    run_pair(ref, ours, inputs[:1], train=False, fwd_kwargs=fwd)
    _eval_decode_matches(ref, ours, inputs[1], {"mask": fwd["mask"]} if "mask" in fwd else None)
    torch.testing.assert_close(ours.codebooks, ref.codebooks, rtol=0, atol=0)
    assert ours.codebook_size == getattr(ref, "codebook_size", ours.codebook_size)  # the LFQ stacks lack it


@pytest.mark.parametrize("name,kwargs", [
    ("ResidualFSQ", dict(dim=10, levels=[5, 4, 3])),
    ("GroupedResidualLFQ", dict(dim=12, groups=2, codebook_size=8)),
])
def test_state_dict_loads_into_the_seed_strictly(name, kwargs):
    ref, ours = _make(name, kwargs)
    for p in ours.parameters():
        p.data.normal_()
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert_state_equal(ref, ours, rtol=0, atol=0)


def test_grouped_all_codes_is_a_tuple_per_group():
    ref, ours = _make("GroupedResidualFSQ", dict(dim=8, groups=2, levels=[5, 4], quantize_dropout=True))
    x = _inputs("bnd", dim=8, steps=1)[0]
    out_ref, out_ours = ref(x, return_all_codes=True), ours(x, return_all_codes=True)
    assert isinstance(out_ours[2], tuple) and len(out_ours[2]) == 2
    for a, b in zip(out_ref[:2] + out_ref[2], out_ours[:2] + out_ours[2]):
        torch.testing.assert_close(b, a, **TOL)


def test_multiple_of_rounds_the_stage_count_up():
    layer = ResidualLFQ(dim=4, codebook_size=16, num_quantizers=6, quantize_dropout=True,
                        quantize_dropout_multiple_of=3).train()
    x = _inputs("bnd", dim=4, steps=1)[0]
    _, indices, losses = layer(x, rand_quantize_dropout_fixed_seed=_seed_stopping_at(1, num=6))
    # Stage 1 drawn, rounded up to 3 running stages.
    assert (indices[..., 3:] == -1).all() and (indices[..., :3] >= 0).all()
    assert (losses[3:] == 0).all()


@pytest.mark.parametrize("make,error,match", [
    (lambda: ResidualFSQ(dim=4, levels=[1, 3], num_quantizers=2), ValueError, "levels"),
    (lambda: ResidualFSQ(dim=4, levels=[4, 3], num_quantizers=2, num_codebooks=2), ValueError, "num_codebooks"),
    (lambda: ResidualLFQ(dim=4, codebook_size=12, num_quantizers=2), ValueError, "power of 2"),
    (lambda: ResidualLFQ(dim=4, codebook_size=16, num_quantizers=2, quantize_dropout=True,
                         quantize_dropout_cutoff_index=2), ValueError, "cutoff"),
    (lambda: GroupedResidualFSQ(dim=9, groups=2, levels=[4, 3], num_quantizers=2), ValueError, "groups"),
])
def test_bad_options_are_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_input_is_refused():
    layer = ResidualLFQ(dim=4, codebook_size=16, num_quantizers=2)
    with pytest.raises(ValueError, match="dim=4"):
        layer(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="columns"):
        layer.get_output_from_indices(torch.zeros(2, 5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="indices must lie"):
        layer.get_output_from_indices(torch.full((2, 5, 2), 16))


EXAMPLES = {
    "residual_fsq": """\
import torch
from vector_quantize_pytorch import ResidualFSQ

residual_fsq = ResidualFSQ(
    dim = 256,
    levels = [8, 5, 5, 3],
    num_quantizers = 8
)

x = torch.randn(1, 1024, 256)

residual_fsq.eval()

quantized, indices = residual_fsq(x)

# (1, 1024, 256), (1, 1024, 8), (8)
# (batch, seq, dim), (batch, seq, quantizers), (quantizers)

quantized_out = residual_fsq.get_output_from_indices(indices)

# (8, 1, 1024, 8)
# (residual layers, batch, seq, quantizers)

assert torch.all(quantized == quantized_out)
""",
    "residual_lfq": """\
import torch
from vector_quantize_pytorch import ResidualLFQ

residual_lfq = ResidualLFQ(
    dim = 256,
    codebook_size = 256,
    num_quantizers = 8
)

x = torch.randn(1, 1024, 256)

residual_lfq.eval()

quantized, indices, commit_loss = residual_lfq(x)

# (1, 1024, 256), (1, 1024, 8), (8)
# (batch, seq, dim), (batch, seq, quantizers), (quantizers)

quantized_out = residual_lfq.get_output_from_indices(indices)

# (8, 1, 1024, 8)
# (residual layers, batch, seq, quantizers)

assert torch.all(quantized == quantized_out)
""",
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_seed_readme_example_runs_unchanged(name, monkeypatch):
    """The 1.14.5 README's examples (quoted verbatim, MIT licence), through an import alias."""
    expected = _run(EXAMPLES[name])
    monkeypatch.setitem(sys.modules, "vector_quantize_pytorch", _alias_module())
    got = _run(EXAMPLES[name])
    assert isinstance(got[name], OURS["ResidualFSQ" if name == "residual_fsq" else "ResidualLFQ"])
    for key in ("quantized", "indices", "quantized_out"):
        torch.testing.assert_close(got[key], expected[key], **TOL)


@pytest.mark.parametrize("make", [
    lambda: ResidualFSQ(dim=10, levels=[8, 5, 3], num_quantizers=3, quantize_dropout=True),
    lambda: ResidualFSQ(dim=3, levels=[7, 4, 3], num_quantizers=2),
    lambda: ResidualLFQ(dim=10, codebook_size=16, num_quantizers=3, quantize_dropout=True),
])
def test_to_vqcore_encodes_and_decodes_as_eval_mode(make):
    torch.manual_seed(2)
    module = make().eval()
    x = _inputs("bnd", dim=module.dim, steps=1)[0]
    _, indices, *_ = module(x)
    quantizer = module.to_vqcore()
    codes = quantizer.encode(x.numpy())
    assert (codes.astype("int64") == indices.numpy()).all()
    prefix = indices[..., :2] if module.quantize_dropout else indices  # a dropout-trained stack decodes prefixes
    torch.testing.assert_close(torch.from_numpy(quantizer.decode(prefix.numpy())),
                               module.get_output_from_indices(prefix).detach(), **TOL)
