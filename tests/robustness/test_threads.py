"""Same seed, same bits: a training run with 1 and 2 numba threads (fresh processes) and in this process."""
import os
import subprocess
import sys

import pytest

SOAK = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "soak.py")


def digest_with_threads(threads, steps):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, SOAK, "--child", "--steps", str(steps)], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("steps", [40, pytest.param(2000, marks=pytest.mark.slow)])
def test_same_state_bits_with_one_and_two_threads(steps):
    sys.path.insert(0, os.path.dirname(SOAK))
    try:
        import soak
    finally:
        sys.path.pop(0)
    here = soak.main_run(steps)["digest"]
    assert digest_with_threads(1, steps) == here
    assert digest_with_threads(2, steps) == here
