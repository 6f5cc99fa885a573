"""The last rank builds its quantizer with a different ``codebook_size``.

The first ``partial_fit`` must notice (one small all-gather of the options)
and raise the same ValueError, naming the rank and both values, on every
rank; each rank prints that message, then the job ends with a non-zero exit.
"""
import numpy as np

import vqcore
from vqcore.comm import MPIComm

comm = MPIComm()
codes = 17 if comm.rank == comm.size - 1 else 16
quantizer = vqcore.VectorQuantizer(8, codes, seed=0, comm=comm)
x = np.random.default_rng(comm.rank).standard_normal((10, 8)).astype(np.float32)
try:
    quantizer.partial_fit(x)
except ValueError as err:
    print(f"rank {comm.rank} caught: {err}", flush=True)
    raise
print(f"rank {comm.rank} trained with mismatched options", flush=True)
