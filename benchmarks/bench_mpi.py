"""Cost of distribution on one machine: ``VectorQuantizer.partial_fit`` on 1 vs 2 ranks.

Run ``python benchmarks/bench_mpi.py [--n N --d D --k K --steps S --ranks 1 2]``.
It launches ``mpiexec -n P python -m mpi4py benchmarks/bench_mpi.py --worker``
for each rank count and prints one line per (mode, ranks):

* strong scaling: the global batch of ``N`` vectors is split over the ranks;
* weak scaling: every rank holds ``N`` vectors (the global batch grows).

Per step it reports the slowest rank's wall time; the time the slowest rank
spent inside collectives (transfer *and* waiting for the other ranks to
arrive); the time of a bare all-reduce of the same bytes after a barrier (the
transfer alone); and the bytes handed to all-reduce per step, next to the
formula's value count ``c*k*(d+1)`` (counts and sums; c = 1 here).
Thread counts follow vqcore's default under mpiexec: cores // ranks.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16384, help="vectors per step (per rank in weak mode)")
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--worker", choices=["weak", "strong"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker(args) -> None:
    """One rank: time ``args.steps`` partial_fit steps after a warm-up step."""
    from mpi4py import MPI

    import vqcore
    from vqcore.comm import Communicator, MPIComm

    class TimedComm(Communicator):
        """Forwards to another communicator, adding up seconds and all-reduced bytes."""

        def __init__(self, inner):
            self.inner, self.rank, self.size = inner, inner.rank, inner.size
            self.seconds, self.reduced_bytes, self.largest = 0.0, 0, None

        def _timed(self, fn, *args):
            start = time.perf_counter()
            out = fn(*args)
            self.seconds += time.perf_counter() - start
            return out

        def allreduce_sum_(self, array):
            self.reduced_bytes += array.nbytes
            if self.largest is None or array.nbytes > self.largest.nbytes:
                self.largest = array.copy()
            return self._timed(self.inner.allreduce_sum_, array)

        def bcast_(self, array, root=0):
            return self._timed(self.inner.bcast_, array, root)

        def allgatherv(self, array):
            return self._timed(self.inner.allgatherv, array)

        def allgather_object(self, obj):
            return self._timed(self.inner.allgather_object, obj)

    comm = TimedComm(MPIComm())
    world = MPI.COMM_WORLD
    rows = args.n if args.worker == "weak" else args.n // comm.size + (comm.rank < args.n % comm.size)
    rng = np.random.default_rng([comm.rank, 1])
    batches = [rng.standard_normal((rows, args.d)).astype(np.float32) for _ in range(args.steps + 1)]
    quantizer = vqcore.VectorQuantizer(args.d, args.k, seed=0, comm=comm)
    quantizer.partial_fit(batches[0])  # compiles and initialises; not timed

    wall, in_comm, reduced = [], [], []
    for batch in batches[1:]:
        world.Barrier()
        comm.seconds, comm.reduced_bytes = 0.0, 0
        start = time.perf_counter()
        quantizer.partial_fit(batch)
        wall.append(time.perf_counter() - start)
        in_comm.append(comm.seconds)
        reduced.append(comm.reduced_bytes)
    # the transfer alone: the step's largest all-reduce, everyone already waiting
    bare = []
    for _ in range(20):
        world.Barrier()
        start = time.perf_counter()
        comm.inner.allreduce_sum_(comm.largest)
        bare.append(time.perf_counter() - start)
    slowest = world.allreduce(float(np.median(wall)), op=MPI.MAX)
    slowest_comm = world.allreduce(float(np.median(in_comm)), op=MPI.MAX)
    bare_s = world.allreduce(float(np.median(bare)), op=MPI.MAX)
    if comm.rank == 0:
        print(json.dumps(dict(
            mode=args.worker, ranks=comm.size, rows_per_rank=rows, step_s=slowest,
            comm_s=slowest_comm, bare_allreduce_s=bare_s, reduced_bytes=int(np.median(reduced)),
            formula_values=args.k * (args.d + 1),
        )))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    mpiexec = Path(sys.executable).parent / "mpiexec"
    print(f"partial_fit, n={args.n} d={args.d} k={args.k}, median of {args.steps} steps")
    print(f"{'mode':>6} {'ranks':>5} {'rows/rank':>9} {'step s':>8} {'comm s':>8} {'comm %':>6} "
          f"{'bare s':>8} {'reduced B':>10} {'k*(d+1)':>8} {'B/value':>7}")
    for mode in ("strong", "weak"):
        for ranks in args.ranks:
            command = [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__,
                       "--worker", mode, "--n", str(args.n), "--d", str(args.d), "--k", str(args.k),
                       "--steps", str(args.steps)]
            out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
            if out.returncode != 0:
                print(out.stdout, out.stderr, file=sys.stderr)
                return out.returncode
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['mode']:>6} {r['ranks']:>5} {r['rows_per_rank']:>9} {r['step_s']:>8.4f} "
                  f"{r['comm_s']:>8.4f} {100 * r['comm_s'] / r['step_s']:>6.1f} "
                  f"{r['bare_allreduce_s']:>8.5f} {r['reduced_bytes']:>10} {r['formula_values']:>8} "
                  f"{r['reduced_bytes'] / r['formula_values']:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
