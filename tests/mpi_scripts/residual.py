"""Residual and product quantizers trained on shards equal one process on the concatenation.

Every rank builds the global data from a shared seed and keeps an uneven
shard (rank 1 holds none with 2+ ranks).  k-means training (with k-means||
seeding, subsampling and seeding from a subset all active) is compared with
a serial fit on the whole data asking for k-means||; EMA steps with serial
steps on the whole batch.  The results must also be identical on every rank.
Rank 0 prints ``OK <size>`` at the end.
"""
import numpy as np

import vqcore
from shards import my_shard, shard_rows
from vqcore.comm import MPIComm

comm = MPIComm()
rank, size = comm.rank, comm.size
TOTAL, DIM = 600, 6
ROWS = shard_rows(TOTAL, size)
INIT = "k-means++" if size > 1 else "k-means||"  # k-means++ runs as k-means|| on several ranks


def same_on_all_ranks(state):
    return all(all(np.array_equal(other[key], state[key]) for key in state) for other in comm.allgather_object(state))


def close(ours, theirs, what):
    for key, value in theirs.items():
        np.testing.assert_allclose(ours[key], value, rtol=1e-4, atol=1e-5, err_msg=f"{what}: {key}")


rng = np.random.default_rng(1)
centers = rng.standard_normal((6, DIM)) * 8
x = (centers[rng.integers(0, 6, TOTAL)] + rng.standard_normal((TOTAL, DIM))).astype(np.float32)
mine = my_shard(x, ROWS, rank)
fit = dict(iters=4, progress=False, max_points_per_cluster=40)

# kmeans itself: k-means||, restarts, subsampling and seeding from a subset, batched sets
for data in (x, np.stack([x, x[::-1] * 0.5])):
    options = dict(iters=3, n_init=2, max_points_per_cluster=50, init_size=60, seed=4)
    serial_means, serial_counts = vqcore.kmeans(data, 6, init="k-means||", **options)
    means, counts = vqcore.kmeans(my_shard(data, ROWS, rank, axis=-2), 6, init=INIT, comm=comm, **options)
    np.testing.assert_allclose(means, serial_means, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(counts, serial_counts)
    assert same_on_all_ranks({"means": means})

# RQ-KMeans, plain, grouped and trained with a beam
for groups, beam in ((1, 1), (2, 1), (1, 3)):
    options = dict(groups=groups, beam_size=beam, seed=0)
    serial = vqcore.ResidualQuantizer(DIM, 8, 2, **options).fit(x, init="k-means||", **fit)
    ours = vqcore.ResidualQuantizer(DIM, 8, 2, comm=comm, **options).fit(mine, init=INIT, **fit)
    close(ours.state_dict(), serial.state_dict(), f"RQ groups={groups} beam={beam}")
    assert same_on_all_ranks(ours.state_dict())
    want = serial.score(x)
    got = ours.score(mine)
    np.testing.assert_allclose(got["mse_per_stage"], want["mse_per_stage"], rtol=1e-4)

# the RQ default: random rows drawn by global row index, the same rows as one process draws
serial = vqcore.ResidualQuantizer(DIM, 8, 2, seed=3).fit(x, **fit)
ours = vqcore.ResidualQuantizer(DIM, 8, 2, seed=3, comm=comm).fit(mine, **fit)
close(ours.state_dict(), serial.state_dict(), "RQ random rows")
assert same_on_all_ranks(ours.state_dict())

# PQ: one batched k-means over the subspaces
serial = vqcore.ProductQuantizer(DIM, 8, 3, seed=0).fit(x, init="k-means||", **fit)
ours = vqcore.ProductQuantizer(DIM, 8, 3, seed=0, comm=comm).fit(mine, init=INIT, **fit)
close(ours.state_dict(), serial.state_dict(), "PQ")
assert same_on_all_ranks(ours.state_dict())
np.testing.assert_allclose(ours.score(mine)["mse"], serial.score(x)["mse"], rtol=1e-4)

# EMA steps of every stage: the seed's ResidualVQ training, codebook side
serial = vqcore.ResidualQuantizer(DIM, 8, 3, seed=2, decay=0.7)
ours = vqcore.ResidualQuantizer(DIM, 8, 3, seed=2, decay=0.7, comm=comm)
for step in range(3):
    batch = x[::-1] * (1 + 0.1 * step)
    _, want = serial.partial_fit(batch)
    _, got = ours.partial_fit(my_shard(batch, ROWS, rank))
    np.testing.assert_array_equal(got, my_shard(want, ROWS, rank))
    close(ours.state_dict(), serial.state_dict(), f"EMA step {step}")
    assert same_on_all_ranks(ours.state_dict())

comm.free()
if rank == 0:
    print("OK", size)
