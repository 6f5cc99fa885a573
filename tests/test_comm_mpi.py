"""MPI collectives on 1-4 ranks, run as ``mpiexec -n N python -m mpi4py`` jobs.

Each job runs a batch of checks (tests/mpi_scripts/collectives.py) against the
serial computation on the global data; one job per N keeps start-up cost low.
"""
import time

import pytest
from .mpi_scripts._launch import describe, mpi_available, run_mpi

pytestmark = pytest.mark.skipif(not mpi_available(), reason='needs mpiexec and mpi4py: pip install "vqcore[mpi]"')


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_collectives_and_sampling_match_serial(ranks):
    result = run_mpi("collectives.py", ranks)
    assert result.returncode == 0 and f"OK {ranks}" in result.stdout, describe(result)


@pytest.mark.parametrize("ranks", [2, 3])
def test_collective_timeout_ends_a_job_whose_rank_stopped_early(ranks):
    start = time.perf_counter()
    result = run_mpi("early_finish.py", ranks, "2", timeout=60)
    elapsed = time.perf_counter() - start
    assert result.returncode != 0, describe(result)
    assert "CollectiveTimeout" in result.stderr and "waited 2 s in allreduce_sum_" in result.stderr, describe(result)
    assert "same number of partial_fit steps" in result.stderr
    assert f"finished: rank {ranks - 1}" in result.stdout  # the rank that stopped early
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end"


def test_collective_timeout_lets_matching_ranks_finish():
    result = run_mpi("collectives.py", 2, env={"VQCORE_TEST_TIMEOUT": "30"})
    assert result.returncode == 0, describe(result)


@pytest.mark.parametrize("ranks", [2, 3])
def test_failing_rank_ends_the_job_quickly(ranks):
    start = time.perf_counter()
    result = run_mpi("fail.py", ranks, timeout=60)
    elapsed = time.perf_counter() - start
    assert result.returncode != 0, describe(result)
    assert f"deliberate failure on rank {ranks - 1}" in result.stderr, describe(result)
    assert "unreachable" not in result.stdout
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end"
