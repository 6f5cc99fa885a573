"""``vqcore encode`` and ``vqcore decode``: apply a trained quantizer of any kind to a file of rows or codes."""
from __future__ import annotations

import sys

import numpy as np

from . import data
from .common import DATA_HELP, EVAL_CHUNK_VALUES, UsageError, add_common, load_quantizer
from .mpi import launched_size


def add_parsers(sub):
    """Register ``encode`` and ``decode`` on the subcommand parsers."""
    enc = sub.add_parser("encode", help="write the nearest code of every vector",
                         description="Write the code(s) of every vector, in the smallest unsigned integer dtype: "
                                     "shape (n,) for one codebook, (n, columns) for heads, stages or subspaces.")
    enc.add_argument("codebook", metavar="CODEBOOK.npz")
    enc.add_argument("data", nargs="+", metavar="DATA", help=DATA_HELP)
    enc.add_argument("-o", "--output", required=True, metavar="CODES.npy", help="codes file to write (.npy)")
    add_common(enc)
    enc.set_defaults(func=cmd_encode)

    dec = sub.add_parser("decode", help="write the code vectors of code indices (float32)",
                         description="Write the reconstruction of every row of codes, as float32 vectors.")
    dec.add_argument("codebook", metavar="CODEBOOK.npz")
    dec.add_argument("codes", metavar="CODES.npy")
    dec.add_argument("-o", "--output", required=True, metavar="VECTORS.npy", help="vectors file to write (.npy)")
    add_common(dec)
    dec.set_defaults(func=cmd_decode)


def _single_process(command):
    if launched_size() != 1:
        raise UsageError(f"{command} runs on one process; run it without mpiexec")


def cmd_encode(args):
    """``vqcore encode``: the code(s) of every vector, in the smallest integer dtype."""
    from tqdm.auto import tqdm

    _single_process("vqcore encode")
    quantizer = load_quantizer(args.codebook)
    rows = data.open_rows(args.data)
    if rows.dim != quantizer.dim:
        raise data.InputError(" ".join(args.data), f"has dim {rows.dim} but {args.codebook} was trained on "
                                                   f"dim {quantizer.dim}")
    data.check_output(args.output, args.force)
    tail = tuple(quantizer.code_shape)
    chunk = max(EVAL_CHUNK_VALUES // rows.dim, 1)
    with data.atomic_npy(args.output, tuple(rows.lead_shape) + tail, data.codes_dtype(quantizer.codebook_size),
                         force=args.force) as out, \
            tqdm(total=len(rows), unit="vec", unit_scale=True, desc="encode", disable=args.quiet,
                 file=sys.stderr, dynamic_ncols=True) as bar:
        flat = out.reshape((len(rows),) + tail)
        for start, stop, block in rows.chunks(chunk):
            rows.check_block(start, block)
            flat[start:stop] = quantizer.encode(block)
            bar.update(stop - start)
    return 0


def cmd_decode(args):
    """``vqcore decode``: the reconstruction of every row of codes, float32."""
    _single_process("vqcore decode")
    quantizer = load_quantizer(args.codebook)
    codes = data.open_codes(args.codes)
    tail = tuple(quantizer.code_shape)
    if codes.ndim < len(tail):  # the quantizer's decode checks the rest (and accepts stage prefixes)
        raise data.InputError(args.codes, f"has shape {codes.shape}; {args.codebook} writes codes of shape "
                                          f"(n, {', '.join(map(str, tail))})")
    lead = codes.shape[:codes.ndim - len(tail)]
    n = int(np.prod(lead, dtype=np.int64))
    data.check_output(args.output, args.force)
    flat_codes = codes.reshape((n,) + codes.shape[len(lead):])
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
