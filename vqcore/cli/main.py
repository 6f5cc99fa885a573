"""The ``vqcore`` command line: fit, encode, decode, info and demo.

Exit codes: 0 success; 2 bad usage or bad input (one line on stderr naming the
file and the problem); 1 an unexpected failure (with its traceback).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import numpy as np

from . import data

__all__ = ["main", "build_parser"]

PROG = "vqcore"
# Environment variables MPI launchers set: (rank, world size).
_MPI_ENV = (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMIX_RANK", None))
EVAL_CHUNK_VALUES = 1 << 22  # floats per block when encoding/evaluating: ~16 MB of float32


class UsageError(ValueError):
    """A bad option or combination of options."""


# -- argument parsing ---------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exits with 2."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
        return value
    return parse


def _float_in(lo, hi, *, closed_hi=False):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (lo <= value < hi or (closed_hi and value == hi)):
            raise argparse.ArgumentTypeError(f"{value} must lie in [{lo}, {hi}{']' if closed_hi else ')'}")
        return value
    return parse


def build_parser():
    """The argument parser of the ``vqcore`` command."""
    parser = _Parser(prog=PROG, description="Exact vector quantization: train, apply and inspect codebooks.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    data_help = ("vectors as rows: FILE.npy (memory-mapped), FILE.npz:KEY, several files (rows concatenated) "
                 "or a pattern with {rank} (one file per MPI rank)")

    fit = sub.add_parser("fit", help="train a codebook (k-means init, then EMA passes)",
                         description="Train a codebook: k-means on the first batch, then EMA updates "
                                     "over every batch.  Under mpiexec the ranks share the work.")
    fit.add_argument("data", nargs="+", metavar="DATA", help=data_help)
    fit.add_argument("-k", "--codebook-size", type=_int_at_least(1), required=True, metavar="K", help="number of codes")
    fit.add_argument("-o", "--output", required=True, metavar="CODEBOOK.npz", help="codebook file to write (.npz)")
    fit.add_argument("--cosine", action="store_true", help="unit-normalise and compare by dot product")
    fit.add_argument("--heads", type=_int_at_least(1), default=1, metavar="H", help="split vectors into H parts sharing a codebook")
    fit.add_argument("--codebook-dim", type=_int_at_least(1), metavar="D", help="dims per head (must be dim // heads)")
    fit.add_argument("--kmeans-iters", type=_int_at_least(0), default=10, metavar="N", help="k-means iterations (default 10)")
    fit.add_argument("--epochs", type=_int_at_least(1), default=1, metavar="E", help="passes over the data (default 1)")
    fit.add_argument("--batch-size", type=_int_at_least(1), default=4096, metavar="B",
                     help="vectors per step and rank (default 4096)")
    fit.add_argument("--decay", type=_float_in(0.0, 1.0), default=0.8, metavar="DECAY", help="EMA decay (default 0.8)")
    fit.add_argument("--dead-code-threshold", type=_float_in(0.0, float("inf")), default=0.0, metavar="T",
                     help="re-seed codes whose EMA size falls below this (default 0: never)")
    fit.add_argument("--seed", type=_int_at_least(0), metavar="S", help="random seed (default: fresh randomness)")
    _add_common(fit)
    fit.set_defaults(func=cmd_fit)

    enc = sub.add_parser("encode", help="write the nearest code of every vector")
    enc.add_argument("codebook", metavar="CODEBOOK.npz")
    enc.add_argument("data", nargs="+", metavar="DATA", help=data_help)
    enc.add_argument("-o", "--output", required=True, metavar="CODES.npy", help="codes file to write (.npy)")
    _add_common(enc)
    enc.set_defaults(func=cmd_encode)

    dec = sub.add_parser("decode", help="write the code vectors of code indices (float32)")
    dec.add_argument("codebook", metavar="CODEBOOK.npz")
    dec.add_argument("codes", metavar="CODES.npy")
    dec.add_argument("-o", "--output", required=True, metavar="VECTORS.npy", help="vectors file to write (.npy)")
    _add_common(dec)
    dec.set_defaults(func=cmd_decode)

    info = sub.add_parser("info", help="show a codebook's configuration and usage")
    info.add_argument("codebook", metavar="CODEBOOK.npz")
    info.set_defaults(func=cmd_info)

    from . import demo

    demo_parser = sub.add_parser("demo", help="fit codebooks on scikit-learn's digits and draw them",
                                 description=demo.__doc__.splitlines()[0])
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(func=demo.main)
    return parser


def _add_common(parser):
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--force", action="store_true", help="overwrite the output file if it exists")


# -- MPI ---------------------------------------------------------------------
def _launched_size():
    """World size announced by an MPI launcher (None: a rank variable but no size)."""
    for rank_var, size_var in _MPI_ENV:
        if rank_var in os.environ:
            value = os.environ.get(size_var or "", "")
            return int(value) if value.isdigit() else None
    return 1


def world_comm():
    """An ``MPIComm`` when launched by mpiexec on more than one rank, else None.

    mpi4py is imported only under a launcher, so a plain run never starts MPI.
    """
    size = _launched_size()
    if size == 1:
        return None
    try:
        from .comm import MPIComm
    except ImportError:
        raise UsageError("running under mpiexec, but this vqcore has no vqcore.comm.MPIComm; "
                         "run without mpiexec or upgrade vqcore") from None
    try:
        comm = MPIComm()
    except ImportError as exc:
        raise UsageError(f"running under mpiexec, but {exc}") from None
    return comm if comm.size > 1 else None


def _agree(comm, error):
    """Share each rank's preparation error; every rank learns whether any failed.

    Prevents one rank from quitting while the others wait for it in a collective.
    """
    if comm is None:
        if error is not None:
            raise error
        return
    errors = comm.allgather_object(None if error is None else str(error))
    failed = [(rank, message) for rank, message in enumerate(errors) if message is not None]
    if failed:
        if comm.rank == 0:
            for message in dict.fromkeys(message for _, message in failed):
                print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


# -- fit ---------------------------------------------------------------------
def _open_fit_data(args, comm):
    """This rank's rows: its own ``{rank}`` file, or its share of the concatenated rows."""
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    per_rank_files = size > 1 and any(data.RANK_FIELD in s for s in args.data)
    rows = data.open_rows(args.data, rank=rank if per_rank_files else None)
    if size > 1 and not per_rank_files:
        n = len(rows)
        if n < size:
            raise data.InputError(" ".join(args.data), f"holds {n} vectors, fewer than the {size} ranks")
        rows = rows.slice(rank * n // size, (rank + 1) * n // size)
    return rows


def _check_fit_options(args, dim):
    heads = args.heads
    if args.codebook_dim is None:
        if dim % heads:
            raise UsageError(f"--heads {heads} does not divide the data's dim {dim}; choose a divisor of {dim}")
        return dim // heads
    if args.codebook_dim * heads != dim:
        raise UsageError(
            f"--codebook-dim {args.codebook_dim} x --heads {heads} = {args.codebook_dim * heads}, but the data has "
            f"dim {dim}; vqcore fit trains no projections, so leave --codebook-dim out (it defaults to dim // heads)"
        )
    return args.codebook_dim


def _batch_bounds(n_rows, n_batches):
    """Start/stop of ``n_batches`` near-equal contiguous batches (no tiny last batch)."""
    return (np.arange(n_batches + 1, dtype=np.int64) * n_rows) // n_batches


def _shared_seed(seed, comm):
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (1 << 63))
    if comm is not None:
        seed = comm.allgather_object(seed)[0]  # rank 0's choice
    return seed


class _Schedule:
    """Batches of this rank in a shuffled order shared by all ranks; advances the progress bar.

    Every rank takes the same number of steps (each step is a collective), and
    the order is drawn from a seed every rank shares.
    """

    def __init__(self, rows, batch_size, all_rows, seed, bar, quantizer):
        n_batches = max(-(-max(all_rows) // batch_size), 1)
        n_batches = min(n_batches, min(all_rows))  # no rank may get an empty batch
        self.rows, self.bar = rows, bar
        self.bounds = _batch_bounds(len(rows), n_batches)
        # vectors per step over all ranks, for the progress bar
        self.step_rows = sum(np.diff(_batch_bounds(n, n_batches)) for n in all_rows)
        self.order_rng = np.random.default_rng(seed)
        self.quantizer = quantizer

    def __iter__(self):
        for j in self.order_rng.permutation(len(self.bounds) - 1):
            yield self.rows.read(int(self.bounds[j]), int(self.bounds[j + 1]))
            # the step runs after the yield returns: count it on the next one
            self.bar.update(int(self.step_rows[j]))
            self.bar.set_postfix(perplexity=f"{self.quantizer.usage()['perplexity']:.1f}", refresh=False)


def _evaluate(quantizer, rows, comm):
    """Reconstruction error and code counts over all rows (all ranks)."""
    k = quantizer.codebook_size
    chunk = max(EVAL_CHUNK_VALUES // max(rows.dim, 1), 1)
    sse = np.zeros(1 + 2 * rows.dim, dtype=np.float64)  # [sum sq. error, sum x, sum x^2]
    counts = np.zeros(k, dtype=np.int64)
    for _, _, block in rows.chunks(chunk):
        reconstructed, indices = quantizer.quantize(block)
        if quantizer.use_cosine_sim:  # cosine codes are unit vectors: compare directions, not lengths
            block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        sse[0] += float(np.square(reconstructed - block, dtype=np.float64).sum())
        sse[1:1 + rows.dim] += block.sum(axis=0, dtype=np.float64)
        sse[1 + rows.dim:] += np.square(block, dtype=np.float64).sum(axis=0)
        counts += np.bincount(indices.ravel(), minlength=k)
    n = np.array([len(rows)], dtype=np.int64)
    if comm is not None:
        comm.allreduce_sum_(sse)
        comm.allreduce_sum_(counts)
        comm.allreduce_sum_(n)
    n = int(n[0])
    mean = sse[1:1 + rows.dim] / n
    variance = float((sse[1 + rows.dim:] / n - mean**2).sum() / rows.dim)
    p = counts / counts.sum()
    perplexity = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    return {"n": n, "inertia": float(sse[0]), "mse": float(sse[0]) / (n * rows.dim), "variance": variance,
            "perplexity": perplexity, "dead_codes": int((counts == 0).sum())}


def cmd_fit(args):
    """``vqcore fit``: train a codebook and write it."""
    from tqdm.auto import tqdm

    from .quantizer import VectorQuantizer

    comm = world_comm()
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    rows = error = None
    try:
        if rank == 0:
            data.check_output(args.output, args.force)
        rows = _open_fit_data(args, comm)
        codebook_dim = _check_fit_options(args, rows.dim)
        rows.check_finite()
    except (ValueError, OSError) as exc:
        error = exc
    _agree(comm, error)
    all_rows = [len(rows)] if comm is None else comm.allgather_object(len(rows))
    if comm is not None:
        dims = comm.allgather_object(rows.dim)
        _agree(comm, None if len(set(dims)) == 1 else data.InputError(
            " ".join(args.data), f"ranks read different dims {dims}; every {data.RANK_FIELD} file needs the same dim"))
    seed = _shared_seed(args.seed, comm)
    quantizer = VectorQuantizer(
        rows.dim, args.codebook_size, codebook_dim=codebook_dim, heads=args.heads, use_cosine_sim=args.cosine,
        decay=args.decay, kmeans_init=True, kmeans_iters=args.kmeans_iters,
        threshold_ema_dead_code=args.dead_code_threshold,
        seed=seed if comm is None else np.random.default_rng([seed, rank]), comm=comm,
    )
    total = sum(all_rows)
    show = rank == 0 and not args.quiet
    start = time.perf_counter()
    with tqdm(total=total * args.epochs, unit="vec", unit_scale=True, desc="fit", disable=not show,
              file=sys.stderr, dynamic_ncols=True) as bar:
        schedule = _Schedule(rows, args.batch_size, all_rows, seed, bar, quantizer)
        smallest = int(schedule.step_rows.min()) * args.heads
        if show and smallest < args.codebook_size:
            bar.write(f"{PROG}: warning: a batch may hold only {smallest} vectors for {args.codebook_size} codes, "
                      "so k-means initialisation could repeat vectors; pass a larger --batch-size", file=sys.stderr)
        quantizer.fit(schedule, epochs=args.epochs, progress=False)
    train_time = time.perf_counter() - start
    start = time.perf_counter()
    stats = _evaluate(quantizer, rows, comm)
    eval_time = time.perf_counter() - start
    if rank == 0:
        with data.atomic_path(args.output, force=args.force, suffix=".npz") as tmp:
            quantizer.save(tmp)
        _print_fit_summary(args, rows, stats, size, train_time, eval_time)
    return 0


def _print_fit_summary(args, rows, stats, size, train_time, eval_time):
    n, dim = stats["n"], rows.dim
    sources = " ".join(args.data)
    ranks = f" on {size} ranks" if size > 1 else ""
    metric = "cosine" if args.cosine else "euclidean"
    heads = f", {args.heads} heads" if args.heads > 1 else ""
    share = 100 * stats["mse"] / stats["variance"] if stats["variance"] > 0 else float("nan")
    print(f"data:       {n} vectors x {dim} dims from {sources}{ranks}")
    print(f"codebook:   {args.codebook_size} codes ({metric}{heads}) -> {args.output}")
    unit = ", vectors unit-normalised" if args.cosine else ""
    print(f"mse:        {stats['mse']:.6g} per element ({share:.3g}% of the data variance "
          f"{stats['variance']:.6g}{unit})")
    print(f"inertia:    {stats['inertia']:.6g} (sum of squared distances to the chosen codes)")
    print(f"perplexity: {stats['perplexity']:.4g} of {args.codebook_size} codes")
    print(f"dead codes: {stats['dead_codes']} (no vector maps to them)")
    rate = n * args.epochs / train_time if train_time > 0 else float("inf")
    print(f"time:       {train_time:.3g} s training ({rate:.3g} vectors/s), {eval_time:.3g} s evaluation")


# -- encode / decode / info ---------------------------------------------------
def _load_codebook(path):
    from .quantizer import VectorQuantizer

    if not os.path.exists(path):
        raise data.InputError(path, "no such file")
    try:
        return VectorQuantizer.load(path)
    except (ValueError, TypeError, OSError, KeyError) as exc:
        message = str(exc)
        raise data.InputError(path, message.removeprefix(f"{path}: ").removeprefix(f"{path} ")) from None


def _single_process(command):
    size = _launched_size()
    if size != 1:
        raise UsageError(f"{command} runs on one process; run it without mpiexec")


def cmd_encode(args):
    """``vqcore encode``: nearest code of every vector, in the smallest integer dtype."""
    from tqdm.auto import tqdm

    _single_process("vqcore encode")
    quantizer = _load_codebook(args.codebook)
    rows = data.open_rows(args.data)
    if rows.dim != quantizer.dim:
        raise data.InputError(" ".join(args.data), f"has dim {rows.dim} but {args.codebook} was trained on "
                                                   f"dim {quantizer.dim}")
    data.check_output(args.output, args.force)
    heads = (quantizer.heads,) if quantizer.heads > 1 else ()
    chunk = max(EVAL_CHUNK_VALUES // rows.dim, 1)
    with data.atomic_npy(args.output, tuple(rows.lead_shape) + heads, data.codes_dtype(quantizer.codebook_size),
                         force=args.force) as out, \
            tqdm(total=len(rows), unit="vec", unit_scale=True, desc="encode", disable=args.quiet,
                 file=sys.stderr, dynamic_ncols=True) as bar:
        flat = out.reshape((len(rows),) + heads)
        for start, stop, block in rows.chunks(chunk):
            rows.check_block(start, block)
            flat[start:stop] = quantizer.encode(block)
            bar.update(stop - start)
    return 0


def cmd_decode(args):
    """``vqcore decode``: code vectors of code indices, float32."""
    _single_process("vqcore decode")
    quantizer = _load_codebook(args.codebook)
    codes = data.open_codes(args.codes)
    heads = quantizer.heads
    if heads > 1 and codes.shape[-1] != heads:
        raise data.InputError(args.codes, f"has shape {codes.shape}; {args.codebook} has {heads} heads, so the "
                                          f"last axis must hold {heads} codes")
    lead = codes.shape[:-1] if heads > 1 else codes.shape
    n = int(np.prod(lead, dtype=np.int64))
    data.check_output(args.output, args.force)
    flat_codes = codes.reshape((n,) + ((heads,) if heads > 1 else ()))
    chunk = max(EVAL_CHUNK_VALUES // quantizer.dim, 1)
    with data.atomic_npy(args.output, tuple(lead) + (quantizer.dim,), np.float32, force=args.force) as out:
        flat = out.reshape(n, quantizer.dim)
        for start in range(0, n, chunk):
            block = np.asarray(flat_codes[start:start + chunk])
            try:
                flat[start:start + chunk] = quantizer.decode(block)
            except ValueError as exc:
                raise data.InputError(args.codes, f"{exc} (rows {start}..{start + len(block) - 1})") from None
    return 0


USAGE_BINS = (  # (label, upper edge as a multiple of uniform use)
    ("< 0.1x", 0.1), ("0.1-0.5x", 0.5), ("0.5-2x", 2.0), ("2-10x", 10.0), (">= 10x", np.inf),
)


def usage_histogram(counts, dead_threshold, width=40):
    """Text histogram: how many codes are dead, or used at each multiple of the uniform share."""
    counts = np.asarray(counts, dtype=np.float64).ravel()
    uniform = counts.sum() / counts.size if counts.sum() > 0 else 1.0
    dead = counts < dead_threshold
    relative = counts[~dead] / uniform
    bins = [(f"dead (< {dead_threshold:g})", int(dead.sum()))]
    lower = 0.0
    for label, upper in USAGE_BINS:
        bins.append((label, int(((relative >= lower) & (relative < upper)).sum())))
        lower = upper
    top = max(count for _, count in bins) or 1
    lines = []
    for label, count in bins:
        bar = "#" * int(round(width * count / top))
        lines.append(f"  {label:>14} | {bar:<{width}} {count}")
    return "\n".join(lines)


def cmd_info(args):
    """``vqcore info``: configuration, usage histogram, perplexity, dead codes."""
    quantizer = _load_codebook(args.codebook)
    config = quantizer.config
    usage = quantizer.usage()
    threshold = config["threshold_ema_dead_code"] or 1e-3
    trained = bool(quantizer.state_dict()["_codebook.initted"][0])
    print(f"file:        {args.codebook}")
    print(f"codebook:    {quantizer.codebook_size} codes x {quantizer.codebook_dim} dims "
          f"({'cosine' if quantizer.use_cosine_sim else 'euclidean'}), {quantizer.heads} head(s), "
          f"input dim {quantizer.dim}")
    print(f"trained:     {'yes' if trained else 'no (k-means initialisation has not run)'}")
    print("config:      " + ", ".join(f"{k}={v}" for k, v in sorted(config.items())))
    print(f"perplexity:  {usage['perplexity']:.4g} of {quantizer.codebook_size} codes (EMA usage)")
    print(f"dead codes:  {usage['dead_codes']} (EMA size < {threshold:g})")
    print("usage (codes per multiple of the uniform share):")
    print(usage_histogram(usage["counts"], threshold))
    return 0


# -- entry point ----------------------------------------------------------------
def _is_mpi_run():
    return _launched_size() != 1


def _abort_if_mpi(code):
    """One failing rank must not leave the others waiting in a collective."""
    if _is_mpi_run() and "mpi4py" in sys.modules:
        from mpi4py import MPI

        if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(code)


def main(argv=None):
    """Run the ``vqcore`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, data.InputError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        code = 2
    except (ValueError, TypeError, OSError) as exc:  # bad input that vqcore itself rejected
        where = getattr(exc, "filename", None)
        prefix = f"{where}: " if where and str(where) not in str(exc) else ""
        print(f"{PROG}: error: {prefix}{exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        code = 130
    except Exception:  # noqa: BLE001 -- the one place that turns a bug into exit code 1
        traceback.print_exc()
        print(f"{PROG}: unexpected failure; please report it with the traceback above", file=sys.stderr)
        code = 1
    _abort_if_mpi(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
