"""``vqcore encode`` and ``vqcore decode``: apply a trained quantizer of any kind to rows or codes.

Under ``mpiexec -n P`` each rank takes its share of the input (see
:mod:`vqcore.cli.data` for the rules) and all ranks write one output file
through :func:`vqcore.state.open_rows_writer`; with ``{rank}`` in ``-o`` each
rank writes its own file.  Any rank's failure leaves no output and every rank
exits 2 with that rank's message.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from ..state import OtherRankFailed, open_rows_writer
from . import data
from .common import DATA_HELP, EVAL_CHUNK_VALUES, add_common, human_bytes, load_quantizer
from .mpi import agree, world_comm

#: Blocks between two progress all-reduces under mpiexec (a collective per block would cost more than it shows).
PROGRESS_EVERY = 8

CODEBOOK_HELP = "a quantizer file of any kind, written by vqcore fit or by save() in Python"
ENCODE_DESCRIPTION = (
    "Write the code(s) of every vector to one .npy file, in the smallest unsigned integer dtype: shape (n,) "
    "for one codebook, (n, heads), (n, stages), (n, groups, stages) or (n, subspaces) otherwise.  Under "
    "mpiexec each rank encodes its share of the rows (or its own {rank} file) and all ranks write one file; "
    "put {rank} in -o for one output file per rank.  Prints a summary: vectors, throughput, output size, "
    "compression.")
DECODE_DESCRIPTION = (
    "Write the reconstruction of every row of codes (the output of vqcore encode) as float32 vectors, "
    "shape (n, dim).  Under mpiexec the ranks share the rows as in encode.")


def add_parsers(sub):
    """Register ``encode`` and ``decode`` on the subcommand parsers."""
    enc = sub.add_parser("encode", help="write the nearest code of every vector", description=ENCODE_DESCRIPTION)
    enc.add_argument("codebook", metavar="CODEBOOK.npz", help=CODEBOOK_HELP)
    enc.add_argument("data", nargs="+", metavar="DATA", help=DATA_HELP)
    enc.add_argument("-o", "--output", required=True, metavar="CODES.npy",
                     help="codes file to write (.npy); {rank} in the name: one file per rank")
    add_common(enc)
    enc.set_defaults(func=cmd_encode)

    dec = sub.add_parser("decode", help="write the code vectors of code indices (float32)",
                         description=DECODE_DESCRIPTION)
    dec.add_argument("codebook", metavar="CODEBOOK.npz", help=CODEBOOK_HELP)
    dec.add_argument("codes", nargs="+", metavar="CODES",
                     help="codes as rows: CODES.npy, several files, or a pattern with {rank}")
    dec.add_argument("-o", "--output", required=True, metavar="VECTORS.npy",
                     help="vectors file to write (.npy); {rank} in the name: one file per rank")
    add_common(dec)
    dec.set_defaults(func=cmd_decode)


def _rank_size(comm):
    return (0, 1) if comm is None else (comm.rank, comm.size)


def _prepare(args, comm, open_input):
    """Load the codebook, open this rank's input and check the output, agreeing on errors.

    Returns ``(quantizer, rows, output path of this rank)``.
    """
    rank, size = _rank_size(comm)
    per_rank_output = data.RANK_FIELD in args.output
    output = args.output.replace(data.RANK_FIELD, str(rank)) if per_rank_output else args.output
    quantizer = rows = error = None
    try:
        if per_rank_output or rank == 0:
            data.check_output(output, args.force)
        quantizer = load_quantizer(args.codebook)
        rows = open_input(quantizer, rank, size)
    except (ValueError, OSError) as exc:
        error = exc
    agree(comm, error)
    counts = [len(rows)] if comm is None else comm.allgather_object(len(rows))
    empty = data.InputError(" ".join(getattr(args, "data", None) or args.codes), "holds no rows")
    agree(comm, empty if sum(counts) == 0 and rank == 0 else None)
    return quantizer, rows, output, sum(counts)


def _stream(args, comm, rows, output, row_shape, dtype, transform, desc, values_per_row):
    """Read this rank's rows block by block, transform them and write the results; returns seconds taken.

    Every rank takes the same number of steps, so the progress all-reduce
    (every :data:`PROGRESS_EVERY` blocks) never waits for a rank that is done;
    a failing rank keeps stepping (without work) and the failure is agreed at
    the end.
    """
    from tqdm.auto import tqdm

    rank, size = _rank_size(comm)
    shared = data.RANK_FIELD not in args.output
    chunk = max(EVAL_CHUNK_VALUES // max(values_per_row, 1), 1)
    n_local = len(rows)
    local_steps = -(-n_local // chunk)
    steps = local_steps if comm is None else max(comm.allgather_object(local_steps))
    total = n_local if comm is None else sum(comm.allgather_object(n_local))
    start_time = time.perf_counter()
    try:
        with open_rows_writer(output, n_local, row_shape, dtype, comm=comm, overwrite=args.force,
                              shared=shared) as writer, \
                tqdm(total=total, unit="vec", unit_scale=True, desc=desc, disable=args.quiet or rank != 0,
                     file=sys.stderr, dynamic_ncols=True) as bar:
            error, done = None, 0
            for step in range(steps):
                start = step * chunk
                if error is None and start < n_local:
                    stop = min(start + chunk, n_local)
                    try:
                        writer.write(start, transform(start, rows.read(start, stop, dtype=None)))
                    except (ValueError, OSError) as exc:
                        error = exc
                    done += stop - start
                if comm is None:
                    bar.update(done - bar.n)
                elif (step + 1) % PROGRESS_EVERY == 0 or step == steps - 1:
                    counts = comm.allreduce_sum_(np.array([done, error is not None], dtype=np.int64))
                    bar.update(int(counts[0]) - bar.n)
                    if counts[1]:  # some rank failed: stop early, together
                        break
            agree(comm, error)
    except FileExistsError:
        agree(comm, data.InputError(output, "already exists (created while this command ran); "
                                            "pass --force to overwrite it"))
    except OtherRankFailed:
        agree(comm, None)  # the failing rank reports its own error in the same agreement
    except (ValueError, OSError) as exc:
        agree(comm, exc)
    return time.perf_counter() - start_time


def _output_bytes(args, comm, output):
    """Bytes of every output file (one shared file, or one per rank)."""
    if data.RANK_FIELD not in args.output or comm is None:
        return os.path.getsize(output) if (comm is None or comm.rank == 0) else 0
    return sum(comm.allgather_object(os.path.getsize(output)))


def shape_text(tail):
    """``(2, 3)`` -> ``"(n, 2, 3)"``; ``()`` -> ``"(n,)"``."""
    return "(n, " + ", ".join(map(str, tail)) + ")" if tail else "(n,)"


def _summary(verb, n, what, seconds, size, output, out_bytes, ratio_text):
    ranks = f" on {size} ranks" if size > 1 else ""
    rate = n / seconds if seconds > 0 else float("inf")
    print(f"{verb} {n} {what} in {seconds:.3g} s ({rate:.3g}/s){ranks} -> {output}: "
          f"{human_bytes(out_bytes)}, {ratio_text}")


def cmd_encode(args):
    """``vqcore encode``: the code(s) of every vector, in the smallest integer dtype."""
    comm = world_comm()
    rank, size = _rank_size(comm)

    def open_input(quantizer, rank, size):
        rows = data.open_share(args.data, rank, size, allow_empty=size > 1)
        if len(rows) and rows.dim != quantizer.dim:
            raise data.InputError(rows.names[0], f"has dim {rows.dim} but {args.codebook} was trained on "
                                                 f"dim {quantizer.dim}")
        return rows

    quantizer, rows, output, total = _prepare(args, comm, open_input)
    tail = tuple(quantizer.code_shape)
    dtype = data.codes_dtype(quantizer.codebook_size)

    def transform(start, block):
        block = np.asarray(block, dtype=np.float32)
        rows.check_block(start, block)
        return quantizer.encode(block)

    seconds = _stream(args, comm, rows, output, tail, dtype, transform, "encode", quantizer.dim)
    out_bytes = _output_bytes(args, comm, output)
    if rank == 0:
        code_bytes = total * int(np.prod(tail, dtype=np.int64)) * dtype.itemsize
        ratio = total * quantizer.dim * 4 / code_bytes if code_bytes else float("nan")
        _summary("encoded", total, f"vectors x {quantizer.dim} dims", seconds, size, args.output, out_bytes,
                 f"{np.dtype(dtype).name} codes of shape {shape_text(tail)}: "
                 f"{ratio:.3g}x smaller than the vectors as float32")
    return 0


def cmd_decode(args):
    """``vqcore decode``: the reconstruction of every row of codes, float32."""
    comm = world_comm()
    rank, size = _rank_size(comm)

    def open_input(quantizer, rank, size):
        tail = tuple(quantizer.code_shape)
        return data.open_share(args.codes, rank, size, allow_empty=size > 1,
                               opener=lambda name: data.open_codes(name, tail))

    quantizer, rows, output, total = _prepare(args, comm, open_input)

    def transform(start, block):
        try:
            return quantizer.decode(np.asarray(block))
        except ValueError as exc:
            name, row = rows.name_of_row(start)
            raise data.InputError(name, f"{exc} (rows {row}..{row + len(block) - 1})") from None

    seconds = _stream(args, comm, rows, output, (quantizer.dim,), np.float32, transform, "decode", quantizer.dim)
    out_bytes = _output_bytes(args, comm, output)
    if rank == 0:
        code_bytes = total * int(np.prod(rows.row_shape, dtype=np.int64)) * rows.arrays[0].dtype.itemsize \
            if rows.arrays else 0
        ratio = total * quantizer.dim * 4 / code_bytes if code_bytes else float("nan")
        _summary("decoded", total, f"rows of codes to {quantizer.dim} dims", seconds, size, args.output,
                 out_bytes, f"float32, {ratio:.3g}x the size of the codes")
    return 0
