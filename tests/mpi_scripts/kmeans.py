"""Distributed vqcore.kmeans equals serial k-means on the concatenated shards.

Every rank builds the global data from a shared seed and keeps an uneven
shard (rank 1 holds none when there are 2+ ranks); the serial reference runs
on the full data on every rank.  Rank 0 prints ``OK <size>`` at the end.
"""
import numpy as np

import vqcore
from shards import my_shard, shard_rows
from vqcore.comm import MPIComm

comm = MPIComm()
rank, size = comm.rank, comm.size


def shard(global_array, total):
    """Rows of this rank along axis -2: uneven, rank 1 empty."""
    return my_shard(global_array, shard_rows(total, size), rank, axis=-2)


def same_on_all_ranks(array):
    return all(np.array_equal(other, array) for other in comm.allgather_object(array))


def clustered(rng, shape, k, dtype):
    """Well separated blobs, so float summation order cannot flip an assignment."""
    *lead, n, d = shape
    centers = rng.standard_normal((*lead, k, d)) * 6
    labels = rng.integers(0, k, size=(*lead, n))
    points = np.take_along_axis(centers, labels[..., None], axis=-2) + rng.standard_normal(shape) * 0.5
    return points.astype(dtype)


for dtype, tolerance in ((np.float64, 1e-10), (np.float32, 1e-4)):
    for metric in ("euclidean", "cosine"):
        for shape in ((203, 5), (2, 150, 4)):
            rng = np.random.default_rng(11)
            k = 6
            x = clustered(rng, shape, k, dtype)
            init = x[..., rng.choice(shape[-2], k, replace=False), :].copy()
            if metric == "cosine":
                init /= np.linalg.norm(init, axis=-1, keepdims=True)
            serial_means, serial_counts = vqcore.kmeans(x, k, iters=6, metric=metric, init=init)
            means, counts = vqcore.kmeans(shard(x, shape[-2]), k, iters=6, metric=metric, init=init, comm=comm)
            assert means.dtype == dtype and means.shape == serial_means.shape
            np.testing.assert_allclose(means, serial_means, rtol=tolerance, atol=tolerance,
                                       err_msg=f"{dtype.__name__} {metric} {shape}")
            assert np.array_equal(counts, serial_counts), (counts, serial_counts)
            assert same_on_all_ranks(means) and same_on_all_ranks(counts)

# random initialisation drawn across ranks: still the same means everywhere,
# each initial mean a row of the union (iters=0 keeps the initial means)
x = clustered(np.random.default_rng(3), (120, 3), 5, np.float32)
mine = shard(x, 120)
means, counts = vqcore.kmeans(mine, 5, iters=0, seed=np.random.default_rng([rank, 9]), comm=comm)
assert same_on_all_ranks(means)
assert all(np.any(np.all(x == m, axis=1)) for m in means), "an initial mean is not a data row"
assert counts.sum() == 120
means, _ = vqcore.kmeans(mine, 5, iters=4, seed=rank, comm=comm)
assert same_on_all_ranks(means)

comm.free()
if rank == 0:
    print("OK", size)
