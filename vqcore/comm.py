"""Communicators: how per-rank sums and counts become global ones.

Every distributed-capable function in vqcore takes ``comm=None``.  Kernels only
compute *local* sums and counts; the communicator reduces them, and the
division happens after the reduction, so one code path serves one process and
many.

The protocol is small on purpose (see :class:`Communicator`); ``SerialComm`` is
the default and imports no MPI; :class:`MPIComm` wraps mpi4py, which is imported
only when an ``MPIComm`` is built, so ``import vqcore`` never starts MPI.
:func:`vqcore.sampling.sample_vectors_distributed` draws the same random rows
on every rank from data spread over ranks (k-means seeding, dead-code replacement).
"""
from __future__ import annotations

import math
import time

import numpy as np

from . import _validate
from ._optional import MissingDependencyError, require

__all__ = ["Communicator", "SerialComm", "MPIComm", "CollectiveTimeout", "resolve_comm", "check_same"]

#: Longest sleep between two polls of a pending barrier when a timeout is set (seconds).
_MAX_POLL_SLEEP = 0.01


class CollectiveTimeout(TimeoutError):
    """A rank waited longer than ``MPIComm(timeout=...)`` for the others to join a collective."""


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


def check_same(comm, **values) -> None:
    """Raise on every rank unless every rank passed the same ``values``.

    One small all-gather: cheap enough for the first step of a training run,
    where mismatched shapes or options would otherwise deadlock or silently
    reduce arrays of different meaning.

    Parameters
    ----------
    comm : Communicator or None
        The communicator; with one process this returns at once.
    **values
        Small picklable values compared with ``==``, e.g. ``dim=64,
        codebook_size=1024``.

    Raises
    ------
    ValueError
        On every rank, naming the first option that differs, rank 0's value and
        the ranks holding other values.
    """
    comm = resolve_comm(comm)
    if comm.size == 1:
        return
    gathered = comm.allgather_object(values)
    for name, expected in gathered[0].items():
        others = {
            rank: theirs.get(name) for rank, theirs in enumerate(gathered)
            if theirs.get(name) != expected
        }
        if others:
            shown = ", ".join(f"rank {rank} has {name}={value!r}" for rank, value in others.items())
            raise ValueError(
                f"ranks disagree on {name}: rank 0 has {name}={expected!r}, {shown}; "
                f"every rank must pass the same {name}"
            )
    extra = {name for theirs in gathered for name in theirs} - set(gathered[0])
    if extra:
        raise ValueError(
            f"ranks checked different options: {sorted(extra)} missing on rank 0; "
            "every rank must run the same code path"
        )


def check_gather_headers(headers):
    """Check every rank's ``(rows, trailing_shape, dtype_name)`` agrees but for the rows; return the rows.

    Every rank runs this on the same gathered list, so all raise the same error.
    """
    _, trailing0, dtype0 = headers[0]
    for rank, (_, trailing, dtype) in enumerate(headers):
        if (tuple(trailing), dtype) != (tuple(trailing0), dtype0):
            raise ValueError(
                f"allgatherv: rank 0 sent rows of shape {tuple(trailing0)} dtype {dtype0}, "
                f"rank {rank} rows of shape {tuple(trailing)} dtype {dtype}; "
                "all ranks must agree on everything but the number of rows"
            )
    return [h[0] for h in headers]


_MPI_DTYPES = (np.float32, np.float64, np.int32, np.int64)


def _import_mpi():
    """Import ``mpi4py.MPI``, turning a missing install into a clear error."""
    try:
        return require("mpi4py.MPI", "vqcore.MPIComm")
    except RuntimeError as err:  # mpi4py present, its MPI library not
        raise MissingDependencyError(f'vqcore.MPIComm: mpi4py cannot load its MPI library ({err}); '
                                     'pip install "vqcore[mpi]" or point mpi4py at your site MPI') from None


def _check_timeout(timeout):
    """``timeout`` as a positive finite float, or None."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer, np.floating)):
        raise TypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive, finite number of seconds (or None to wait forever), "
                         f"got {timeout}")
    return float(timeout)


def _check_buffer(array, what):
    """Validate an array handed to an in-place MPI collective."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{what} needs a numpy array, got {type(array).__name__}")
    if array.dtype.type not in _MPI_DTYPES:
        raise TypeError(
            f"{what} supports float32, float64, int32 and int64 arrays, got dtype={array.dtype}; "
            "convert with array.astype(...)"
        )
    if not array.flags.c_contiguous:
        raise ValueError(f"{what} needs a C-contiguous array; pass np.ascontiguousarray(array)")
    if not array.flags.writeable:
        raise ValueError(f"{what} works in place and got a read-only array; pass a writable copy")


class MPIComm(Communicator):
    """Communicator over MPI through mpi4py.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm or None
        The communicator to work over, default ``MPI.COMM_WORLD``.  vqcore
        keeps a ``Dup()`` of it, so its messages never match the caller's own
        point-to-point traffic.  Building an ``MPIComm`` is collective: every
        rank of ``comm`` must build one.
    timeout : float or None
        Seconds a rank may wait for the others to reach a collective before
        :class:`CollectiveTimeout` is raised (None: wait forever, as MPI does).
        A rank that makes fewer ``partial_fit`` steps than the others, or
        stops early, otherwise leaves them blocked for good.  Each collective
        is then preceded by a non-blocking barrier polled until the deadline,
        which costs one extra round of latency per call.

    Raises
    ------
    ImportError
        If mpi4py or an MPI library is missing (install ``vqcore[mpi]``).
    TypeError
        If ``comm`` is not an mpi4py intracommunicator.
    ValueError
        If ``timeout`` is not a positive, finite number of seconds.

    Notes
    -----
    Collectives use mpi4py's upper-case, buffer-based calls (no pickling) with
    ``MPI.IN_PLACE`` where the operation is in place.  Launch jobs with
    ``mpiexec -n N python -m mpi4py script.py``: an uncaught exception on one
    rank then aborts every rank instead of leaving the others waiting in a
    collective; so does :class:`CollectiveTimeout`, once the deadline
    passes, which makes a stuck job end with a message naming the rank and
    the call.  Building the first ``MPIComm`` also sets the number of
    numba/torch/BLAS threads for ranks sharing a node (see
    :func:`vqcore._threads.configure_threads`).
    """

    def __init__(self, comm=None, *, timeout=None):
        self.timeout = _check_timeout(timeout)
        MPI = _import_mpi()
        if comm is None:
            comm = MPI.COMM_WORLD
        elif not isinstance(comm, MPI.Intracomm):
            raise TypeError(
                f"MPIComm(comm=...) needs an mpi4py intracommunicator such as MPI.COMM_WORLD, "
                f"got {type(comm).__name__}; pass None to use COMM_WORLD"
            )
        self._MPI = MPI
        self.mpi_comm = comm.Dup()
        self.rank = self.mpi_comm.Get_rank()
        self.size = self.mpi_comm.Get_size()
        self._collectives = 0  # calls so far, named in timeout messages
        from ._threads import configure_threads_once

        configure_threads_once()

    def _join(self, what):
        """Wait (at most ``timeout`` seconds) until every rank has reached this collective."""
        self._collectives += 1
        if self.timeout is None:
            return
        request = self.mpi_comm.Ibarrier()
        deadline = time.monotonic() + self.timeout
        pause = 1e-5
        while not request.Test():
            if time.monotonic() > deadline:
                raise CollectiveTimeout(
                    f"rank {self.rank} of {self.size} waited {self.timeout:g} s in {what} (collective call "
                    f"#{self._collectives} on this rank) and the other ranks did not join: every rank must "
                    "make the same calls, e.g. the same number of partial_fit steps. Under "
                    "`python -m mpi4py` this error aborts the whole job."
                )
            time.sleep(pause)
            pause = min(2 * pause, _MAX_POLL_SLEEP)

    def allreduce_sum_(self, array):
        _check_buffer(array, "MPIComm.allreduce_sum_")
        self._join("allreduce_sum_")
        self.mpi_comm.Allreduce(self._MPI.IN_PLACE, array, op=self._MPI.SUM)
        return array

    def bcast_(self, array, root=0):
        _check_buffer(array, "MPIComm.bcast_")
        if not 0 <= root < self.size:
            raise ValueError(f"root={root} is not a rank of this {self.size}-process communicator")
        self._join("bcast_")
        self.mpi_comm.Bcast(array, root=root)
        return array

    def allgatherv(self, array):
        array = np.ascontiguousarray(array)
        if array.ndim == 0:
            raise ValueError("allgatherv needs an array with a leading (row) axis, got a 0-d array")
        if array.dtype.type not in _MPI_DTYPES:
            raise TypeError(
                f"MPIComm.allgatherv supports float32, float64, int32 and int64 arrays, "
                f"got dtype={array.dtype}"
            )
        # One small object gather gives every rank the row counts and lets all
        # of them raise the same error when trailing shapes or dtypes differ.
        self._join("allgatherv")
        headers = self.mpi_comm.allgather((array.shape[0], array.shape[1:], np.dtype(array.dtype).name))
        rows = check_gather_headers(headers)
        out = np.empty((sum(rows),) + array.shape[1:], dtype=array.dtype)
        row_size = int(np.prod(array.shape[1:], dtype=np.int64))
        counts = [n * row_size for n in rows]
        displacements = np.concatenate(([0], np.cumsum(counts)[:-1])).tolist()
        self.mpi_comm.Allgatherv(array, [out, (counts, displacements)])
        return out

    def allgather_object(self, obj):
        self._join("allgather_object")
        return self.mpi_comm.allgather(obj)

    def free(self) -> None:
        """Release the duplicated MPI communicator (collective; call on every rank)."""
        if self.mpi_comm != self._MPI.COMM_NULL:
            self.mpi_comm.Free()

    def __repr__(self):
        return f"MPIComm(rank={self.rank}, size={self.size})"
