"""Distributed training over MPI equals the serial computation on the concatenated shards.

Each job (``mpiexec -n N python -m mpi4py``) runs a batch of checks; see the
scripts in tests/mpi_scripts/ for what is compared.
"""
import pytest

from .mpi_scripts._launch import describe, mpi_available, run_mpi

pytestmark = pytest.mark.skipif(not mpi_available(), reason='needs mpiexec and mpi4py: pip install "vqcore[mpi]"')


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_kmeans_on_shards_equals_serial_kmeans(ranks):
    result = run_mpi("kmeans.py", ranks)
    assert result.returncode == 0 and f"OK {ranks}" in result.stdout, describe(result)


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_partial_fit_on_shards_equals_partial_fit_on_the_concatenation(ranks):
    result = run_mpi("quantizer.py", ranks)
    assert result.returncode == 0 and f"OK {ranks}" in result.stdout, describe(result)


@pytest.mark.parametrize("ranks", [3])
def test_masked_partial_fit_on_shards_with_an_empty_rank(ranks):
    # rank 1 holds no rows, so its mask is empty; it must still join the collectives
    result = run_mpi("quantizer.py", ranks, "--masked")
    assert result.returncode == 0 and f"OK {ranks}" in result.stdout, describe(result)


@pytest.mark.parametrize("ranks", [3])
def test_mismatched_options_are_reported_on_every_rank(ranks):
    result = run_mpi("mismatch.py", ranks, timeout=60)
    assert result.returncode != 0, describe(result)
    expected = "ranks disagree on codebook_size: rank 0 has codebook_size=16, rank 2 has codebook_size=17"
    for rank in range(ranks):
        assert f"rank {rank} caught: {expected}" in result.stdout, describe(result)
    assert "trained with mismatched options" not in result.stdout
