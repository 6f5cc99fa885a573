"""The ``vqcore`` command line end to end, as a user runs it (``python -m vqcore`` in a subprocess)."""
from __future__ import annotations

import argparse
import contextlib
import io
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import vqcore
from vqcore import cli
from vqcore.cli import data

from . import naive

BIN = Path(sys.executable).parent
BLOBS, DIM, NOISE = 6, 8, 0.1
PROGRESS_LINE = re.compile(r"^(fit|encode|decode):\s+\d+%\|")


def vqcore_cmd(*args, cwd, mpi_ranks=None, timeout=120, separate=False):
    """Run ``vqcore args`` in ``cwd``: in a new process (``python -m vqcore``) under mpiexec or with
    ``separate``, else in this one (the same ``cli.main``, without the interpreter's start-up)."""
    if not (mpi_ranks or separate):
        return in_process([*map(str, args)], cwd)
    command = [sys.executable, "-m", "vqcore", *map(str, args)]
    if mpi_ranks:
        command = [str(BIN / "mpiexec"), "-n", str(mpi_ranks), *command]
    env = dict(os.environ)
    env.pop("VQCORE_NUM_THREADS", None)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def in_process(argv, cwd):
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse's own errors
                code = exc.code
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def summary_value(stdout, name):
    match = re.search(rf"^{name}:\s+([-+0-9.eE]+)", stdout, re.M)
    assert match, f"no {name!r} in\n{stdout}"
    return float(match.group(1))


def blobs(n, seed):
    """Well separated clusters plus small noise: the error of a good codebook is about NOISE**2."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((BLOBS, DIM)) * 4
    return (centers[rng.integers(0, BLOBS, n)] + rng.standard_normal((n, DIM)) * NOISE).astype(np.float32)


def assert_nearest(codes, x, codebook):
    """Each code is a nearest one (codes equally near up to float32 rounding may tie either way)."""
    expected = naive.nearest(x, codebook)
    squared = ((x.astype(np.float64)[:, None, :] - codebook.astype(np.float64)[None]) ** 2).sum(-1)
    rows = np.arange(len(x))
    gap = squared[rows, codes.astype(np.int64)] - squared[rows, expected]
    # float32 search computes |c|^2 - 2 x.c: its rounding scales with the norms, not the distance
    scale = (x.astype(np.float64) ** 2).sum(1) + (codebook.astype(np.float64) ** 2).sum(1).max()
    assert np.all(gap <= 1e-5 * scale), gap.max()
    assert np.mean(codes == expected) > 0.99


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result
    # progress bars (on stderr) may precede the error line
    lines = [line for line in result.stderr.strip().splitlines() if not PROGRESS_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("vqcore: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A codebook fitted by ``vqcore fit`` on blobs, with its data and the fit's output."""
    work = tmp_path_factory.mktemp("cli")
    x = blobs(3000, seed=0)
    np.save(work / "x.npy", x)
    # twice as many codes as clusters and dead-code re-seeding: every cluster gets a code
    result = vqcore_cmd("fit", "x.npy", "-k", 2 * BLOBS, "--epochs", 4, "--batch-size", 500,
                        "--dead-code-threshold", 2, "--seed", 0, "-o", "cb.npz", cwd=work, separate=True)
    assert result.returncode == 0, result
    return work, x, result


def test_fit_encode_decode_info(trained):
    work, x, fit = trained
    quantizer = vqcore.VectorQuantizer.load(work / "cb.npz")
    assert quantizer.codebook.shape == (2 * BLOBS, DIM)
    assert fit.stdout.count("mse:") == 1 and "3000 vectors x 8 dims" in fit.stdout

    assert vqcore_cmd("encode", "cb.npz", "x.npy", "-o", "codes.npy", "--quiet", cwd=work).returncode == 0
    codes = np.load(work / "codes.npy")
    assert codes.dtype == np.uint8 and codes.shape == (len(x),)
    assert_nearest(codes, x, quantizer.codebook)

    assert vqcore_cmd("decode", "cb.npz", "codes.npy", "-o", "recon.npy", cwd=work).returncode == 0
    recon = np.load(work / "recon.npy")
    assert recon.dtype == np.float32
    np.testing.assert_array_equal(recon, quantizer.codebook[codes])

    # the summary reports what the files show
    mse = float(np.mean((recon.astype(np.float64) - x) ** 2))
    np.testing.assert_allclose(summary_value(fit.stdout, "mse"), mse, rtol=1e-4)
    np.testing.assert_allclose(summary_value(fit.stdout, "inertia"), mse * x.size, rtol=1e-4)
    counts = np.bincount(codes, minlength=2 * BLOBS)
    p = counts[counts > 0] / counts.sum()
    np.testing.assert_allclose(summary_value(fit.stdout, "perplexity"), np.exp(-(p * np.log(p)).sum()), rtol=1e-3)
    assert summary_value(fit.stdout, "dead codes") == (counts == 0).sum()
    # every cluster has a code: the error is the noise, far below the spread of the clusters
    assert mse < 4 * NOISE**2 < 0.01 * x.var()

    info = vqcore_cmd("info", "cb.npz", cwd=work)
    assert info.returncode == 0, info
    usage = quantizer.usage()
    assert f"{usage['perplexity']:.4g} of {2 * BLOBS}" in info.stdout
    histogram = [int(line.split()[-1]) for line in info.stdout.splitlines() if "|" in line]
    assert len(histogram) == 6 and sum(histogram) == 2 * BLOBS


def test_codes_dtype_grows_with_the_codebook():
    assert [data.codes_dtype(k) for k in (1, 256, 257, 65536, 65537)] == [
        np.uint8, np.uint8, np.uint16, np.uint16, np.uint32]


def test_heads_encode_and_decode(tmp_path):
    x = blobs(600, seed=1)
    np.save(tmp_path / "x.npy", x)
    fit = vqcore_cmd("fit", "x.npy", "-k", 300, "--heads", 2, "--seed", 1, "-o", "cb.npz", "--quiet", cwd=tmp_path)
    assert fit.returncode == 0, fit
    assert vqcore_cmd("encode", "cb.npz", "x.npy", "-o", "c.npy", cwd=tmp_path).returncode == 0
    assert vqcore_cmd("decode", "cb.npz", "c.npy", "-o", "r.npy", cwd=tmp_path).returncode == 0
    codes, recon = np.load(tmp_path / "c.npy"), np.load(tmp_path / "r.npy")
    codebook = vqcore.VectorQuantizer.load(tmp_path / "cb.npz").codebook
    assert codes.dtype == np.uint16 and codes.shape == (600, 2)
    half = DIM // 2
    assert_nearest(codes[:, 0], x[:, :half], codebook)
    assert_nearest(codes[:, 1], x[:, half:], codebook)
    np.testing.assert_array_equal(recon, np.concatenate([codebook[codes[:, 0]], codebook[codes[:, 1]]], axis=1))


def test_npz_keys_several_files_and_rank_patterns(trained, tmp_path):
    work, x, _ = trained
    np.savez(tmp_path / "parts.npz", a=x[:1000], b=x[1000:])
    np.save(tmp_path / "shard-0.npy", x[:1700])
    np.save(tmp_path / "shard-1.npy", x[1700:].astype(np.float64))
    (tmp_path / "cb.npz").write_bytes((work / "cb.npz").read_bytes())
    expected = vqcore.VectorQuantizer.load(work / "cb.npz").encode(x)
    for name, sources in [("npz", ["parts.npz:a", "parts.npz:b"]), ("rank", ["shard-{rank}.npy"])]:
        result = vqcore_cmd("encode", "cb.npz", *sources, "-o", f"{name}.npy", cwd=tmp_path)
        assert result.returncode == 0, result
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), expected)
    fit = vqcore_cmd("fit", "parts.npz:a", "parts.npz:b", "-k", 4, "-o", "f.npz", "--quiet", cwd=tmp_path)
    assert fit.returncode == 0 and "3000 vectors" in fit.stdout, fit


@pytest.mark.parametrize("case", ["missing", "wrong-dim", "one-dim", "nan", "k0", "exists", "npz-no-key",
                                  "codes-range", "heads-dim"])
def test_bad_input_exits_2_with_one_line(trained, tmp_path, case):
    work, x, _ = trained
    (tmp_path / "cb.npz").write_bytes((work / "cb.npz").read_bytes())
    np.save(tmp_path / "x.npy", x)
    if case == "missing":
        result = vqcore_cmd("fit", "nope.npy", "-k", 4, "-o", "o.npz", cwd=tmp_path)
        fragments = ["nope.npy", "no such file"]
    elif case == "wrong-dim":
        np.save(tmp_path / "wide.npy", np.zeros((5, DIM + 1), np.float32))
        result = vqcore_cmd("encode", "cb.npz", "wide.npy", "-o", "o.npy", cwd=tmp_path)
        fragments = ["wide.npy", f"dim {DIM + 1}", f"dim {DIM}"]
    elif case == "one-dim":
        np.save(tmp_path / "flat.npy", np.zeros(5, np.float32))
        result = vqcore_cmd("fit", "flat.npy", "-k", 2, "-o", "o.npz", cwd=tmp_path)
        fragments = ["flat.npy", "shape (5,)"]
    elif case == "nan":
        bad = x.copy()
        bad[1234, 3] = np.nan
        np.save(tmp_path / "nan.npy", bad)
        result = vqcore_cmd("fit", "nan.npy", "-k", 4, "-o", "o.npz", cwd=tmp_path)
        fragments = ["nan.npy", "row 1234", "NaN"]
    elif case == "k0":
        result = vqcore_cmd("fit", "x.npy", "-k", 0, "-o", "o.npz", cwd=tmp_path)
        fragments = ["-k", ">= 1"]
    elif case == "exists":
        (tmp_path / "o.npy").write_bytes(b"keep me")
        result = vqcore_cmd("encode", "cb.npz", "x.npy", "-o", "o.npy", cwd=tmp_path)
        fragments = ["o.npy", "--force"]
        assert (tmp_path / "o.npy").read_bytes() == b"keep me"
    elif case == "npz-no-key":
        np.savez(tmp_path / "d.npz", train=x)
        result = vqcore_cmd("fit", "d.npz", "-k", 2, "-o", "o.npz", cwd=tmp_path)
        fragments = ["d.npz", "d.npz:KEY", "train"]
    elif case == "codes-range":
        np.save(tmp_path / "codes.npy", np.array([0, 1, 99], dtype=np.int32))
        result = vqcore_cmd("decode", "cb.npz", "codes.npy", "-o", "o.npy", cwd=tmp_path)
        fragments = ["codes.npy", "99"]
    else:
        result = vqcore_cmd("fit", "x.npy", "-k", 2, "--heads", 3, "-o", "o.npz", cwd=tmp_path)
        fragments = ["--heads 3", f"dim {DIM}"]
    assert_one_line_error(result, *fragments)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".vqcore-")]
    assert not leftovers and (case == "exists" or not (tmp_path / "o.npy").exists())
    assert not (tmp_path / "o.npz").exists()


def test_force_overwrites(trained, tmp_path):
    work, x, _ = trained
    np.save(tmp_path / "x.npy", x[:100])
    (tmp_path / "out.npz").write_bytes(b"old")
    refused = vqcore_cmd("fit", "x.npy", "-k", 3, "-o", "out.npz", "--seed", 0, cwd=tmp_path)
    assert_one_line_error(refused, "out.npz", "--force")
    forced = vqcore_cmd("fit", "x.npy", "-k", 3, "-o", "out.npz", "--seed", 0, "--force", "--quiet", cwd=tmp_path)
    assert forced.returncode == 0, forced
    assert vqcore.VectorQuantizer.load(tmp_path / "out.npz").codebook_size == 3


def test_unexpected_failure_exits_1_with_traceback(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli.info, "cmd_info", broken)
    assert cli.main(["info", "whatever.npz"]) == 1
    assert "RuntimeError: a bug" in capsys.readouterr().err


@pytest.mark.skipif(not (BIN / "mpiexec").exists() or importlib.util.find_spec("mpi4py") is None,
                    reason='needs mpiexec and mpi4py: pip install "vqcore[mpi]"')
def test_fit_under_mpiexec_with_one_file_per_rank(trained, tmp_path):
    _, x, _ = trained
    np.save(tmp_path / "part-0.npy", x[:1000])
    np.save(tmp_path / "part-1.npy", x[1000:])
    result = vqcore_cmd("fit", "part-{rank}.npy", "-k", 2 * BLOBS, "--epochs", 3, "--batch-size", 250,
                        "--dead-code-threshold", 2, "--seed", 0, "-o", "cb.npz", cwd=tmp_path, mpi_ranks=2)
    assert result.returncode == 0, result
    assert result.stdout.count("mse:") == 1 and "3000 vectors x 8 dims" in result.stdout and "2 ranks" in result.stdout
    quantizer = vqcore.VectorQuantizer.load(tmp_path / "cb.npz")
    recon = quantizer.decode(quantizer.encode(x))
    mse = float(np.mean((recon.astype(np.float64) - x) ** 2))
    np.testing.assert_allclose(summary_value(result.stdout, "mse"), mse, rtol=1e-4)
    assert mse < 4 * NOISE**2

    missing = vqcore_cmd("fit", "part-{rank}.npy", "-k", 4, "-o", "cb3.npz", cwd=tmp_path, mpi_ranks=3)
    assert_one_line_error(missing, "part-2.npy", "no such file")


def test_cosine_codebook_codes_are_largest_dot_products(tmp_path):
    x = blobs(800, seed=3)
    np.save(tmp_path / "x.npy", x)
    fit = vqcore_cmd("fit", "x.npy", "-k", 8, "--cosine", "--seed", 3, "-o", "cb.npz", "--quiet", cwd=tmp_path)
    assert fit.returncode == 0 and "cosine" in fit.stdout, fit
    assert vqcore_cmd("encode", "cb.npz", "x.npy", "-o", "c.npy", cwd=tmp_path).returncode == 0
    codebook = vqcore.VectorQuantizer.load(tmp_path / "cb.npz").codebook
    np.testing.assert_allclose(np.linalg.norm(codebook, axis=1), 1, rtol=1e-5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    codes = np.load(tmp_path / "c.npy").astype(np.int64)
    scores = unit.astype(np.float64) @ codebook.astype(np.float64).T
    best = scores.max(axis=1)
    assert np.all(scores[np.arange(len(x)), codes] >= best - 1e-5)
    assert np.mean(codes == naive.nearest(unit, codebook, metric="cosine")) > 0.99
    # the reported error is that of the unit vectors (a cosine codebook keeps directions only)
    mse = np.mean((codebook[codes].astype(np.float64) - unit) ** 2)
    np.testing.assert_allclose(summary_value(fit.stdout, "mse"), mse, rtol=1e-4)


# -- hardening (issue 13): shards, shapes, messages, pipes, help -------------------------------------------

def run_main(capsys, *argv):
    """``vqcore argv`` in this process: (exit code, stdout, stderr)."""
    code = cli.main([*map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err):
    lines = [line for line in err.strip().splitlines() if not PROGRESS_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("vqcore: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def here(trained, tmp_path, monkeypatch):
    """A fresh directory with the trained codebook and its data, as the working directory."""
    work, x, _ = trained
    (tmp_path / "cb.npz").write_bytes((work / "cb.npz").read_bytes())
    np.save(tmp_path / "x.npy", x)
    monkeypatch.chdir(tmp_path)
    return tmp_path, x


def test_a_missing_shard_in_the_middle_is_named(here, capsys):
    path, x = here
    for r in (0, 1, 3):
        np.save(path / f"gap-{r}.npy", x[100 * r:100 * r + 100])
    for argv in (["encode", "cb.npz", "gap-{rank}.npy", "-o", "c.npy"], ["fit", "gap-{rank}.npy", "-k", 4, "-o", "f.npz"]):
        code, _, err = run_main(capsys, *argv)
        line = one_error_line(err)
        assert code == 2 and "gap-2.npy" in line and "no such file" in line and "gap-{rank}.npy" in line, line
    assert not (path / "c.npy").exists() and not (path / "f.npz").exists()


def test_rank_in_an_npz_key_is_refused_at_once(here, capsys):
    np.savez(here[0] / "keyed.npz", a=here[1])
    started = time.monotonic()
    code, _, err = run_main(capsys, "fit", "keyed.npz:{rank}", "-k", 4, "-o", "f.npz")
    assert code == 2 and time.monotonic() - started < 10
    assert "{rank} may appear in the file name, not in the .npz key" in one_error_line(err)


@pytest.mark.parametrize("shape, fragment", [((50, 2, 4), "reshape it first, e.g. x.reshape(-1, 4)"),
                                             ((50, 0), "vectors of dim 0")])
def test_input_that_is_not_2d_vectors_is_refused_with_a_hint(here, capsys, shape, fragment):
    np.save(here[0] / "bad.npy", np.zeros(shape, np.float32))
    for argv in (["fit", "bad.npy", "-k", 2, "-o", "f.npz"], ["encode", "cb.npz", "bad.npy", "-o", "c.npy"]):
        code, _, err = run_main(capsys, *argv)
        line = one_error_line(err)
        assert code == 2 and fragment in line and f"shape {shape}" in line, line


@pytest.mark.parametrize("k", [3001, 99999999999999999999])
def test_more_codes_than_vectors_says_so(here, capsys, k):
    code, _, err = run_main(capsys, "fit", "x.npy", "-k", k, "-o", "f.npz")
    line = one_error_line(err)
    assert code == 2 and f"-k {k} is larger than the 3000 vectors" in line and "batch-size" not in line, line
    assert not (here[0] / "f.npz").exists()


@pytest.mark.parametrize("output", ["", "dangling.npz"])
def test_unwritable_outputs_are_refused_before_training(here, capsys, monkeypatch, output):
    os.symlink(here[0] / "missing" / "target.npz", here[0] / "dangling.npz")

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the output")

    monkeypatch.setattr(cli.fit.VectorQuantizer, "fit", no_training)
    code, _, err = run_main(capsys, "fit", "x.npy", "-k", 4, "-o", output)
    line = one_error_line(err)
    assert code == 2 and ("empty output name" in line if not output else "symbolic link to the missing" in line)


def test_info_into_a_closed_pipe_is_quiet(here):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(["bash", "-c", f"'{sys.executable}' -m vqcore info cb.npz | head -1; "
                                           "exit ${PIPESTATUS[0]}"],
                            cwd=here[0], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("file:"), result
    assert result.stderr == "", result.stderr


def test_every_subcommand_has_a_description():
    parser = cli.build_parser()
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(choices) == {"fit", "encode", "decode", "info", "demo"}
    for name, sub in choices.items():
        assert sub.description and len(sub.description) > 40, name
        assert sub.description.split()[0] in sub.format_help(), name


def test_encode_and_decode_show_progress_and_a_summary(here):
    path, x = here
    encode = vqcore_cmd("encode", "cb.npz", "x.npy", "-o", "c.npy", cwd=path)
    decode = vqcore_cmd("decode", "cb.npz", "c.npy", "-o", "r.npy", cwd=path)
    assert encode.returncode == 0 and decode.returncode == 0, (encode, decode)
    assert re.search(r"encode: 100%\|.*3\.00k/3\.00k", encode.stderr), encode.stderr
    assert re.search(r"decode: 100%\|.*3\.00k/3\.00k", decode.stderr), decode.stderr
    codes_size, recon_size = (path / "c.npy").stat().st_size, (path / "r.npy").stat().st_size
    # uint8 codes of 8 float32 dims: 32 bytes become 1
    assert f"encoded {len(x)} vectors x {DIM} dims" in encode.stdout and "32x smaller" in encode.stdout, encode.stdout
    assert f"{codes_size / 1000:.3g} kB" in encode.stdout and "uint8 codes of shape (n,)" in encode.stdout
    assert f"decoded {len(x)} rows of codes" in decode.stdout and f"{recon_size / 1000:.3g} kB" in decode.stdout


@pytest.mark.parametrize("kind", ["npy", "damaged"])
def test_a_codebook_that_is_not_one_is_named(here, capsys, kind):
    if kind == "npy":
        name, fragment = "x.npy", "not a vqcore codebook file"
    else:
        name, fragment = "bad.npz", "not a vqcore file / damaged"
        (here[0] / name).write_bytes((here[0] / "cb.npz").read_bytes()[:500])
    for argv in (["encode", name, "x.npy", "-o", "c.npy"], ["info", name]):
        code, _, err = run_main(capsys, *argv)
        line = one_error_line(err)
        assert code == 2 and fragment in line and name in line and "pickle" not in line, line


def test_uneven_shards_keep_every_batch_within_batch_size():
    """Ranks holding 2000 and 10 rows with --batch-size 16: no rank's batch exceeds 16 rows."""
    from vqcore.cli.fit import Schedule

    all_rows = [2000, 10]
    for rank, n in enumerate(all_rows):
        schedule = Schedule(np.zeros((n, 2)), 16, all_rows, 0, None, None)
        sizes = np.diff(schedule.bounds)
        assert sizes.max() <= 16 and sizes.sum() == n and len(sizes) == 125, (rank, sizes)
        assert schedule.step_rows.sum() == sum(all_rows)


@pytest.mark.parametrize("rank, size, sources, expected", [
    (1, 2, ["x.npy"], (1500, 3000)),
    (2, 3, ["s-{rank}.npy"], (2000, 3000)),
])
def test_shares_of_ranks(here, rank, size, sources, expected):
    path, x = here
    for r in range(3):
        np.save(path / f"s-{r}.npy", x[1000 * r:1000 * r + 1000])
    rows = data.open_share(sources, rank, size)
    np.testing.assert_array_equal(rows.read(0, len(rows)), x[expected[0]:expected[1]])


@pytest.mark.parametrize("sources, fragment", [
    (["s-{rank}.npy", "x.npy"], "x.npy: is a plain file beside the {rank} pattern"),
    (["s-{rank}.npy"], "s-2.npy: exists but only 2 ranks run"),
])
def test_rank_patterns_under_mpiexec_refuse_what_no_rank_or_every_rank_would_read(here, sources, fragment):
    path, x = here
    for r in range(3):
        np.save(path / f"s-{r}.npy", x[:10])
    with pytest.raises(data.InputError) as caught:
        data.open_share(sources, 0, 2)
    assert fragment in str(caught.value)


def test_force_keeps_the_mode_of_the_replaced_file_and_new_files_follow_the_umask(here, capsys):
    path, _ = here
    old = os.umask(0o027)
    try:
        assert run_main(capsys, "encode", "cb.npz", "x.npy", "-o", "c.npy", "--quiet")[0] == 0
        assert (path / "c.npy").stat().st_mode & 0o777 == 0o640
        os.chmod(path / "c.npy", 0o604)
        assert run_main(capsys, "encode", "cb.npz", "x.npy", "-o", "c.npy", "--quiet", "--force")[0] == 0
    finally:
        os.umask(old)
    assert (path / "c.npy").stat().st_mode & 0o777 == 0o604
