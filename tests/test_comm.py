"""One-process communicators, distributed sampling's serial path, thread settings."""
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from vqcore import _threads
from vqcore.sampling import sample_vectors_distributed
from vqcore.comm import (
    Communicator, MPIComm, SerialComm, check_same, resolve_comm,
)

REPO = Path(__file__).resolve().parents[1]


# --- SerialComm and resolve_comm

def test_serial_comm_collectives_are_identities():
    comm = SerialComm()
    assert (comm.rank, comm.size) == (0, 1)
    x = np.arange(6.0).reshape(2, 3)
    assert comm.allreduce_sum_(x) is x and np.array_equal(x, np.arange(6.0).reshape(2, 3))
    assert comm.bcast_(x, root=0) is x
    assert np.array_equal(comm.allgatherv(x), x)
    assert comm.allgather_object({"a": 1}) == [{"a": 1}]


def test_resolve_comm():
    assert isinstance(resolve_comm(None), SerialComm)
    comm = SerialComm()
    assert resolve_comm(comm) is comm
    with pytest.raises(TypeError, match="vqcore.MPIComm"):
        resolve_comm("mpi")


def test_base_communicator_methods_are_abstract():
    with pytest.raises(NotImplementedError):
        Communicator().allreduce_sum_(np.zeros(1))


def test_check_same_is_free_on_one_process():
    check_same(None, dim=3, codebook_size=7)  # nothing to compare against


def test_mpicomm_without_mpi4py_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)
    with pytest.raises(ImportError, match=r'pip install "vqcore\[mpi\]"'):
        MPIComm()


def test_importing_vqcore_starts_neither_mpi_nor_torch():
    code = (
        "import sys, vqcore, vqcore.comm, vqcore._threads\n"
        "vqcore._threads.configure_threads(1)\n"
        "bad = [m for m in ('mpi4py', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# --- sample_vectors_distributed on one process

@pytest.mark.parametrize("n, num", [(10, 4), (10, 10), (3, 8), (5, 0)])
def test_serial_sampling_draws_rows_of_the_data(n, num):
    data = np.column_stack([np.arange(n), np.random.default_rng(2).standard_normal((n, 2))])
    picks = sample_vectors_distributed(data, num, np.random.default_rng(3))
    assert picks.shape == (num, 3)
    index = picks[:, 0].astype(int)
    assert np.array_equal(picks, data[index])
    if num <= n:  # the seed's rule: distinct rows when there are enough
        assert len(np.unique(index)) == num


def test_serial_sampling_batched_draws_each_codebook_set():
    data = np.stack([np.arange(12.0).reshape(6, 2), 100 + np.arange(12.0).reshape(6, 2)])
    picks = sample_vectors_distributed(data, 4, np.random.default_rng(0))
    assert picks.shape == (2, 4, 2)
    for j in range(2):
        assert all(any(np.array_equal(p, row) for row in data[j]) for p in picks[j])


@pytest.mark.parametrize("bad, match", [(np.zeros(3), r"shape \(3,\)"), (np.zeros((1, 1, 1, 1)), "shape")])
def test_sampling_rejects_bad_shapes(bad, match):
    with pytest.raises(ValueError, match=match):
        sample_vectors_distributed(bad, 1, np.random.default_rng(0))


@pytest.mark.parametrize("num, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_sampling_rejects_bad_num(num, error):
    with pytest.raises(error, match="num"):
        sample_vectors_distributed(np.zeros((3, 2)), num, np.random.default_rng(0))


def test_sampling_from_nothing_raises():
    with pytest.raises(ValueError, match="zero vectors"):
        sample_vectors_distributed(np.zeros((0, 2)), 2, np.random.default_rng(0))


# --- thread configuration

@pytest.fixture
def restore_threads(monkeypatch):
    """Put numba, BLAS and torch thread counts back after a test changes them."""
    monkeypatch.setattr(_threads, "_configured", False)
    numba_threads = numba.get_num_threads()
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch else None
    with threadpool_limits(limits=None):
        yield
    numba.set_num_threads(numba_threads)
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)


def _blas_threads():
    return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}


def test_configure_threads_sets_every_pool(restore_threads):
    torch = pytest.importorskip("torch")
    assert _threads.configure_threads(1) == 1
    assert numba.get_num_threads() == 1
    assert torch.get_num_threads() == 1
    assert _blas_threads() == {1}


def test_configure_threads_env_override_and_once(restore_threads, monkeypatch):
    monkeypatch.setenv("VQCORE_NUM_THREADS", "1")
    monkeypatch.setenv("MPI_LOCALNRANKS", "1")  # the override wins over the launcher's count
    assert _threads.configure_threads_once() == 1
    assert numba.get_num_threads() == 1
    monkeypatch.setenv("VQCORE_NUM_THREADS", "2")
    assert _threads.configure_threads_once() is None  # already configured: left alone
    assert numba.get_num_threads() == 1


def test_no_launcher_no_override_changes_nothing(restore_threads, monkeypatch):
    for name in ("VQCORE_NUM_THREADS", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    numba.set_num_threads(1)
    assert _threads.configure_threads() == 1


@pytest.mark.parametrize(
    "env, cpu_count, affinity, expected",
    [
        ({"MPI_LOCALNRANKS": "4"}, 16, 16, 4),             # MPICH, unpinned: share the node
        ({"OMPI_COMM_WORLD_LOCAL_SIZE": "3"}, 16, 16, 5),  # Open MPI
        ({"MPI_LOCALNRANKS": "8"}, 4, 4, 1),               # more ranks than cores: at least one
        ({"MPI_LOCALNRANKS": "4"}, 16, 4, 4),              # pinned by the launcher: keep its share
        ({}, 16, 16, None),                                 # no launcher: leave the defaults
    ],
)
def test_default_threads_divide_cores_among_local_ranks(monkeypatch, env, cpu_count, affinity, expected):
    for name in ("VQCORE_NUM_THREADS", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(_threads.os, "cpu_count", lambda: cpu_count)
    monkeypatch.setattr(_threads.os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    assert _threads._default_threads() == expected


@pytest.mark.parametrize("n", [0, -2, 1.5, "4", True])
def test_configure_threads_rejects_bad_counts(n):
    with pytest.raises(ValueError, match="positive integer"):
        _threads.configure_threads(n)


def test_bad_env_count_names_the_variable(monkeypatch):
    monkeypatch.setenv("VQCORE_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="VQCORE_NUM_THREADS='many'"):
        _threads.configure_threads()


@pytest.mark.parametrize("timeout,error", [(0, ValueError), (-1.0, ValueError), (float("inf"), ValueError),
                                           (float("nan"), ValueError), ("10", TypeError), (True, TypeError)])
def test_mpicomm_timeout_must_be_positive_seconds(timeout, error):
    with pytest.raises(error, match="timeout"):
        MPIComm(timeout=timeout)
