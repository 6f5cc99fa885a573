"""The command line under ``mpiexec``: finding the world, agreeing on errors, aborting cleanly."""
from __future__ import annotations

import os
import sys

import numpy as np

from .common import PROG, UsageError

# Environment variables MPI launchers set: (rank, world size).
_MPI_ENV = (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMIX_RANK", None))


def launched_size():
    """World size announced by an MPI launcher (1 without one; None: a rank variable but no size)."""
    for rank_var, size_var in _MPI_ENV:
        if rank_var in os.environ:
            value = os.environ.get(size_var or "", "")
            return int(value) if value.isdigit() else None
    return 1


def world_comm():
    """An ``MPIComm`` when launched by mpiexec on more than one rank, else None.

    mpi4py is imported only under a launcher, so a plain run never starts MPI.
    """
    if launched_size() == 1:
        return None
    from ..comm import MPIComm

    try:
        comm = MPIComm()
    except ImportError as exc:
        raise UsageError(f"running under mpiexec, but {exc}") from None
    return comm if comm.size > 1 else None


def agree(comm, error):
    """Share each rank's preparation error; every rank learns whether any failed.

    Prevents one rank from quitting while the others wait for it in a collective.
    """
    if comm is None:
        if error is not None:
            raise error
        return
    errors = comm.allgather_object(None if error is None else str(error))
    failed = [(rank, message) for rank, message in enumerate(errors) if message is not None]
    if failed:
        if comm.rank == 0:
            for message in dict.fromkeys(message for _, message in failed):
                print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def shared_seed(seed, comm):
    """``seed``, or fresh entropy, the same on every rank (rank 0's choice)."""
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (1 << 63))
    if comm is not None:
        seed = comm.allgather_object(seed)[0]
    return seed


def abort_if_mpi(code):
    """One failing rank must not leave the others waiting in a collective."""
    if launched_size() != 1 and "mpi4py" in sys.modules:
        from mpi4py import MPI

        if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(code)
