"""The README's examples run as written, so they cannot rot.

Every ``python`` block, and every ``bash`` block meant to be run, is preceded
by a ``<!-- test: LABEL -->`` comment; each label below runs its blocks in a
temporary directory (``vqcore`` and ``mpiexec`` resolve to this interpreter's
environment).
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent
BLOCK = re.compile(r"(?:<!--\s*test:\s*(?P<label>[\w-]+)\s*-->\s*\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)
LABELS = {"numpy", "cli", "mpi", "torch", "family", "family-cli"}


def blocks():
    """``(label, language, code)`` of every fenced block of the README, in order."""
    return [(m["label"], m["lang"], m["code"]) for m in BLOCK.finditer(README.read_text())]


def code_of(label):
    found = [(lang, code) for lab, lang, code in blocks() if lab == label]
    assert found, f"README has no block labelled {label!r}"
    return found


def run_python(code, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    exec(compile(code, f"README.md ({cwd.name})", "exec"), {"__name__": "__readme__"})


def run_bash(code, cwd, timeout=300):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("VQCORE_NUM_THREADS", None)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{code}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_every_example_is_labelled_and_quick_start_is_kept():
    text = README.read_text()
    assert "## Quick start" in text
    assert "./dev demo" in text and "./dev test" in text
    for label, lang, code in blocks():
        if lang == "python":
            assert label in LABELS, f"python block without a known test label:\n{code}"
        if label is not None:
            assert label in LABELS, f"unknown label {label!r}"


def test_numpy_and_command_line_examples(tmp_path, monkeypatch):
    (_, numpy_code), = code_of("numpy")
    run_python(numpy_code, tmp_path, monkeypatch)
    x = np.load(tmp_path / "vectors.npy")
    assert (tmp_path / "vq.npz").exists()

    (_, cli_code), = code_of("cli")
    result = run_bash(cli_code, tmp_path)
    codes = np.load(tmp_path / "codes.npy")
    decoded = np.load(tmp_path / "decoded.npy")
    import vqcore

    quantizer = vqcore.VectorQuantizer.load(tmp_path / "codebook.npz")
    assert codes.dtype == np.uint8 and codes.shape == (len(x),)
    np.testing.assert_array_equal(decoded, quantizer.codebook[codes])
    # 256 codes for 20,000 Gaussian vectors: clearly below the variance, the error of a single code
    assert np.mean((decoded - x) ** 2) < 0.9 * x.var()
    assert "perplexity:" in result.stdout and "usage" in result.stdout


@pytest.mark.skipif(not (BIN / "mpiexec").exists() or importlib.util.find_spec("mpi4py") is None,
                    reason='needs mpiexec and mpi4py: pip install "vqcore[mpi]"')
def test_mpi_example(tmp_path):
    x = np.random.default_rng(1).standard_normal((4000, 32)).astype(np.float32)
    np.save(tmp_path / "vectors.npy", x)
    (_, code), = code_of("mpi")
    result = run_bash(code, tmp_path)
    assert result.stdout.count("perplexity:") == 1, result.stdout  # only rank 0 reports
    assert "on 4 ranks" in result.stdout
    import vqcore

    quantizer = vqcore.VectorQuantizer.load(tmp_path / "codebook-mpi.npz")
    codes = quantizer.encode(x)
    assert np.mean((quantizer.decode(codes) - x) ** 2) < 0.9 * x.var()
    np.testing.assert_array_equal(np.load(tmp_path / "codes-mpi.npy"), codes)  # one file, all ranks' rows


def test_family_examples(tmp_path, monkeypatch):
    (_, code), = code_of("family")
    run_python(code, tmp_path, monkeypatch)
    import vqcore

    rq = vqcore.load(tmp_path / "rq.npz")
    np.save(tmp_path / "vectors.npy", np.random.default_rng(2).standard_normal((3000, 48)).astype(np.float32))
    (_, cli_code), = code_of("family-cli")
    run_bash(cli_code, tmp_path)
    x = np.load(tmp_path / "vectors.npy")
    codes = np.load(tmp_path / "stage-codes.npy")
    assert codes.shape == (3000, 4) and codes.dtype == np.uint8
    from_file = vqcore.load(tmp_path / "stages.npz")
    np.testing.assert_array_equal(codes, from_file.encode(x))
    np.testing.assert_allclose(np.load(tmp_path / "stage-decoded.npy"), from_file.decode(codes), rtol=1e-6)
    assert vqcore.load(tmp_path / "subspaces.npz").num_subspaces == 8
    assert rq.num_quantizers == 8


def _has_vqtorch_layer():
    try:
        from vqtorch import VectorQuantize  # noqa: F401
    except ImportError:
        return False
    return importlib.util.find_spec("vector_quantize_pytorch") is not None


@pytest.mark.skipif(not _has_vqtorch_layer(), reason="needs vqtorch.VectorQuantize and vector-quantize-pytorch")
def test_torch_example(tmp_path, monkeypatch):
    (_, code), = code_of("torch")
    run_python(code, tmp_path, monkeypatch)
    assert (tmp_path / "from-torch.npz").exists()
