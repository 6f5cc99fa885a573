"""MPIComm collectives, check_same, threads and distributed sampling on N ranks.

Every rank builds the *global* data from a shared seed, keeps its own shard,
and checks the collective result against the serial computation on the
global data.  Any failed check raises; ``python -m mpi4py`` then aborts the
job with a non-zero exit.  Rank 0 prints ``OK <size>`` at the end.
"""
import os

import numba
import numpy as np
from mpi4py import MPI

from shards import expect_error, my_shard, shard_rows
from vqcore.comm import MPIComm, check_same
from vqcore.sampling import sample_vectors_distributed

# With VQCORE_TEST_TIMEOUT set, every collective below also runs behind the timeout's barrier.
timeout = os.environ.get("VQCORE_TEST_TIMEOUT")
comm = MPIComm(timeout=None if timeout is None else float(timeout))
rank, size = comm.rank, comm.size
world = MPI.COMM_WORLD


# --- the communicator itself
assert (rank, size) == (world.Get_rank(), world.Get_size())
assert MPI.Comm.Compare(comm.mpi_comm, world) == MPI.CONGRUENT  # a Dup, not COMM_WORLD itself
assert repr(comm) == f"MPIComm(rank={rank}, size={size})"
expect_error(TypeError, "intracommunicator", MPIComm, "not a communicator")
sub = MPIComm(world.Split(rank % 2, rank))
assert sub.size == len(range(rank % 2, size, 2))

# --- threads: default is cores // ranks on this node (MPICH exports MPI_LOCALNRANKS)
assert os.environ["MPI_LOCALNRANKS"] == str(size)
cores = len(os.sched_getaffinity(0))
pinned = cores < os.cpu_count()
expected = cores if pinned else max(1, cores // size)
assert numba.get_num_threads() == min(expected, numba.config.NUMBA_NUM_THREADS), numba.get_num_threads()

# --- allreduce_sum_: every dtype, several shapes, exact for integers
for dtype in (np.float32, np.float64, np.int32, np.int64):
    for shape in ((), (7,), (3, 5, 2)):
        everyone = [np.random.default_rng([r, 1]).integers(-50, 50, size=shape).astype(dtype)
                    for r in range(size)]
        mine = everyone[rank].copy()
        returned = comm.allreduce_sum_(mine)
        assert returned is mine
        expected_sum = np.sum(everyone, axis=0, dtype=dtype)
        assert mine.dtype == dtype and np.array_equal(mine, expected_sum), (dtype, shape)
# non-integer floats: summation order may differ, so compare with a tolerance
values = np.random.default_rng([rank, 2]).standard_normal((4, 6)).astype(np.float32)
reference = sum(np.random.default_rng([r, 2]).standard_normal((4, 6)).astype(np.float64)
                for r in range(size))
np.testing.assert_allclose(comm.allreduce_sum_(values), reference, rtol=1e-5, atol=1e-5)
expect_error(ValueError, "C-contiguous", comm.allreduce_sum_, np.zeros((4, 4))[:, ::2])
expect_error(TypeError, "float16", comm.allreduce_sum_, np.zeros(3, np.float16))
expect_error(TypeError, "numpy array", comm.allreduce_sum_, [1.0, 2.0])

# --- bcast_ from every root
for root in range(size):
    buffer = np.full((3, 2), rank, dtype=np.float64)
    assert comm.bcast_(buffer, root=root) is buffer
    assert np.array_equal(buffer, np.full((3, 2), root)), (root, buffer)
expect_error(ValueError, f"root={size}", comm.bcast_, np.zeros(2), root=size)

# --- allgatherv: uneven and empty shards, several trailing shapes and dtypes
for total in (0, 1, 10, 37):
    rows = shard_rows(total, size)
    for trailing, dtype in (((), np.int64), ((5,), np.float32), ((2, 3), np.float64)):
        global_array = np.random.default_rng(total).standard_normal((total,) + trailing).astype(dtype)
        gathered = comm.allgatherv(my_shard(global_array, rows, rank))
        assert gathered.dtype == dtype and np.array_equal(gathered, global_array), (total, trailing)
if size > 1:
    expect_error(ValueError, "rank 0 sent rows of shape (3,) dtype float32, rank 1 rows of shape (4,)",
                 comm.allgatherv, np.zeros((2, 4 if rank == 1 else 3), np.float32))
    expect_error(ValueError, "dtype", comm.allgatherv,
                 np.zeros((2, 3), np.float64 if rank == 1 else np.float32))

assert comm.allgather_object({"rank": rank}) == [{"rank": r} for r in range(size)]

# --- check_same: silent when equal, names the ranks and values when not
check_same(comm, dim=8, codebook_size=16)
if size > 1:
    expect_error(ValueError, f"rank 0 has dim=8, rank {size - 1} has dim=9",
                 check_same, comm, dim=9 if rank == size - 1 else 8, codebook_size=16)
    expect_error(ValueError, "missing on rank 0",
                 check_same, comm, **({"dim": 8} if rank == 0 else {"dim": 8, "heads": 2}))

# --- sample_vectors_distributed: identical on all ranks, rows of the union
total, d = 40, 3
rows = shard_rows(total, size)
# column 0 holds each row's global index, so every pick can be traced back
union = np.column_stack([np.arange(total), np.random.default_rng(5).standard_normal((total, d - 1))])
mine = my_shard(union, rows, rank)
for num in (0, 1, 25, 100):
    rng = np.random.default_rng([rank, num])  # deliberately different streams per rank
    picks = sample_vectors_distributed(mine, num, rng, comm)
    assert picks.shape == (num, d)
    all_picks = comm.allgather_object(picks)
    assert all(np.array_equal(p, picks) for p in all_picks), "ranks got different samples"
    index = picks[:, 0].astype(int)
    assert np.array_equal(picks, union[index]), "a pick is not a row of the union"
    owner = np.searchsorted(np.cumsum(rows), index, side="right")
    assert np.all(np.diff(owner) >= 0), "picks are not in rank order"
    assert not np.any(rows[owner] == 0), "a rank without rows contributed"
    for r in range(size):
        from_r = index[owner == r]
        if len(from_r) <= rows[r]:  # enough rows: drawn without replacement
            assert len(np.unique(from_r)) == len(from_r)

# the split over ranks follows the multinomial: mean num * rows / total, within 5 standard errors
draws, num = 300, 20
p = rows / rows.sum()
share = np.zeros((draws, size))
for t in range(draws):
    picks = sample_vectors_distributed(mine, num, np.random.default_rng([rank, t, 7]), comm)
    owner = np.searchsorted(np.cumsum(rows), picks[:, 0].astype(int), side="right")
    share[t] = np.bincount(owner, minlength=size)
standard_error = np.sqrt(num * p * (1 - p) / draws)
assert np.all(np.abs(share.mean(0) - num * p) <= 5 * standard_error + 1e-12), (share.mean(0), num * p)

# batched (c, n, d): each codebook set drawn separately, same on all ranks
stacked = np.stack([union, union + 1000.0])
picks = sample_vectors_distributed(my_shard(stacked.transpose(1, 0, 2), rows, rank).transpose(1, 0, 2).copy(),
                                   7, np.random.default_rng(rank), comm)
assert picks.shape == (2, 7, d)
assert all(np.array_equal(p, picks) for p in comm.allgather_object(picks))
for j in range(2):
    assert np.array_equal(picks[j], stacked[j][(picks[j, :, 0] - 1000.0 * j).astype(int)])

if size > 1:
    expect_error(ValueError, "same num", sample_vectors_distributed,
                 mine, 3 + (rank == 1), np.random.default_rng(0), comm)
expect_error(ValueError, "every rank holds zero vectors", sample_vectors_distributed,
             np.zeros((0, 2)), 3, np.random.default_rng(0), comm)

sub.free()
comm.free()
if rank == 0:
    print("OK", size)
