"""The last rank makes one partial_fit step fewer than the others.

With ``MPIComm(timeout=...)`` the waiting ranks raise ``CollectiveTimeout``
(which ``python -m mpi4py`` turns into an abort of the job) instead of
waiting forever.  Argument: the timeout in seconds.
"""
import sys

import numpy as np

import vqcore

comm = vqcore.MPIComm(timeout=float(sys.argv[1]))
quantizer = vqcore.VectorQuantizer(4, 8, seed=0, comm=comm)
rng = np.random.default_rng(comm.rank)
steps = 2 if comm.rank == comm.size - 1 else 3
for _ in range(steps):
    quantizer.partial_fit(rng.standard_normal((32, 4)).astype(np.float32))
print("finished: rank", comm.rank, flush=True)
