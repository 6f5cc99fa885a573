"""The ``vqcore`` entry point: the parser and the one place that turns errors into exit codes.

Exit codes: 0 success; 2 bad usage or bad input (one line on stderr naming the
file and the problem); 1 an unexpected failure (with its traceback).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from .. import __version__
from .._optional import MissingDependencyError
from . import apply, data, demo, fit, info
from .common import PROG, UsageError
from .mpi import abort_if_mpi


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exits with 2."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def build_parser():
    """The argument parser of the ``vqcore`` command."""
    parser = _Parser(prog=PROG, description="Exact vector quantization: train, apply and inspect codebooks.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    fit.add_parser(sub)
    apply.add_parsers(sub)
    info.add_parser(sub)
    demo_parser = sub.add_parser("demo", help="fit codebooks on scikit-learn's digits and draw them",
                                 description=demo.__doc__.splitlines()[0])
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(func=demo.main)
    return parser


def main(argv=None):
    """Run the ``vqcore`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # the reader left (`vqcore info cb.npz | head`): not an error; silence the final flush
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except (UsageError, data.InputError, MissingDependencyError) as exc:
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
    abort_if_mpi(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
