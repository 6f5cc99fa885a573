"""``mpiexec -n N vqcore encode/decode``: one output equal to one process's, failures that leave nothing.

The byte-for-byte comparisons run inside one job per rank count
(tests/mpi_scripts/encode.py calls the command line in-process for every
case); this file prepares the inputs and one-process references, and checks
what only a separate job can show: a job killed mid-write.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import vqcore
from vqcore import cli

from .mpi_scripts._launch import MPIEXEC, REPO, describe, mpi_available, run_mpi
from .mpi_scripts.shards import shard_rows

pytestmark = pytest.mark.skipif(not mpi_available(), reason='needs mpiexec and mpi4py: pip install "vqcore[mpi]"')

ROWS, DIM, CODES = 301, 8, 16
RANKS = (1, 2, 3)


def quiet_main(*argv):
    return cli.main([*map(str, argv), "--quiet"])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Inputs, codebooks of every kind and one-process outputs for encode.py."""
    work = tmp_path_factory.mktemp("encode-mpi")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    np.save(work / "x.npy", x)
    np.save(work / "a.npy", x[:100])
    np.save(work / "b.npy", x[100:].astype(np.float64))  # another dtype: read as float32 all the same
    # codebook_dim * heads == dim, as vqcore fit makes it: no projection (a BLAS matmul rounds by block size)
    vq = vqcore.VectorQuantizer(DIM, CODES, heads=2, codebook_dim=DIM // 2, kmeans_init=True, seed=0)
    vq.partial_fit(x)
    vq.save(work / "vq.npz")
    rq = vqcore.ResidualQuantizer(DIM, CODES, 3, seed=0)
    rq.fit(x, progress=False)
    rq.save(work / "rq.npz")
    pq = vqcore.ProductQuantizer(DIM, CODES, 4, seed=0)
    pq.fit(x, progress=False)
    pq.save(work / "pq.npz")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for kind in ("vq", "rq", "pq"):
            assert quiet_main("encode", f"{kind}.npz", "x.npy", "-o", f"ref-{kind}.npy") == 0
            assert quiet_main("decode", f"{kind}.npz", f"ref-{kind}.npy", "-o", f"recon-{kind}.npy") == 0
    finally:
        os.chdir(cwd)
    for n in RANKS:
        bounds = np.concatenate(([0], np.cumsum(shard_rows(ROWS, n))))  # rank 1 holds no rows
        for r in range(n):
            np.save(work / f"n{n}-part-{r}.npy", x[bounds[r]:bounds[r + 1]])
            if r < n - 1:  # the last rank's file is missing, or holds text
                np.save(work / f"n{n}-gap-{r}.npy", x[bounds[r]:bounds[r + 1]])
                np.save(work / f"n{n}-dtype-{r}.npy", x[bounds[r]:bounds[r + 1]])
        np.save(work / f"n{n}-dtype-{n - 1}.npy", np.array([["abc"] * DIM]))
        for r in range(n):  # the last rank meets a NaN while the others write their rows
            rows = x[bounds[r]:bounds[r + 1]].copy() if r < n - 1 else x[:5].copy()
            if r == n - 1:
                rows[3, 1] = np.nan
            np.save(work / f"n{n}-nan-{r}.npy", rows)
    return work, x


def test_references_are_right(work):
    """The one-process outputs the MPI jobs are compared with hold the quantizers' own codes."""
    path, x = work
    for kind, cls in (("vq", vqcore.VectorQuantizer), ("rq", vqcore.ResidualQuantizer),
                      ("pq", vqcore.ProductQuantizer)):
        quantizer = cls.load(path / f"{kind}.npz")
        codes = np.load(path / f"ref-{kind}.npy")
        np.testing.assert_array_equal(codes, quantizer.encode(x))
        np.testing.assert_array_equal(np.load(path / f"recon-{kind}.npy"), quantizer.decode(codes))


@pytest.mark.parametrize("ranks", RANKS)
def test_encode_decode_on_ranks_equal_one_process(work, ranks):
    result = run_mpi("encode.py", ranks, str(work[0]), timeout=120)
    assert result.returncode == 0 and f"OK {ranks}" in result.stdout, describe(result)


def test_killed_job_leaves_the_previous_output(tmp_path):
    """SIGKILL while the ranks write: the old file stays whole, nothing partial takes its name."""
    rng = np.random.default_rng(1)
    np.save(tmp_path / "x.npy", rng.standard_normal((400_000, 32)).astype(np.float32))
    quantizer = vqcore.VectorQuantizer(32, 1024, kmeans_init=True, kmeans_iters=1, seed=0)
    quantizer.partial_fit(rng.standard_normal((4096, 32)).astype(np.float32))
    quantizer.save(tmp_path / "cb.npz")
    previous = np.arange(10, dtype=np.uint16)
    np.save(tmp_path / "codes.npy", previous)
    before = (tmp_path / "codes.npy").read_bytes()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [str(MPIEXEC), "-n", "2", sys.executable, "-m", "vqcore", "encode", "cb.npz", "x.npy", "-o", "codes.npy",
         "--force", "--quiet"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        while not any(p.name.startswith(".vqcore-") for p in tmp_path.iterdir()):
            assert proc.poll() is None, f"the job ended before writing: {proc.communicate()}"
            assert time.monotonic() < deadline, "no temporary file appeared"
            time.sleep(0.01)
        time.sleep(0.2)  # let the ranks write part of their rows
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert (tmp_path / "codes.npy").read_bytes() == before
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"), previous)
