"""``vqcore fit``: train a codebook over every row (every rank's rows under mpiexec) and write it."""
from __future__ import annotations

import sys
import time

import numpy as np

from .. import metrics
from ..quantizer import VectorQuantizer
from . import data, kinds
from .common import DATA_HELP, EVAL_CHUNK_VALUES, PROG, UsageError, add_common, add_option, int_at_least
from .mpi import agree, shared_seed, world_comm


def add_parser(sub):
    """Register ``fit`` on the subcommand parsers."""
    fit = sub.add_parser("fit", help="train a codebook (k-means init, then EMA passes)",
                         description="Train a codebook: k-means on the first batch, then EMA updates "
                                     "over every batch.  Under mpiexec the ranks share the work.")
    fit.add_argument("data", nargs="+", metavar="DATA", help=DATA_HELP)
    fit.add_argument("-k", "--codebook-size", type=int_at_least(1), metavar="K",
                     help="number of codes (per stage or subspace); required except with --fsq")
    fit.add_argument("-o", "--output", required=True, metavar="CODEBOOK.npz", help="codebook file to write (.npz)")
    fit.add_argument("--cosine", action="store_true", help="unit-normalise and compare by dot product")
    add_option(fit, "--heads", "heads", metavar="H", parse=int)
    fit.add_argument("--codebook-dim", type=int_at_least(1), metavar="D", help="dims per head (must be dim // heads)")
    add_option(fit, "--kmeans-iters", "kmeans_iters", metavar="N", parse=int)
    fit.add_argument("--epochs", type=int_at_least(1), default=1, metavar="E", help="passes over the data (default 1)")
    fit.add_argument("--batch-size", type=int_at_least(1), default=4096, metavar="B",
                     help="vectors per step and rank (default 4096)")
    add_option(fit, "--decay", "decay", metavar="DECAY")
    add_option(fit, "--dead-code-threshold", "threshold_ema_dead_code", metavar="T")
    fit.add_argument("--seed", type=int_at_least(0), metavar="S", help="random seed (default: fresh randomness)")
    kinds.add_arguments(fit)
    add_common(fit)
    fit.set_defaults(func=cmd_fit)


def open_fit_data(args, comm):
    """This rank's rows: its own ``{rank}`` file, or its share of the concatenated rows (see :mod:`.data`)."""
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    return data.open_share(args.data, rank, size)


def check_codebook_size(k, total, heads):
    """-k against the vectors the data holds (before any memory is allocated for the codebook).

    Raises
    ------
    UsageError
        More codes than vectors (head slices): k-means cannot place them.
    """
    if k > total * heads:
        what = f"{total} vectors" + (f" ({total * heads} head slices with --heads {heads})" if heads > 1 else "")
        raise UsageError(f"-k {k} is larger than the {what} in the data; choose -k <= {total * heads}, "
                         "or fit on more data")


def check_fit_options(args, dim):
    """The code dimension ``--heads``/``--codebook-dim`` give for data of ``dim`` features."""
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


def batch_bounds(n_rows, n_batches):
    """Start/stop of ``n_batches`` near-equal contiguous batches (no tiny last batch)."""
    return (np.arange(n_batches + 1, dtype=np.int64) * n_rows) // n_batches


class Schedule:
    """Batches of this rank in a shuffled order shared by all ranks; advances the progress bar.

    Every rank takes the same number of steps (each step is a collective), and
    the order is drawn from a seed every rank shares.
    """

    def __init__(self, rows, batch_size, all_rows, seed, bar, quantizer):
        # --batch-size bounds every rank's batch; ranks with fewer rows take smaller (even empty) batches
        n_batches = max(-(-max(all_rows) // batch_size), 1)
        self.rows, self.bar = rows, bar
        self.bounds = batch_bounds(len(rows), n_batches)
        # vectors per step over all ranks, for the progress bar
        self.step_rows = sum(np.diff(batch_bounds(n, n_batches)) for n in all_rows)
        self.order_rng = np.random.default_rng(seed)
        self.quantizer = quantizer

    def __iter__(self):
        for j in self.order_rng.permutation(len(self.bounds) - 1):
            yield self.rows.read(int(self.bounds[j]), int(self.bounds[j + 1]))
            # the step runs after the yield returns: count it on the next one
            self.bar.update(int(self.step_rows[j]))
            self.bar.set_postfix(perplexity=f"{self.quantizer.usage()['perplexity']:.1f}", refresh=False)


def cmd_fit(args):
    """``vqcore fit``: train a codebook and write it."""
    from tqdm.auto import tqdm

    kind = kinds.chosen(args)
    comm = world_comm()
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    rows = error = None
    try:
        if rank == 0:
            data.check_output(args.output, args.force)
        rows = open_fit_data(args, comm)
        codebook_dim = check_fit_options(args, rows.dim)
        rows.check_finite()
    except (ValueError, OSError) as exc:
        error = exc
    agree(comm, error)
    all_rows = [len(rows)] if comm is None else comm.allgather_object(len(rows))
    error = None
    if rank == 0:
        try:
            if sum(all_rows) == 0:
                raise data.InputError(" ".join(args.data), "holds no vectors")
            if kind not in kinds.IMPLICIT:
                check_codebook_size(args.codebook_size, sum(all_rows), args.heads)
        except ValueError as exc:
            error = exc
    agree(comm, error)
    if comm is not None:
        dims = comm.allgather_object(rows.dim)
        agree(comm, None if len(set(dims)) == 1 else data.InputError(
            " ".join(args.data), f"ranks read different dims {dims}; every {data.RANK_FIELD} file needs the same dim"))
    seed = shared_seed(args.seed, comm)
    if kind != "vq":
        return fit_kind(kind, args, rows, comm, seed)
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
        schedule = Schedule(rows, args.batch_size, all_rows, seed, bar, quantizer)
        smallest = int(schedule.step_rows.min()) * args.heads
        if show and smallest < args.codebook_size:
            bar.write(f"{PROG}: warning: a batch may hold only {smallest} vectors for {args.codebook_size} codes, "
                      "so k-means initialisation could repeat vectors; pass a larger --batch-size", file=sys.stderr)
        quantizer.fit(schedule, epochs=args.epochs, progress=False)
    train_time = time.perf_counter() - start
    start = time.perf_counter()
    chunk = max(EVAL_CHUNK_VALUES // max(rows.dim, 1), 1)
    stats = metrics.score(quantizer, (block for _, _, block in rows.chunks(chunk)), comm=comm)
    eval_time = time.perf_counter() - start
    if rank == 0:
        with data.atomic_path(args.output, force=args.force, suffix=".npz") as tmp:
            quantizer.save(tmp)
        print_fit_summary(args, rows, stats, size, train_time, eval_time)
    return 0


def fit_kind(kind, args, rows, comm, seed):
    """Residual and product quantizers (k-means on all of this rank's rows), or FSQ/LFQ (configuration only)."""
    rank = 0 if comm is None else comm.rank
    error = quantizer = None
    try:
        quantizer = kinds.build(kind, args, rows.dim, seed, comm)
    except ValueError as exc:
        error = exc
    agree(comm, error)
    show = rank == 0 and not args.quiet
    x = rows.read(0, len(rows))
    start = time.perf_counter()
    if kind in kinds.IN_MEMORY:
        kinds.train(kind, quantizer, x, args, show)
    train_time = time.perf_counter() - start
    stats = quantizer.score(x) if kind in kinds.IN_MEMORY else metrics.score(quantizer, [x], comm=comm)
    n = sum(comm.allgather_object(len(rows))) if comm is not None else len(rows)
    if rank == 0:
        with data.atomic_path(args.output, force=args.force, suffix=".npz") as tmp:
            quantizer.save(tmp)
        print(f"data:       {n} vectors x {rows.dim} dims from {' '.join(args.data)}")
        print(f"quantizer:  {quantizer!r} -> {args.output}")
        per_stage = stats.get("mse_per_stage")
        print(f"mse:        {stats['mse']:.6g} per element" + (
            " (after stages 1..: " + ", ".join(f"{v:.4g}" for v in per_stage) + ")" if per_stage else ""))
        print(f"perplexity: {stats['perplexity']} (of the codes the data chose)")
        print(f"dead codes: {stats['dead_codes']} (no vector maps to them)")
        print(f"time:       {train_time:.3g} s training")
    return 0


def print_fit_summary(args, rows, stats, size, train_time, eval_time):
    """The closing summary of ``vqcore fit``."""
    n, dim = stats["n"], rows.dim
    sources = " ".join(args.data)
    ranks = f" on {size} ranks" if size > 1 else ""
    metric = "cosine" if args.cosine else "euclidean"
    heads = f", {args.heads} heads" if args.heads > 1 else ""
    print(f"data:       {n} vectors x {dim} dims from {sources}{ranks}")
    print(f"codebook:   {args.codebook_size} codes ({metric}{heads}) -> {args.output}")
    unit = ", vectors unit-normalised" if args.cosine else ""
    print(f"mse:        {stats['mse']:.6g} per element ({100 * stats['relative_mse']:.3g}% of the data variance "
          f"{stats['variance']:.6g}{unit})")
    print(f"inertia:    {stats['inertia']:.6g} (sum of squared distances to the chosen codes)")
    print(f"perplexity: {stats['perplexity']:.4g} of {args.codebook_size} codes (of the codes the data chose)")
    print(f"dead codes: {stats['dead_codes']} (no vector maps to them)")
    rate = n * args.epochs / train_time if train_time > 0 else float("inf")
    print(f"time:       {train_time:.3g} s training ({rate:.3g} vectors/s), {eval_time:.3g} s evaluation")
