"""TorchDistComm collectives over gloo, and vqcore training through them, against serial results.

Started by tests/test_distributed_torch.py once per process with RANK and
WORLD_SIZE set; argv[1] is the file:// rendezvous.  Any failed check raises
(exit code 1).  Every rank prints ``OK <rank> <size>`` at the end.
"""
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

import vqcore
from vqcore.comm import check_same
from vqcore.sampling import sample_vectors_distributed
from shards import expect_error, my_shard, shard_rows
from vqtorch.distributed import TorchDistComm, default_comm

rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
assert default_comm() is None  # nothing initialised yet
try:
    TorchDistComm()
except RuntimeError as err:
    assert "init_process_group" in str(err)
else:
    raise AssertionError("TorchDistComm() before init_process_group did not raise")

dist.init_process_group("gloo", init_method=sys.argv[1], rank=rank, world_size=size)
comm = TorchDistComm()
assert (comm.rank, comm.size) == (rank, size)
assert isinstance(default_comm(), TorchDistComm) == (size > 1)


# allreduce: numpy in place (exact for integers), and tensors
for dtype in (np.float32, np.float64, np.int32, np.int64):
    everyone = [np.random.default_rng([r, 1]).integers(-50, 50, size=(3, 4)).astype(dtype) for r in range(size)]
    mine = everyone[rank].copy()
    assert comm.allreduce_sum_(mine) is mine
    assert mine.dtype == dtype and np.array_equal(mine, np.sum(everyone, axis=0, dtype=dtype)), dtype
tensor = torch.full((2, 2), float(rank + 1))
assert comm.allreduce_sum_(tensor) is tensor
assert torch.equal(tensor, torch.full((2, 2), float(sum(range(1, size + 1)))))
expect_error(ValueError, "C-contiguous", comm.allreduce_sum_, np.zeros((4, 4))[:, ::2])
expect_error(TypeError, "numpy array", comm.allreduce_sum_, [1.0])

# bcast from every root
for root in range(size):
    buffer = np.full(5, rank, dtype=np.float32)
    assert comm.bcast_(buffer, root=root) is buffer
    assert np.array_equal(buffer, np.full(5, root)), (root, buffer)
expect_error(ValueError, f"root={size}", comm.bcast_, np.zeros(2), root=size)

# bcast in a subgroup: root is a rank within the group
members = list(range(1, size))
group = dist.new_group(members)
if rank in members:
    sub = TorchDistComm(group)
    assert (sub.rank, sub.size) == (rank - 1, size - 1)
    buffer = np.full(3, rank, dtype=np.int64)
    sub.bcast_(buffer, root=0)
    assert np.array_equal(buffer, np.full(3, members[0]))

# allgatherv: uneven and empty shards, numpy and tensors
for total in (0, 1, 10, 37):
    rows = shard_rows(total, size)
    for trailing, dtype in (((), np.int64), ((5,), np.float32), ((2, 3), np.float64)):
        global_array = np.random.default_rng(total).standard_normal((total,) + trailing).astype(dtype)
        gathered = comm.allgatherv(my_shard(global_array, rows, rank))
        assert isinstance(gathered, np.ndarray)
        assert gathered.dtype == dtype and np.array_equal(gathered, global_array), (total, trailing)
    gathered = comm.allgatherv(torch.from_numpy(my_shard(global_array, rows, rank)))
    assert torch.equal(gathered, torch.from_numpy(global_array))
expect_error(ValueError, "rank 0 sent rows of shape (3,) dtype torch.float32, rank 1 rows of shape (4,)",
             comm.allgatherv, np.zeros((2, 4 if rank == 1 else 3), np.float32))

assert comm.allgather_object(rank * 10) == [r * 10 for r in range(size)]
expect_error(ValueError, f"rank 0 has dim=8, rank {size - 1} has dim=9",
             check_same, comm, dim=9 if rank == size - 1 else 8)

# distributed sampling through torch.distributed: same picks on all ranks, rows of the union
total = 30
rows = shard_rows(total, size)
union = np.column_stack([np.arange(total), np.random.default_rng(4).standard_normal(total)])
picks = sample_vectors_distributed(my_shard(union, rows, rank), 12, np.random.default_rng(rank), comm)
assert all(np.array_equal(p, picks) for p in comm.allgather_object(picks))
assert np.array_equal(picks, union[picks[:, 0].astype(int)])

# vqcore's numpy quantizer trained through torch.distributed equals one process on the whole batch
serial = vqcore.VectorQuantizer(6, 8, seed=0)
shared = vqcore.VectorQuantizer(6, 8, seed=rank, comm=comm)
shared.load_state_dict(serial.state_dict())
rows = shard_rows(40, size)
for step in range(3):
    x = np.random.default_rng(step).standard_normal((40, 6)).astype(np.float32)
    serial.partial_fit(x)
    shared.partial_fit(my_shard(x, rows, rank))
    for key, value in shared.state_dict().items():
        np.testing.assert_allclose(value, serial.state_dict()[key], rtol=1e-5, atol=1e-6, err_msg=key)

dist.destroy_process_group()
print("OK", rank, size)
