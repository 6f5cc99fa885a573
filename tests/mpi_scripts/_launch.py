"""Run a script under ``mpiexec -n N python -m mpi4py`` from the tests.

``python -m mpi4py`` turns an uncaught exception on any rank into
``MPI_Abort``, so a failing check ends the whole job instead of leaving the
other ranks blocked in a collective; the timeout is the last line of defence.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parents[1]
TORCH_SCRIPTS = REPO / "tests" / "torch_dist_scripts"  # torch.distributed (gloo) jobs, not MPI
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def mpi_available() -> bool:
    """True when mpiexec sits next to this interpreter and mpi4py is installed."""
    return MPIEXEC.exists() and importlib.util.find_spec("mpi4py") is not None


def run_mpi(script: str, n: int, *args: str, timeout: float = 90, env: dict | None = None):
    """Run ``tests/mpi_scripts/<script>`` on ``n`` ranks; return the CompletedProcess."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    full_env.pop("VQCORE_NUM_THREADS", None)
    full_env.update(env or {})
    command = [str(MPIEXEC), "-n", str(n), sys.executable, "-m", "mpi4py", str(SCRIPTS / script), *args]
    # A session of its own, so a timeout can end mpiexec *and* its ranks.
    proc = subprocess.Popen(
        command, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"{script} on {n} ranks ran past {timeout} s\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ) from None
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def describe(result) -> str:
    """The output of a finished job, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def run_torch_dist(script: str, n: int, tmp_path, *args: str, timeout: float = 120):
    """Run ``tests/torch_dist_scripts/<script>`` as ``n`` torch.distributed processes.

    Each process gets ``RANK`` and ``WORLD_SIZE``; they meet through a file
    store at ``tmp_path/store`` (no network port to collide on).  torch has no
    ``python -m mpi4py`` equivalent, so when one process fails the others are
    killed here rather than left waiting in a collective.  Returns a
    CompletedProcess with the first non-zero exit code and every rank's output.
    """
    env = dict(os.environ)
    # the scripts share this folder's shard helpers
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(SCRIPTS), env.get("PYTHONPATH")]))
    env["WORLD_SIZE"] = str(n)
    env.pop("VQCORE_NUM_THREADS", None)
    tmp_path = Path(tmp_path)
    logs = [open(tmp_path / f"rank{rank}.log", "w+") for rank in range(n)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(TORCH_SCRIPTS / script), f"file://{tmp_path / 'store'}", *args],
            cwd=REPO, env={**env, "RANK": str(rank)}, stdout=log, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )
        for rank, log in enumerate(logs)
    ]
    deadline = time.monotonic() + timeout
    try:
        while any(proc.poll() is None for proc in procs):
            failed = any(proc.returncode not in (None, 0) for proc in procs)
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    stdout = "".join(f"--- rank {r}\n{out}" for r, out in enumerate(outputs))
    if time.monotonic() > deadline:
        raise AssertionError(f"{script} on {n} processes ran past {timeout} s\n{stdout}")
    code = next((proc.returncode for proc in procs if proc.returncode != 0), 0)
    return subprocess.CompletedProcess(script, code, stdout, "")
