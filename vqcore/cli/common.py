"""What every ``vqcore`` subcommand shares: the program name, errors, option parsers, codebook files."""
from __future__ import annotations

import argparse
import os

from . import data

PROG = "vqcore"
#: Floats per block when encoding or evaluating: about 16 MB of float32.
EVAL_CHUNK_VALUES = 1 << 22
DATA_HELP = ("vectors as the rows of a 2-D array: FILE.npy (read block by block, so it may exceed memory), "
             "FILE.npz:KEY, several files (rows concatenated) or a pattern with {rank} in the file name.  "
             "Under mpiexec plain files are split into one contiguous share per rank, and a pattern gives each "
             "rank its own file (then every DATA must be a pattern); without mpiexec a pattern reads every "
             "shard 0, 1, ... (a missing one is an error)")


class UsageError(ValueError):
    """A bad option or combination of options."""


def int_at_least(minimum):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
        return value
    return parse


def float_in(lo, hi, *, closed_hi=False):
    """An argparse type: a number in ``[lo, hi)`` (or ``[lo, hi]``)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (lo <= value < hi or (closed_hi and value == hi)):
            raise argparse.ArgumentTypeError(f"{value} must lie in [{lo}, {hi}{']' if closed_hi else ')'}")
        return value
    return parse


def add_common(parser):
    """``--quiet`` and ``--force``, which every writing subcommand takes."""
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--force", action="store_true", help="overwrite the output file if it exists")


def load_quantizer(path):
    """Any vqcore quantizer file, by its kind; file problems become :class:`data.InputError`.

    The file is first opened with the strict reader (headers and sizes only),
    so a damaged, hostile or wrong file is refused before anything is read.
    """
    from ..io import load
    from ..state import VqcoreFile

    if not os.path.exists(path):
        raise data.InputError(path, "no such file")
    try:
        VqcoreFile(path).close()
        return load(path)
    except (ValueError, TypeError, OSError, KeyError) as exc:
        message = str(exc)
        raise data.InputError(path, message.removeprefix(f"{path}: ").removeprefix(f"{path} ")) from None


def human_bytes(count):
    """``1536`` -> ``"1.5 kB"`` (powers of 1000, as file managers show)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1000
    return f"{count} B"
