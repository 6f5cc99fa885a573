"""Command line: ``python -m benchmarks [--quick] [--only NAME[,NAME]] [--repeat R]``.

Runs the selected workloads in this process (subprocesses for start-up and
memory), prints a table and writes ``results/<timestamp>.json`` and
``results/latest.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path

from . import (wl_fsq_lfq, wl_kmeans, wl_memory, wl_nearest, wl_quantizer, wl_residual, wl_residual_torch,
               wl_startup, wl_vqtorch)
from .core import Case, Config
from .environment import apply_threads, describe, load_average
from .report import record, table, write

#: Workloads in the order they run; ``--only`` picks among their names.
WORKLOADS = {module.NAME: module for module in (wl_nearest, wl_memory, wl_kmeans, wl_startup, wl_quantizer,
                                                wl_vqtorch, wl_residual, wl_residual_torch, wl_fsq_lfq)}

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {unknown or text!r}; choose from {', '.join(WORKLOADS)}"
        )
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="vqcore benchmark suite: vqcore and its peers timed in the same run, as ratios.",
        epilog="workloads: " + "; ".join(f"{name}: {m.DESCRIPTION}" for name, m in WORKLOADS.items()),
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds); for smoke tests")
    parser.add_argument("--only", type=_names, default=list(WORKLOADS), metavar="NAME[,NAME]",
                        help=f"run only these workloads ({', '.join(WORKLOADS)})")
    parser.add_argument("--repeat", type=_positive_int, default=None, metavar="R",
                        help="timed rounds after the warm-up, one call of each implementation per round; "
                             "the best is reported (default 3, quick 2)")
    parser.add_argument("--threads", type=_positive_int, default=2,
                        help="threads for numba, BLAS/OpenMP, torch and faiss (default 2)")
    parser.add_argument("--budget", type=float, default=20.0, metavar="SECONDS",
                        help="stop repeating an implementation once it used this long (default 20)")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS, metavar="DIR",
                        help=f"folder for the JSON files (default {DEFAULT_RESULTS})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run the suite; returns the process exit status (0 unless the suite itself broke)."""
    args = parse_args(argv)
    repeat = args.repeat or (2 if args.quick else 3)
    config = Config(quick=args.quick, repeat=repeat, threads=args.threads, budget_s=args.budget)
    apply_threads(config.threads)
    started = datetime.now(timezone.utc)
    load_before = load_average()
    cases: list[Case] = []
    for name in args.only:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            cases.extend(WORKLOADS[name].run(config))
        except Exception as exc:  # one broken workload must not lose the others' numbers
            traceback.print_exc()
            cases.append(Case(name, "(workload failed)", {}, notes=[f"{type(exc).__name__}: {exc}"]))
    load_after = load_average()
    print(table(cases, config.quick))
    print(f"load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
          f"on {os.cpu_count()} CPUs (the suite itself adds about its thread count; "
          "load before it, or well above that after, means other processes competed for the cores)")
    meta = {
        "timestamp": started.isoformat(),
        "duration_s": (datetime.now(timezone.utc) - started).total_seconds(),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "quick": config.quick,
        "repeat": config.repeat,
        "budget_s": config.budget_s,
        "timing": ("one warm-up call per implementation, then `repeat` rounds of one time.perf_counter "
                   "timing of each implementation in turn; the best is reported"),
        "environment": describe(config.threads),
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    stamped, latest = write(record(cases, meta), args.out, stamp)
    print(f"\nwrote {stamped} and {latest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
