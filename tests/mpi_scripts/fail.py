"""The last rank raises while the others wait in a collective.

Run under ``python -m mpi4py``: the uncaught exception aborts every rank, so
the job must end with a non-zero exit within seconds instead of hanging.
"""
import numpy as np

from vqcore.comm import MPIComm

comm = MPIComm()
buffer = np.ones(4)
comm.allreduce_sum_(buffer)  # everyone is up and talking
if comm.rank == comm.size - 1:
    raise ValueError(f"deliberate failure on rank {comm.rank}")
comm.allreduce_sum_(buffer)  # the others block here until the abort arrives
print("unreachable: rank", comm.rank, "finished")
