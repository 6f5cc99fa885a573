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

``--encode`` measures ``vqcore encode`` under ``mpiexec -n P`` instead (the
pass over the whole data set that a distributed job exists for):

* strong scaling: ``N`` vectors in one ``.npy`` file, split over the ranks;
* weak scaling: ``N`` vectors per rank, one ``{rank}`` file each;
* per rank: wall time, vectors/s, bytes read and written, peak resident
  memory (``ru_maxrss``) and peak address space (``VmPeak``).
  ``--memory-mib M`` caps every rank's address space (``ulimit -v``) at its
  idle footprint (measured first) plus ``M`` MiB, and sizes the data file
  above that cap (``--n`` is raised if needed): encode reads and writes by
  blocks, so the peak must not grow with the rows.
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
    parser.add_argument("--encode", action="store_true", help="benchmark vqcore encode instead of partial_fit")
    parser.add_argument("--memory-mib", type=int, default=0,
                        help="with --encode: cap each rank's address space at idle + this many MiB (0: no cap)")
    parser.add_argument("--encode-worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
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


def _vm_peak_bytes() -> int:
    """This process's peak address space (``VmPeak``), the quantity ``ulimit -v`` caps."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) * 1024
    return 0


def encode_worker(argv) -> None:
    """One rank: ``vqcore encode argv`` in this process; rank 0 prints every rank's numbers as JSON."""
    import resource

    from mpi4py import MPI

    from vqcore import cli

    def io_counts():
        with open("/proc/self/io") as counters:
            return {name: int(value) for name, value in (line.split(":") for line in counters)}

    world = MPI.COMM_WORLD
    # compile the kernels on a tiny file first: the timed pass measures encoding, not the JIT
    cli.main(["encode", "cb.npz", "warm.npy", "-o", "warm-codes.npy", "--force", "--quiet"])
    world.Barrier()
    before = io_counts()
    start = time.perf_counter()
    code = cli.main(argv)
    seconds = time.perf_counter() - start
    after = io_counts()
    mine = dict(code=code, seconds=seconds, maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                vm_peak=_vm_peak_bytes(), read=after["rchar"] - before["rchar"],
                written=after["wchar"] - before["wchar"])
    everyone = world.gather(mine, root=0)
    if world.rank == 0:
        print(json.dumps(everyone))


def _write_data(path, rows, d, seed) -> None:
    """``rows x d`` float32 Gaussian vectors, written by blocks (the file may exceed the memory cap)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, d))
    rng = np.random.default_rng(seed)
    for start in range(0, rows, 1 << 16):
        stop = min(start + (1 << 16), rows)
        out[start:stop] = rng.standard_normal((stop - start, d), dtype=np.float32)
    out.flush()
    del out


def _run_encode(ranks, work, sources, limit_bytes):
    import resource

    mpiexec = Path(sys.executable).parent / "mpiexec"

    def cap():
        if limit_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    command = [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__, "--encode-worker",
               "encode", "cb.npz", *sources, "-o", "codes.npy", "--force", "--quiet"]
    out = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600, preexec_fn=cap,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise RuntimeError(f"encode on {ranks} ranks failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def encode_main(args) -> int:
    """Weak and strong scaling of ``vqcore encode``, with per-rank memory, optionally under a cap."""
    import tempfile

    import vqcore

    mib = 1 << 20
    with tempfile.TemporaryDirectory(prefix="bench-encode-", dir=REPO / "benchmarks") as work:
        work = Path(work)
        rng = np.random.default_rng(0)
        quantizer = vqcore.VectorQuantizer(args.d, args.k, kmeans_init=True, kmeans_iters=2, seed=0)
        quantizer.partial_fit(rng.standard_normal((max(4 * args.k, 4096), args.d)).astype(np.float32))
        quantizer.save(work / "cb.npz")
        _write_data(work / "warm.npy", 64, args.d, 2)
        limit = 0
        n = args.n
        if args.memory_mib:
            idle = max(r["vm_peak"] for r in _run_encode(1, work, ["warm.npy"], 0))
            limit = idle + args.memory_mib * mib
            n = max(n, (2 * args.memory_mib * mib) // (4 * args.d) + 1)  # the file is twice the headroom
            print(f"address space cap: idle {idle / mib:.0f} MiB + {args.memory_mib} MiB = {limit / mib:.0f} MiB "
                  f"per rank; data file {n * args.d * 4 / mib:.0f} MiB")
        _write_data(work / "x.npy", n, args.d, 1)
        print(f"vqcore encode, n={n} d={args.d} k={args.k}; {os.cpu_count()} cores shared by the ranks")
        print(f"{'mode':>6} {'ranks':>5} {'rows/rank':>10} {'wall s':>8} {'vec/s':>10} {'read MiB':>9} "
              f"{'written MiB':>11} {'peak RSS MiB':>12} {'VmPeak MiB':>10}")
        for mode in ("strong", "weak"):
            for ranks in args.ranks:
                if mode == "strong":
                    sources, rows = ["x.npy"], n // ranks
                else:  # every rank reads its own n rows (links to one file: the same bytes)
                    for r in range(ranks):
                        link = work / f"x-{r}.npy"
                        if not link.exists():
                            link.symlink_to("x.npy")
                    sources, rows = ["x-{rank}.npy"], n
                results = _run_encode(ranks, work, sources, limit)
                total = rows * ranks
                wall = max(r["seconds"] for r in results)
                for rank, r in enumerate(results):
                    print(f"{mode:>6} {ranks:>5} {rows:>10} {wall if rank == 0 else r['seconds']:>8.3f} "
                          f"{total / wall if rank == 0 else rows / r['seconds']:>10.3g} {r['read'] / mib:>9.1f} "
                          f"{r['written'] / mib:>11.2f} {r['maxrss'] / mib:>12.1f} {r['vm_peak'] / mib:>10.1f}"
                          + ("  (job)" if rank == 0 else f"  (rank {rank})"))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.encode_worker is not None:
        encode_worker(args.encode_worker)
        return 0
    if args.encode:
        return encode_main(args)
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
