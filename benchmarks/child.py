"""Running a probe module in a fresh Python process and reading its JSON answer."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: The checkout root, so that ``-m benchmarks.<probe>`` resolves in the child.
ROOT = Path(__file__).resolve().parent.parent


def run_probe(module: str, *args, timeout: float = 600.0) -> dict:
    """Run ``python -m benchmarks.<module> ARGS`` and return the JSON of its last stdout line.

    The child inherits this process's environment unchanged. Failures come
    back as ``{"status": "error", "reason": ...}`` rather than exceptions, so
    the caller can report them in the table.
    """
    command = [sys.executable, "-m", f"benchmarks.{module}", *map(str, args)]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"timed out after {timeout:g} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"status": "error", "reason": f"exit {done.returncode}: {' | '.join(tail)}"}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"status": "error", "reason": f"unreadable answer {lines[-1][:200]!r}"}
