"""vqtorch.VectorQuantize with sync_codebook over gloo, against one process and the seed.

Started by tests/test_distributed_torch.py once per process (RANK, WORLD_SIZE
set; argv[1] the file:// rendezvous).  Per configuration, from one starting
state, three layers train on the same global batches:

* ours with the default ``sync_codebook`` (on, since the group has 2+ processes)
  on this rank's uneven shard;
* ours with ``sync_codebook=False`` on the whole batch (the serial reference);
* the seed's layer (vector-quantize-pytorch 1.14.5) with ``sync_codebook=True``
  on the same shard.

Their buffers must agree after every step, and be identical on every rank.
Every rank prints ``OK <rank> <size>`` at the end.
"""
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from vector_quantize_pytorch import VectorQuantize as SeedVectorQuantize

from vqtorch import VectorQuantize

rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
dist.init_process_group("gloo", init_method=sys.argv[1], rank=rank, world_size=size)

ROWS = [5, 11, 2][:size]  # uneven shards
CONFIGS = [
    dict(),
    dict(use_cosine_sim=True),
    dict(affine_param=True, sync_affine_param=True),
    dict(heads=2, separate_codebook_per_head=True, decay=0.9),
]
DIM, CODES, STEPS = 8, 16, 3


def as_numpy(state):
    return {key: value.detach().numpy().copy() for key, value in state.items()}


def assert_close(ours, reference, label):
    assert ours.keys() == reference.keys(), (label, sorted(ours), sorted(reference))
    for key in ours:
        np.testing.assert_allclose(ours[key], reference[key], rtol=1e-5, atol=1e-6, err_msg=f"{label}: {key}")


for config in CONFIGS:
    torch.manual_seed(0)
    seed_layer = SeedVectorQuantize(DIM, CODES, sync_codebook=True, **config)
    ours = VectorQuantize(DIM, CODES, **config)  # sync_codebook defaults to on here
    serial = VectorQuantize(DIM, CODES, sync_codebook=False, **config)
    start = seed_layer.state_dict()
    ours.load_state_dict(start)
    serial.load_state_dict(start)
    for layer in (seed_layer, ours, serial):
        layer.train()

    begin, end = sum(ROWS[:rank]), sum(ROWS[:rank + 1])
    for step in range(STEPS):
        batch = torch.from_numpy(
            np.random.default_rng([step, len(config)]).standard_normal((1, sum(ROWS), DIM)).astype(np.float32)
        )
        shard = batch[:, begin:end].contiguous()
        seed_layer(shard)
        quantized, indices, _ = ours(shard)
        serial_quantized, serial_indices, _ = serial(batch)

        label = f"{config} step {step}"
        # the quantized output uses the codebook before this step's update: the serial rows
        assert torch.equal(indices, serial_indices[:, begin:end]), label
        torch.testing.assert_close(quantized, serial_quantized[:, begin:end], rtol=1e-5, atol=1e-6)
        state = as_numpy(ours.state_dict())
        assert_close(state, as_numpy(serial.state_dict()), f"sync vs one process, {label}")
        assert_close(state, as_numpy(seed_layer.state_dict()), f"ours vs seed, {label}")
        gathered = [None] * size
        dist.all_gather_object(gathered, state)
        assert all(np.array_equal(g[key], state[key]) for g in gathered for key in state), label

dist.destroy_process_group()
print("OK", rank, size)
