"""Communicators: how per-rank sums and counts become global ones.

Every distributed-capable function in vqcore takes ``comm=None``.  Kernels only
compute *local* sums and counts; the communicator reduces them, and the
division happens after the reduction, so one code path serves one process and
many.

The protocol is small on purpose (see :class:`Communicator`); ``SerialComm`` is
the default and imports no MPI.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Communicator", "SerialComm", "resolve_comm"]


class Communicator:
    """The collective operations vqcore needs.

    Attributes
    ----------
    rank : int
        This process's rank, ``0 <= rank < size``.
    size : int
        Number of processes taking part.

    Notes
    -----
    Subclasses implement every method below.  Arrays passed to the in-place
    methods are C-contiguous numpy arrays; the methods return the array they
    were given so calls can be chained.
    """

    rank: int = 0
    size: int = 1

    def allreduce_sum_(self, array: np.ndarray) -> np.ndarray:
        """Sum ``array`` over all ranks, in place; every rank gets the total."""
        raise NotImplementedError

    def bcast_(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite ``array`` on every rank with root's values, in place."""
        raise NotImplementedError

    def allgatherv(self, array: np.ndarray) -> np.ndarray:
        """Concatenate every rank's ``array`` along axis 0, in rank order.

        The leading dimension may differ between ranks (zero is allowed); the
        trailing dimensions and dtype must agree.
        """
        raise NotImplementedError

    def allgather_object(self, obj):
        """Gather one small picklable object per rank into a list (rank order)."""
        raise NotImplementedError


class SerialComm(Communicator):
    """The one-process communicator: every collective is the identity."""

    rank = 0
    size = 1

    def allreduce_sum_(self, array):
        return array

    def bcast_(self, array, root=0):
        return array

    def allgatherv(self, array):
        return array

    def allgather_object(self, obj):
        return [obj]

    def __repr__(self):
        return "SerialComm()"


_SERIAL = SerialComm()


def resolve_comm(comm) -> Communicator:
    """Return ``comm``, or the serial communicator when it is None.

    Raises
    ------
    TypeError
        If ``comm`` is neither None nor a :class:`Communicator`.
    """
    if comm is None:
        return _SERIAL
    if isinstance(comm, Communicator):
        return comm
    raise TypeError(
        f"comm={comm!r} is not a vqcore communicator; pass None for one process, "
        "vqcore.MPIComm() for MPI, or a vqcore.comm.Communicator subclass"
    )
