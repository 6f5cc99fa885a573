"""What every ``vqcore`` subcommand shares: the program name, errors, option parsers, codebook files."""
from __future__ import annotations

import argparse
import os
from dataclasses import fields

from .. import options
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


def add_option(parser, flag, name, *, metavar, parse=float, default=None):
    """A flag for one option of :class:`vqcore.options.VQOptions`: its check, default and doc come from the table."""
    def check(text):
        try:
            return options.check(name, parse(text))
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc).replace(f"{name}=", f"{flag} ")) from None

    field = next(f for f in fields(options.VQOptions) if f.name == name)
    default = field.default if default is None else default
    shown = "" if default is None else f" (default {default:g})"
    parser.add_argument(flag, type=check, default=default, metavar=metavar, help=field.metadata["doc"] + shown)


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
