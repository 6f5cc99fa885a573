"""``vqcore encode``/``decode`` on every rank of this job equal one process's output, byte for byte.

Run as ``mpiexec -n N python -m mpi4py encode.py WORKDIR``.  WORKDIR holds
what tests/test_cli_mpi.py prepared with one process: codebooks of each kind
(``vq.npz``, ``rq.npz``, ``pq.npz``), data ``x.npy`` (also split into
``part-{rank}.npy`` shards of uneven sizes, some empty, for N ranks) and the
one-process outputs ``ref-<kind>.npy`` and ``recon-<kind>.npy``.  Every case
calls the command line in this process (``vqcore.cli.main``); failing cases
must end with exit code 2 on every rank, print the failing rank's message on
rank 0 and leave no file behind.  Rank 0 prints ``OK <size>`` at the end.
"""
import contextlib
import io
import os
import sys
from pathlib import Path

import numpy as np

from vqcore import cli
from vqcore.comm import MPIComm

comm = MPIComm()
rank, size = comm.rank, comm.size
work = Path(sys.argv[1])
os.chdir(work)
KINDS = ("vq", "rq", "pq")


def run(*argv):
    """Exit code of ``vqcore argv`` on this rank (rank 0's stderr captured)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = cli.main([*map(str, argv), "--quiet"])
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def same_bytes(a, b):
    return Path(a).read_bytes() == Path(b).read_bytes()


def leftovers():
    return sorted(p.name for p in Path(".").iterdir() if p.name.startswith(".vqcore-"))


def check(condition, what):
    if not condition:
        raise AssertionError(f"rank {rank} of {size}: {what}")


tag = f"n{size}"
for kind in KINDS:
    # one .npy input split into contiguous shares
    code, _ = run("encode", f"{kind}.npz", "x.npy", "-o", f"{tag}-{kind}.npy")
    check(code == 0, f"encode {kind} exited {code}")
    if rank == 0:
        check(same_bytes(f"{tag}-{kind}.npy", f"ref-{kind}.npy"), f"{kind}: codes differ from one process")
    # decode back, into one file
    code, _ = run("decode", f"{kind}.npz", f"ref-{kind}.npy", "-o", f"{tag}-recon-{kind}.npy")
    check(code == 0, f"decode {kind} exited {code}")
    if rank == 0:
        check(same_bytes(f"{tag}-recon-{kind}.npy", f"recon-{kind}.npy"), f"{kind}: decode differs")

# several files, then per-rank files in and out (uneven shares, some empty)
code, _ = run("encode", "vq.npz", "a.npy", "b.npy", "-o", f"{tag}-ab.npy")
check(code == 0 and (rank or same_bytes(f"{tag}-ab.npy", "ref-vq.npy")), "several files")
code, _ = run("encode", "vq.npz", f"{tag}-part-{{rank}}.npy", "-o", f"{tag}-rank.npy")
check(code == 0 and (rank or same_bytes(f"{tag}-rank.npy", "ref-vq.npy")), "{rank} inputs")
code, _ = run("encode", "vq.npz", f"{tag}-part-{{rank}}.npy", "-o", f"{tag}-out-{{rank}}.npy")
check(code == 0, "{rank} outputs")
comm.allgather_object(None)
if rank == 0:
    parts = [np.load(f"{tag}-out-{r}.npy") for r in range(size)]
    check(np.array_equal(np.concatenate(parts), np.load("ref-vq.npy")), "{rank} outputs differ")
    for r in range(size):
        expect = np.load(f"{tag}-part-{r}.npy")
        check(len(parts[r]) == len(expect), f"rank {r}'s output holds {len(parts[r])} rows, not {len(expect)}")

# --force over an existing output, and the refusal without it
code, err = run("encode", "vq.npz", "x.npy", "-o", f"{tag}-vq.npy")
check(code == 2 and (rank or "--force" in err), f"existing output: exit {code}, {err!r}")
code, _ = run("encode", "vq.npz", "a.npy", "-o", f"{tag}-vq.npy", "--force")
check(code == 0 and (rank or len(np.load(f"{tag}-vq.npy")) == len(np.load("a.npy"))), "--force")

# the Python helper: each rank passes its rows, one file holds them all in rank order
from vqcore.io import write_rows  # noqa: E402

mine = np.arange(rank * 3, dtype=np.int32).reshape(rank, 3) + 100 * rank
write_rows(f"{tag}-rows.npy", mine, comm=comm)
if rank == 0:
    everyone = np.concatenate([np.arange(r * 3, dtype=np.int32).reshape(r, 3) + 100 * r for r in range(size)])
    np.save(f"{tag}-rows-ref.npy", everyone)
    check(same_bytes(f"{tag}-rows.npy", f"{tag}-rows-ref.npy"), "write_rows differs from np.save")

# failures on one rank: nothing written, every rank exits 2, rank 0 prints the failing rank's message
if size > 1:
    failures = [
        (f"{tag}-gap-{{rank}}.npy", f"{tag}-gap-{size - 1}.npy", "no such file"),
        (f"{tag}-dtype-{{rank}}.npy", f"{tag}-dtype-{size - 1}.npy", "dtype <U3"),
        (f"{tag}-nan-{{rank}}.npy", f"{tag}-nan-{size - 1}.npy", "row 3 contains NaN"),  # while writing
    ]
    for source, name, fragment in failures:
        code, err = run("encode", "vq.npz", source, "-o", f"{tag}-fail.npy")
        check(code == 2, f"{source}: exit {code}")
        if rank == 0:
            lines = err.strip().splitlines()
            check(len(lines) == 1 and name in lines[0] and fragment in lines[0], f"{source}: stderr {err!r}")
            check(not Path(f"{tag}-fail.npy").exists(), f"{source}: an output was written")
    # a plain file beside a {rank} pattern would be read by every rank: refused on all of them
    code, err = run("encode", "vq.npz", f"{tag}-part-{{rank}}.npy", "a.npy", "-o", f"{tag}-fail.npy")
    check(code == 2 and (rank or "a.npy: is a plain file beside the {rank} pattern" in err), f"plain: {err!r}")

# fit on uneven shards (rank 1 holds none): every rank takes the same steps, no one waits forever
code, _ = run("fit", f"{tag}-part-{{rank}}.npy", "-k", 4, "--batch-size", 16, "--seed", 0, "-o", f"{tag}-fit.npz")
check(code == 0, f"fit on uneven shards exited {code}")
comm.allgather_object(None)
if rank == 0:
    check(not leftovers(), f"temporary files left: {leftovers()}")
    print(f"OK {size}")
