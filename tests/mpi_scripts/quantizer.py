"""VectorQuantizer.partial_fit on shards equals partial_fit on the concatenation.

Per configuration, a serial quantizer and a distributed one start from the same
state and train on the same global batches, the distributed one on this rank's
uneven shard (rank 1 holds none when there are 2+ ranks).  After every step
their buffers must agree and the distributed state must be identical on every
rank.  Random options (k-means init, dead-code expiry) cannot match a serial run
draw for draw; for those only the agreement across ranks is checked.  With
``--masked`` only the masked configuration runs (a rank without rows then has
an empty mask).  Rank 0 prints ``OK <size>`` at the end.
"""
import sys

import numpy as np

import vqcore
from shards import shard_rows
from vqcore.comm import MPIComm

comm = MPIComm()
rank, size = comm.rank, comm.size
DIM, CODES, TOTAL, STEPS = 8, 16, 61, 3


def rows_per_rank():
    return shard_rows(TOTAL, size)


ROWS = rows_per_rank()
BEGIN, END = int(ROWS[:rank].sum()), int(ROWS[:rank + 1].sum())


def batch(step, salt):
    return np.random.default_rng([step, salt]).standard_normal((TOTAL, DIM)).astype(np.float32)


def same_on_all_ranks(state):
    return all(
        other.keys() == state.keys() and all(np.array_equal(other[key], state[key]) for key in state)
        for other in comm.allgather_object(state)
    )


def assert_states_close(ours, reference, label):
    assert ours.keys() == reference.keys(), (label, sorted(ours), sorted(reference))
    for key in ours:
        np.testing.assert_allclose(ours[key], reference[key], rtol=1e-5, atol=1e-6, err_msg=f"{label}: {key}")


DETERMINISTIC = [
    dict(),
    dict(use_cosine_sim=True),
    dict(affine_param=True, sync_affine_param=True),
    dict(heads=2, separate_codebook_per_head=True, decay=0.9),
]
if "--masked" in sys.argv:
    DETERMINISTIC = [dict(masked=True), dict(masked=True, heads=2)]
for salt, config in enumerate(DETERMINISTIC):
    masked = config.pop("masked", False)
    serial = vqcore.VectorQuantizer(DIM, CODES, seed=0, **config)
    shared = vqcore.VectorQuantizer(DIM, CODES, seed=1, comm=comm, **config)
    shared.load_state_dict(serial.state_dict())
    for step in range(STEPS):
        x = batch(step, salt)
        mask = np.random.default_rng([step, salt, 1]).random(TOTAL) < 0.7 if masked else None
        mine = mask[BEGIN:END] if masked else None
        q_serial, i_serial = serial.partial_fit(x, mask=mask)
        q_shard, i_shard = shared.partial_fit(x[BEGIN:END], mask=mine)
        label = f"{config} masked={masked} step {step}"
        # outputs use the codebook before this step's update: the serial rows
        assert np.array_equal(i_shard, i_serial[BEGIN:END]), label
        np.testing.assert_allclose(q_shard, q_serial[BEGIN:END], rtol=1e-5, atol=1e-6, err_msg=label)
        state = shared.state_dict()
        assert_states_close(state, serial.state_dict(), label)
        assert same_on_all_ranks(state), label

RANDOM = [] if "--masked" in sys.argv else [
    dict(kmeans_init=True, kmeans_iters=3),
    dict(threshold_ema_dead_code=2.0),
    dict(kmeans_init=True, threshold_ema_dead_code=1.5, use_cosine_sim=True),
]
for salt, config in enumerate(RANDOM, start=len(DETERMINISTIC)):
    # every rank a different seed: agreement must come from the protocol, not from equal streams
    shared = vqcore.VectorQuantizer(DIM, CODES, seed=rank, comm=comm, **config)
    if not config.get("kmeans_init"):
        shared.load_state_dict(vqcore.VectorQuantizer(DIM, CODES, seed=0, **config).state_dict())
    for step in range(STEPS):
        shared.partial_fit(batch(step, salt)[BEGIN:END])
        assert same_on_all_ranks(shared.state_dict()), f"{config} step {step}"
    if config.get("kmeans_init"):
        # k-means on the first global batch: every initial code is the mean of data rows,
        # and the counts cover every row of that batch
        assert shared.state_dict()["_codebook.initted"].all()

comm.free()
if rank == 0:
    print("OK", size)
