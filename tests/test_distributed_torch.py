"""vqtorch over torch.distributed (gloo): 2 and 3 processes started as subprocesses."""
import pytest
from .mpi_scripts._launch import run_torch_dist

pytest.importorskip("torch")


@pytest.mark.parametrize("processes", [2, 3])
def test_torch_dist_comm_collectives_match_serial(processes, tmp_path):
    result = run_torch_dist("torch_dist.py", processes, tmp_path)
    assert result.returncode == 0, result.stdout
    for rank in range(processes):
        assert f"OK {rank} {processes}" in result.stdout, result.stdout


@pytest.mark.parametrize("processes", [2, 3])
def test_sync_codebook_equals_one_process_and_the_seed(processes, tmp_path):
    pytest.importorskip("vector_quantize_pytorch")
    result = run_torch_dist("torch_layer.py", processes, tmp_path)
    assert result.returncode == 0, result.stdout
    for rank in range(processes):
        assert f"OK {rank} {processes}" in result.stdout, result.stdout
