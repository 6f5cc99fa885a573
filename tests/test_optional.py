"""A plain install: with each optional package hidden, every entry says which extra it needs."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

HIDE = """
import sys
HIDDEN = {hidden!r}
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Hide())
"""
OPTIONAL = ("torch", "sklearn", "matplotlib", "mpi4py", "faiss", "vector_quantize_pytorch")
VQCORE_MODULES = ("vqcore", "vqcore.cli", "vqcore.search", "vqcore.cluster", "vqcore.codebook", "vqcore.ema",
                  "vqcore.comm", "vqcore.sampling", "vqcore.metrics", "vqcore.io", "vqcore.options",
                  "vqcore.layout", "vqcore.quantizer", "vqcore.residual", "vqcore.product", "vqcore.fsq",
                  "vqcore.lfq", "vqcore.state")


def run_hidden(code, hidden=OPTIONAL, cwd=None):
    script = HIDE.format(hidden=tuple(hidden)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_every_vqcore_module_imports_without_optional_packages():
    result = run_hidden(f"import importlib\nfor m in {VQCORE_MODULES!r}: importlib.import_module(m)\n"
                        "assert 'torch' not in sys.modules\nprint('ok')")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_vqtorch_without_torch_names_the_extra():
    result = run_hidden("import vqtorch", hidden=("torch",))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith('vqtorch needs PyTorch: pip install "vqcore[torch]"')


def test_mpicomm_without_mpi4py_names_the_extra():
    result = run_hidden("""
        from vqcore.comm import MPIComm
        try:
            MPIComm()
        except ImportError as exc:
            print(exc)
        """, hidden=("mpi4py",))
    assert 'pip install "vqcore[mpi]"' in result.stdout, (result.stdout, result.stderr)


@pytest.mark.parametrize("package", ["sklearn", "matplotlib"])
def test_demo_without_its_packages_exits_2_naming_the_extra(package, tmp_path):
    result = run_hidden("from vqcore.cli import main\nsys.exit(main(['demo', '--quick', '--out', 'out']))",
                        hidden=(package,), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    name = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}[package]
    assert result.stderr.strip() == f'vqcore: error: vqcore demo needs {name}: pip install "vqcore[demo]"'
    assert not (tmp_path / "out").exists()


def test_every_other_subcommand_runs_with_numpy_alone(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32))
    result = run_hidden("""
        from vqcore.cli import main
        for argv in (["fit", "x.npy", "-k", "8", "--seed", "0", "--quiet", "-o", "cb.npz"],
                     ["encode", "cb.npz", "x.npy", "--quiet", "-o", "codes.npy"],
                     ["decode", "cb.npz", "codes.npy", "--quiet", "-o", "back.npy"],
                     ["info", "cb.npz"]):
            code = main(argv)
            assert code == 0, (argv, code)
        assert not any(name in sys.modules for name in ("torch", "sklearn", "matplotlib", "mpi4py"))
        print("ok")
        """, cwd=tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
    assert np.load(tmp_path / "back.npy").shape == (300, 8)
