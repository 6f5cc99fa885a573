"""Peak memory of nearest-code search (issue 2): must not grow with n beyond input and output.

Each measurement runs in a fresh process (see ``_probe_memory``); the figure
reported is the peak resident-set growth during one call, minus the bytes of
the returned arrays.
"""
from __future__ import annotations

from .child import run_probe
from .core import ERROR, MISSING, OK, Case, Config, Row, Target, evaluate

NAME = "memory"
DESCRIPTION = "peak RSS growth of one nearest-code search above input + output, at two n"

FULL = {"ns": (65536, 262144), "d": 256, "k": 1024}
QUICK = {"ns": (4096, 16384), "d": 32, "k": 64}
IMPLS = ("vqcore", "faiss")
MIB = 2.0 ** 20
#: Growth allowed between the two n: page-granularity and allocator noise, far below n x k floats.
GROWTH_LIMIT_MIB = 16.0


def run(config: Config) -> list[Case]:
    """Measure each implementation at each n and compare the extra memory across n."""
    params = QUICK if config.quick else FULL
    ns, d, k = params["ns"], params["d"], params["k"]
    case = Case(NAME, f"nearest d={d} k={k} n={'/'.join(map(str, ns))}", {**params, "dtype": "float32"})
    for impl in IMPLS:
        rows = [_row(impl, n, d, k, config.threads) for n in ns]
        small, large = rows[0], rows[-1]
        if small.status == OK and large.status == OK:
            large.extra["extra_growth_MiB"] = large.extra["extra_MiB"] - small.extra["extra_MiB"]
        case.rows.extend(rows)
    largest = f"vqcore n={ns[-1]}"
    case.targets = [
        evaluate(Target(largest, None, GROWTH_LIMIT_MIB, key="extra_growth_MiB", unit=" MiB"), case.rows),
        evaluate(Target(largest, None, None, key="extra_MiB", unit=" MiB",
                        note=f"for scale: an n x k float32 matrix is {ns[-1] * k * 4 / MIB:.0f} MiB"), case.rows),
        evaluate(Target(f"faiss n={ns[-1]}", None, None, key="extra_growth_MiB", unit=" MiB"), case.rows),
    ]
    return [case]


def _row(impl: str, n: int, d: int, k: int, threads: int) -> Row:
    answer = run_probe("_probe_memory", impl, n, d, k, threads)
    row = Row(impl=f"{impl} n={n}")
    if answer.get("status") == "not available":
        row.status, row.note = MISSING, answer.get("reason", "")
    elif answer.get("status") != "ok":
        row.status, row.note = ERROR, answer.get("reason", "no answer")
    else:
        row.note = answer["method"]
        row.extra = {
            "extra_MiB": answer["extra_bytes"] / MIB,
            "output_MiB": answer["output_bytes"] / MIB,
            "input_MiB": answer["input_bytes"] / MIB,
            "extra_bytes": answer["extra_bytes"],
        }
    return row
