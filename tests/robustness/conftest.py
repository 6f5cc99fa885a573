"""Robustness suite: the ``slow`` marker, and a count of the cases hypothesis tried.

Slow tests (long hypothesis runs) are skipped unless ``VQCORE_SLOW=1``.
At the end of the session the number of generated cases per test is printed
and written to ``$VQCORE_ROBUSTNESS_COUNTS`` when that is set.
"""
import json
import os

import pytest

from . import helpers


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long hypothesis runs; run with VQCORE_SLOW=1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("VQCORE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow robustness test: set VQCORE_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    counts = dict(sorted(helpers.CASES.items()))
    if not counts:
        return
    terminalreporter.write_line(f"robustness: {sum(counts.values())} generated cases over {len(counts)} properties")
    for name, n in counts.items():
        terminalreporter.write_line(f"  {n:6d}  {name}")
    target = os.environ.get("VQCORE_ROBUSTNESS_COUNTS")
    if target:
        with open(target, "w") as f:
            json.dump(counts, f, indent=1)
