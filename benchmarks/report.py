"""The printed table and the JSON record of a run."""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from .core import OK, Case, Row, Target

#: Schema version of the JSON record; bump when fields change meaning.
SCHEMA = 1


def _number(value) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def _row_line(row: Row, width: int) -> str:
    if row.status == OK:
        timing = f"{row.seconds:9.4f} s" if row.seconds is not None else " " * 11
        details = [f"{key}={_number(value)}" for key, value in row.extra.items()]
        if row.runs:
            details.append(f"best of {len(row.runs)}")
        if row.note:
            details.append(row.note)
        return f"  {row.impl:<{width}} {timing}   {'; '.join(details)}"
    return f"  {row.impl:<{width}} {row.status.upper():>11}   {row.note}"


def _target_line(target: Target, width: int, quick: bool) -> str:
    unit = target.unit
    value = "-" if target.value is None else f"{target.value:.3f}{unit}"
    limit = "(info)" if target.limit is None else f"<= {target.limit:g}{unit}"
    verdict = {True: "PASS", False: "FAIL", None: "-"}[target.passed]
    if target.value is None:
        verdict = "n/a"
    elif quick and target.limit is not None:
        verdict = "(not judged)"
    line = f"  -> {target.label():<{width}} {value:>10}  {limit:<12} {verdict}"
    return f"{line}  {target.note}" if target.note else line


def table(cases: list[Case], quick: bool) -> str:
    """The run as text: one block per case, implementations then targets."""
    lines = []
    if quick:
        lines.append("QUICK MODE: tiny sizes; ratios are not comparable with the targets, so none is judged.")
    lines.append("vqp 1.14.5 = vector-quantize-pytorch 1.14.5, the library vqtorch replaces; a peer that cannot "
                 "be imported is skipped and its rows say so.")
    for case in cases:
        lines.append("")
        lines.append(f"[{case.workload}] {case.case}")
        width = max([24, *(len(row.impl) for row in case.rows)])
        lines.extend(_row_line(row, width) for row in case.rows)
        width = max([24, *(len(target.label()) for target in case.targets)])
        lines.extend(_target_line(target, width, quick) for target in case.targets)
        lines.extend(f"  note: {note}" for note in case.notes)
    verdicts = [t.passed for case in cases for t in case.targets if t.limit is not None]
    lines.append("")
    if quick:
        lines.append(f"targets: {len(verdicts)} not judged in quick mode")
    else:
        lines.append(f"targets: {verdicts.count(True)} PASS, {verdicts.count(False)} FAIL, "
                     f"{verdicts.count(None)} not measured")
    return "\n".join(lines)


def record(cases: list[Case], meta: dict) -> dict:
    """The JSON-serialisable record of the run."""
    return {"schema": SCHEMA, **meta, "cases": [asdict(case) for case in cases]}


def _write_atomic(path: Path, text: str) -> None:
    # A crash while writing must not leave a truncated latest.json behind.
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def write(data: dict, folder: Path, stamp: str) -> tuple[Path, Path]:
    """Write ``<stamp>.json`` and ``latest.json`` into ``folder``; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, allow_nan=True, default=str)
    stamped, latest = folder / f"{stamp}.json", folder / "latest.json"
    _write_atomic(stamped, text)
    _write_atomic(latest, text)
    return stamped, latest
