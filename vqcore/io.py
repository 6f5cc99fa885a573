"""Reading any vqcore quantizer file: a registry of kinds, and :func:`load`.

Each quantizer class registers the ``kind`` it writes into its ``.npz`` file
(:func:`register`); :func:`load` reads that kind and hands the file to the
class's own ``load``.
"""
from __future__ import annotations

import os

import numpy as np

from .quantizer import VectorQuantizer
from .state import read_kind

__all__ = ["load", "register", "registered_kinds", "file_kind"]

_REGISTRY = {}


def register(kind):
    """Class decorator: ``kind`` files are read by ``cls.load(path, seed=..., comm=...)``.

    Raises
    ------
    ValueError
        ``kind`` is already registered to another class.
    """
    def decorate(cls):
        owner = _REGISTRY.get(kind)
        if owner is not None and owner is not cls:
            raise ValueError(f"kind {kind!r} is already registered to {owner.__name__}")
        _REGISTRY[kind] = cls
        return cls

    return decorate


def registered_kinds():
    """The kinds :func:`load` can read, sorted (every quantizer module registers on import)."""
    return sorted(_REGISTRY)


def file_kind(path):
    """The ``kind`` recorded in a vqcore file, read by the strict reader without reading its arrays.

    Raises
    ------
    ValueError
        Not a vqcore file, or damaged.
    """
    return read_kind(path)


def load(path, *, seed=None, comm=None):
    """Read any quantizer written by a vqcore ``save``: the class is chosen by the file's kind.

    Parameters
    ----------
    path : str or os.PathLike
    seed : int, numpy.random.Generator or None
        Randomness for further training of the loaded quantizer.
    comm : vqcore.comm.Communicator, optional

    Returns
    -------
    VectorQuantizer, ResidualQuantizer, ProductQuantizer, or vqcore.fsq's / vqcore.lfq's classes

    Raises
    ------
    ValueError
        Not a vqcore file, or a kind this vqcore does not know.
    """
    kind = file_kind(path)
    cls = _REGISTRY.get(kind)
    if cls is None:
        raise ValueError(f"{os.fspath(path)} holds a {kind!r}; this vqcore reads {sorted(_REGISTRY)}")
    return cls.load(path, seed=seed, comm=comm)


# quantizer.py stays free of file-format registration; its kind is registered here
register("VectorQuantizer")(VectorQuantizer)


def write_rows(path, rows, *, comm=None, overwrite=False):
    """Write every rank's ``rows``, in rank order, into one ``.npy`` file, atomically.

    A collective call (each rank passes its own rows; their concatenation is
    written, byte for byte as ``np.save`` would).  Rank 0 creates the file at
    its final size under a temporary name; every rank writes its rows at its
    offset; when all succeeded, rank 0 renames it onto ``path``.  If any rank
    fails, nothing is published and every rank raises.  See
    :func:`vqcore.state.open_rows_writer` for the temporary-file rules.

    Parameters
    ----------
    path : str or os.PathLike
    rows : array_like, shape (n_rank, ...)
        This rank's rows (``n_rank`` may be 0); every rank gives the same
        trailing shape and dtype.
    comm : vqcore.comm.Communicator, optional
        None: one process, the file is ``np.save(path, rows)`` written atomically.
    overwrite : bool
        Replace an existing ``path`` (keeping its permissions).

    Raises
    ------
    ValueError
        ``rows`` is 0-d, ranks disagree on trailing shape or dtype, or another
        rank failed (:class:`vqcore.state.OtherRankFailed`).
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    from .state import open_rows_writer

    rows = np.asarray(rows)
    if rows.ndim == 0:
        raise ValueError("rows must have at least one axis (one entry per row); got a single value")
    with open_rows_writer(path, len(rows), rows.shape[1:], rows.dtype, comm=comm, overwrite=overwrite) as out:
        out.write(0, rows)
