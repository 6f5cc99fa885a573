"""vqcore's numpy FSQ/LFQ (and residual forms) give the torch layers' indices and codes.

References: vqtorch.FSQ / vqtorch.LFQ (themselves checked against the seed), and the seed's
ResidualFSQ / ResidualLFQ in eval mode, whose state dicts the numpy forms load.
"""
import warnings

import numpy as np
import pytest

from vqcore.fsq import FSQ, ResidualFSQ
from vqcore.io import load
from vqcore.lfq import LFQ, ResidualLFQ
from vqcore.state import write_npz

torch = pytest.importorskip("torch")
import vqtorch  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    seed_residual_fsq = pytest.importorskip("vector_quantize_pytorch.residual_fsq")
    seed_residual_lfq = pytest.importorskip("vector_quantize_pytorch.residual_lfq")


def torch_eval(layer, x):
    """(codes, indices) of a torch layer in eval mode, as numpy."""
    layer.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = layer(torch.from_numpy(x))
    return out[0].numpy(), out[1].numpy()


def check_twin(numpy_layer, codes, indices, x, atol=1e-6):
    got = numpy_layer.encode(x)
    assert got.dtype == indices.dtype and got.shape == indices.shape
    np.testing.assert_array_equal(got, indices)
    np.testing.assert_allclose(numpy_layer.decode(got), codes, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("kwargs", [
    dict(levels=[8, 5, 5, 5]), dict(levels=[7, 4, 3, 2], dim=10), dict(levels=[6, 5], num_codebooks=3),
    dict(levels=[5, 3], dim=9, num_codebooks=2), dict(levels=[16, 9], keep_num_codebooks_dim=True),
])
def test_fsq_twin(kwargs, tmp_path):
    torch.manual_seed(0)
    layer = vqtorch.FSQ(**kwargs)
    x = np.random.default_rng(0).normal(scale=2, size=(3, 40, layer.dim)).astype(np.float32)
    codes, indices = torch_eval(layer, x)
    twin = layer.to_vqcore()
    check_twin(twin, codes, indices, x)
    np.testing.assert_array_equal(twin.implicit_codebook, layer._codes_from_indices(
        torch.arange(layer.codebook_size)).numpy())
    twin.save(tmp_path / "fsq.npz")
    check_twin(FSQ.load(tmp_path / "fsq.npz"), codes, indices, x)
    loaded = load(tmp_path / "fsq.npz")  # vqcore.load picks the class from the file's kind
    assert isinstance(loaded, FSQ) and loaded.config == twin.config


@pytest.mark.parametrize("kwargs", [
    dict(codebook_size=16), dict(codebook_size=1024, dim=12), dict(codebook_size=32, num_codebooks=3),
    dict(codebook_size=64, dim=7, num_codebooks=2, codebook_scale=0.5),
])
def test_lfq_twin(kwargs, tmp_path):
    torch.manual_seed(0)
    layer = vqtorch.LFQ(**kwargs)
    x = np.random.default_rng(1).normal(size=(3, 40, layer.dim)).astype(np.float32)
    codes, indices = torch_eval(layer, x)
    twin = layer.to_vqcore()
    check_twin(twin, codes, indices, x)
    np.testing.assert_array_equal(twin.codebook, layer.codebook.numpy())
    twin.save(tmp_path / "lfq.npz")
    check_twin(LFQ.load(tmp_path / "lfq.npz"), codes, indices, x)
    assert isinstance(load(tmp_path / "lfq.npz"), LFQ)


@pytest.mark.parametrize("dim,levels,num_quantizers", [(12, [8, 5, 5, 3], 4), (4, [7, 6, 5, 4], 3)])
def test_residual_fsq_loads_the_seed_and_matches_it(dim, levels, num_quantizers, tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        seed_layer = seed_residual_fsq.ResidualFSQ(dim=dim, levels=levels, num_quantizers=num_quantizers)
    twin = ResidualFSQ(dim, levels, num_quantizers).load_state_dict(seed_layer.state_dict())
    x = np.random.default_rng(2).normal(size=(2, 50, dim)).astype(np.float32)
    codes, indices = torch_eval(seed_layer, x)
    check_twin(twin, codes, indices.astype(np.int32), x)
    np.testing.assert_array_equal(twin.scales, seed_layer.scales.numpy())
    # coarse decode (dropped layers as -1) equals the seed's
    coarse = indices.copy()
    coarse[..., 2:] = -1
    seed_layer.quantize_dropout = True
    with torch.no_grad():
        expected = seed_layer.get_output_from_indices(torch.from_numpy(coarse)).numpy()
    np.testing.assert_allclose(twin.decode(coarse), expected, rtol=1e-6, atol=1e-6)
    twin.save(tmp_path / "rfsq.npz")
    check_twin(ResidualFSQ.load(tmp_path / "rfsq.npz"), codes, indices.astype(np.int32), x)
    assert isinstance(load(tmp_path / "rfsq.npz"), ResidualFSQ)


@pytest.mark.parametrize("dim,codebook_size,num_quantizers", [(12, 64, 4), (5, 32, 3)])
def test_residual_lfq_loads_the_seed_and_matches_it(dim, codebook_size, num_quantizers, tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        seed_layer = seed_residual_lfq.ResidualLFQ(dim=dim, codebook_size=codebook_size,
                                                   num_quantizers=num_quantizers)
    twin = ResidualLFQ(dim, num_quantizers, codebook_size).load_state_dict(seed_layer.state_dict())
    assert sorted(twin.state_dict()) == sorted(seed_layer.state_dict())
    x = np.random.default_rng(3).normal(size=(2, 50, dim)).astype(np.float32)
    codes, indices = torch_eval(seed_layer, x)
    check_twin(twin, codes, indices, x)
    with torch.no_grad():
        expected = seed_layer.get_output_from_indices(torch.from_numpy(indices)).numpy()
    np.testing.assert_allclose(twin.decode(indices), expected, rtol=1e-6, atol=1e-6)
    twin.save(tmp_path / "rlfq.npz")
    check_twin(ResidualLFQ.load(tmp_path / "rlfq.npz"), codes, indices, x)
    assert isinstance(load(tmp_path / "rlfq.npz"), ResidualLFQ)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        FSQ([])
    with pytest.raises(ValueError, match=r"levels=\[8, 1\]"):
        FSQ([8, 1])
    with pytest.raises(ValueError, match="num_codebooks=2"):
        FSQ([8, 5], num_codebooks=2, keep_num_codebooks_dim=False)
    with pytest.raises(ValueError, match="1000.*1024"):
        LFQ(codebook_size=1000)
    with pytest.raises(ValueError, match="dim or codebook_size"):
        LFQ()
    fsq = FSQ([8, 5], dim=4)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\).*\(3, 5\)"):
        fsq.encode(np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="int64"):
        fsq.encode(np.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match=r"\[0, 40\).*\[0, 40\]"):
        fsq.decode(np.array([0, 40]))
    with pytest.raises(TypeError, match="float"):
        fsq.decode(np.array([0.0]))
    with pytest.raises(ValueError, match="num_quantizers=3"):
        ResidualLFQ(8, 3, 16).decode(np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match="project_in.weight has shape"):
        fsq.load_state_dict({"project_in.weight": np.zeros((3, 4)), "project_in.bias": np.zeros(2),
                             "project_out.weight": np.zeros((4, 2)), "project_out.bias": np.zeros(4)})
    write_npz(tmp_path / "other.npz", kind="LFQ", config={}, state={})
    with pytest.raises(ValueError, match="not a FSQ"):
        FSQ.load(tmp_path / "other.npz")


# -- grouped residual twins -------------------------------------------------------------------------

# quantize_dropout (inactive in eval) lets the torch layers decode the first stages only
GROUPED = [
    ("fsq-projections", dict(dim=12, levels=[8, 5, 3], num_quantizers=3, groups=2)),
    ("fsq-no-projections", dict(dim=9, levels=[7, 4, 3], num_quantizers=2, groups=3)),
    ("fsq-one-group", dict(dim=6, levels=[8, 6], num_quantizers=2, groups=1)),
    ("lfq-projections", dict(dim=10, codebook_size=16, num_quantizers=3, groups=2)),
    ("lfq-no-projections", dict(dim=8, codebook_size=16, num_quantizers=2, groups=2)),
]


def grouped_pair(name, kwargs):
    """(torch layer in eval mode, its twin, x, its codes (..., groups, q), its output)."""
    torch.manual_seed(4)
    cls = vqtorch.GroupedResidualFSQ if name.startswith("fsq") else vqtorch.GroupedResidualLFQ
    layer = cls(**kwargs, quantize_dropout=True).eval()
    x = np.random.default_rng(5).normal(scale=1.5, size=(3, 40, layer.dim)).astype(np.float32)
    with torch.no_grad():
        out, indices, *_ = layer(torch.from_numpy(x))
    return layer, layer.to_vqcore(), x, np.moveaxis(indices.numpy(), 0, -2), out.numpy()


@pytest.mark.parametrize("name,kwargs", GROUPED, ids=[g[0] for g in GROUPED])
def test_grouped_residual_twin_matches_the_torch_layer(name, kwargs, tmp_path):
    layer, twin, x, indices, out = grouped_pair(name, kwargs)
    assert twin.code_shape == (layer.groups, layer.rvqs[0].num_quantizers)
    check_twin(twin, out, indices, x)
    with torch.no_grad():  # a coarse decode: the first stage of every group, the rest dropped (-1)
        first = torch.from_numpy(np.moveaxis(indices[..., :1], -2, 0).copy())
        expected = layer.get_output_from_indices(first).numpy()
    np.testing.assert_allclose(twin.decode(indices[..., :1]), expected, rtol=1e-6, atol=1e-6)
    assert sorted(twin.state_dict()) == sorted(layer.state_dict())
    twin.save(tmp_path / "grouped.npz")
    loaded = load(tmp_path / "grouped.npz")  # vqcore.load picks the class from the file's kind
    assert type(loaded) is type(twin) and loaded.config == twin.config
    check_twin(loaded, out, indices, x)


@pytest.mark.parametrize("name,kwargs", [GROUPED[0], GROUPED[3]], ids=["fsq", "lfq"])
def test_grouped_residual_twin_on_the_command_line(name, kwargs, tmp_path):
    from tests.test_cli import vqcore_cmd

    _, twin, x, indices, out = grouped_pair(name, kwargs)
    twin.save(tmp_path / "q.npz")
    np.save(tmp_path / "x.npy", x.reshape(-1, x.shape[-1]))
    for argv in (["encode", "q.npz", "x.npy", "-o", "codes.npy"], ["decode", "q.npz", "codes.npy", "-o", "r.npy"]):
        result = vqcore_cmd(*argv, cwd=tmp_path, separate=True)
        assert result.returncode == 0, result.stderr
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (x.shape[0] * x.shape[1], *twin.code_shape)
    np.testing.assert_array_equal(codes, indices.reshape(codes.shape))
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), out.reshape(-1, x.shape[-1]), rtol=1e-6, atol=1e-6)
    info = vqcore_cmd("info", "q.npz", cwd=tmp_path)
    assert info.returncode == 0 and f"kind:        {type(twin).__name__}" in info.stdout, info
    assert f"codes of shape {twin.code_shape} per vector" in info.stdout and "groups=2" in info.stdout


def test_grouped_residual_twin_bad_input():
    from vqcore.fsq import GroupedResidualFSQ
    from vqcore.lfq import GroupedResidualLFQ

    with pytest.raises(ValueError, match="groups=4 does not divide dim=10"):
        GroupedResidualFSQ(10, [8, 5], num_quantizers=2, groups=4)
    with pytest.raises(ValueError, match="groups=0"):
        GroupedResidualLFQ(8, 2, 16, groups=0)
    with pytest.raises(TypeError, match="groups must be an int, got True"):
        GroupedResidualFSQ(8, [8, 5], num_quantizers=2, groups=True)
    with pytest.raises(ValueError, match="1000.*1024"):
        GroupedResidualLFQ(8, 2, 1000, groups=2)
    twin = GroupedResidualFSQ(8, [8, 5], num_quantizers=2, groups=2)
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\).*\(3, 6\)"):
        twin.encode(np.zeros((3, 6), np.float32))
    with pytest.raises(ValueError, match=r"groups=2, q\), got \(5, 3, 2\)"):
        twin.decode(np.zeros((5, 3, 2), np.int64))
    with pytest.raises(ValueError, match="num_quantizers=2"):
        twin.decode(np.zeros((5, 2, 3), np.int64))
    with pytest.raises(ValueError, match=r"\[-1, 40\), got values in \[40, 40\]"):
        twin.decode(np.full((5, 2, 2), 40))
    with pytest.raises(ValueError, match=r"missing keys \['rvqs.0.project_in.bias'"):
        twin.load_state_dict({"rvqs.0.project_in.weight": np.zeros((2, 4))})
    state = twin.state_dict()
    before = state["rvqs.0.project_in.weight"].copy()
    state["rvqs.0.project_in.weight"] += 1
    state["rvqs.1.project_in.weight"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match="rvqs.1.project_in.weight has shape"):
        twin.load_state_dict(state)
    np.testing.assert_array_equal(twin.state_dict()["rvqs.0.project_in.weight"], before)  # nothing loaded
