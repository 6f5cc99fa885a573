"""Arrays on disk for the command line: reading data sets, writing results atomically.

Reading: a data set is one or more *sources*, each ``file.npy`` (memory-mapped,
so it may be larger than RAM), ``file.npz:key`` (read into memory: members of
a zip archive cannot be mapped) or a pattern holding ``{rank}``.  Each source
is viewed as rows of ``dim`` numbers (leading axes flattened); the rows of all
sources are concatenated into one :class:`Rows`.

Writing: results go to a temporary file in the destination's directory and are
renamed onto the destination only when complete, so an interrupted run never
leaves half a file; without ``force`` an existing file is never replaced.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

from ..state import atomic_file

__all__ = [
    "InputError", "Rows", "open_rows", "expand_sources", "open_source", "open_codes", "codes_dtype",
    "check_output", "atomic_path", "atomic_npy",
]

RANK_FIELD = "{rank}"


class InputError(ValueError):
    """A problem with one file given on the command line."""

    def __init__(self, path, problem):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def split_source(source):
    """``"a.npz:key"`` -> ``("a.npz", "key")``; anything else -> ``(source, None)``."""
    head, sep, key = source.rpartition(":")
    if sep and head.lower().endswith(".npz") and key:
        return head, key
    return source, None


def expand_sources(sources, *, rank=None):
    """Resolve ``{rank}`` patterns into file names.

    Parameters
    ----------
    sources : list of str
    rank : int, optional
        This process's rank: a pattern names its one file.  Without a rank a
        pattern names every file from ``{rank}=0`` up to the first missing one,
        so one process reads the shards of a whole distributed data set.

    Raises
    ------
    InputError
        A pattern whose first file is missing.
    """
    out = []
    for source in sources:
        if RANK_FIELD not in source:
            out.append(source)
        elif rank is not None:
            out.append(source.replace(RANK_FIELD, str(rank)))
        else:
            shards = []
            while os.path.exists(split_source(source.replace(RANK_FIELD, str(len(shards))))[0]):
                shards.append(source.replace(RANK_FIELD, str(len(shards))))
            if not shards:
                raise InputError(source.replace(RANK_FIELD, "0"), "no such file (first shard of the {rank} pattern)")
            out.extend(shards)
    return out


def open_source(source):
    """Open one source as an array without reading it (``.npy`` is memory-mapped).

    Raises
    ------
    InputError
        Missing or unreadable file, unknown ``.npz`` key, non-numeric dtype or
        fewer than two dimensions.
    """
    path, key = split_source(source)
    if not os.path.exists(path):
        raise InputError(path, "no such file")
    if os.path.isdir(path):
        raise InputError(path, "is a directory, not a .npy or .npz file")
    try:
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable .npy/.npz file ({exc})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if key is None:
                raise InputError(path, f"is an .npz archive; name an array as {path}:KEY (keys: {', '.join(loaded.files)})")
            if key not in loaded.files:
                raise InputError(path, f"has no array {key!r} (keys: {', '.join(loaded.files)})")
            try:
                array = loaded[key]
            except ValueError as exc:  # object arrays need pickle, which is refused
                raise InputError(source, f"cannot be read without pickle ({exc})") from None
    elif key is not None:
        raise InputError(path, f"is a .npy file, which has no key {key!r}; drop ':{key}'")
    else:
        array = loaded
    if array.dtype.kind not in "fiu":
        raise InputError(source, f"has dtype {array.dtype}; vqcore needs integer or floating-point numbers")
    if array.ndim < 2:
        raise InputError(source, f"has shape {array.shape}; expected vectors as rows, shape (n_vectors, dim)")
    return array


class Rows:
    """Rows of several arrays with the same last dimension, read lazily as float32.

    Parameters
    ----------
    arrays : list of ndarray
        Arrays of shape ``(..., dim)`` (leading axes are flattened into rows).
    names : list of str
        Their sources, for error messages.
    """

    def __init__(self, arrays, names):
        dims = {a.shape[-1] for a in arrays}
        if len(dims) > 1:
            first = f"{names[0]} has dim {arrays[0].shape[-1]}"
            other = next(i for i, a in enumerate(arrays) if a.shape[-1] != arrays[0].shape[-1])
            raise InputError(names[other], f"has dim {arrays[other].shape[-1]} but {first}; all inputs need the same dim")
        self.arrays = [a.reshape(-1, a.shape[-1]) for a in arrays]
        self.names = list(names)
        self.lead_shape = arrays[0].shape[:-1] if len(arrays) == 1 else (sum(len(a) for a in self.arrays),)
        self.dim = arrays[0].shape[-1]
        self.offsets = np.concatenate(([0], np.cumsum([len(a) for a in self.arrays]))).astype(np.int64)
        self.start, self.stop = 0, int(self.offsets[-1])

    def __len__(self):
        return self.stop - self.start

    def slice(self, start, stop):
        """The rows ``[start, stop)`` of this view, as a new view (nothing is read)."""
        view = object.__new__(Rows)
        view.__dict__.update(self.__dict__)
        view.start, view.stop = self.start + start, self.start + stop
        view.lead_shape = (stop - start,)
        return view

    def read(self, start, stop):
        """Rows ``[start, stop)`` of this view as a float32 array (a copy)."""
        lo, hi = self.start + start, self.start + stop
        parts = []
        for array, offset in zip(self.arrays, self.offsets[:-1]):
            a, b = max(lo - offset, 0), min(hi - offset, len(array))
            if a < b:
                parts.append(np.asarray(array[a:b], dtype=np.float32))
        if not parts:
            return np.empty((0, self.dim), dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def chunks(self, rows):
        """``(start, stop, array)`` for consecutive blocks of at most ``rows`` rows."""
        for start in range(0, len(self), rows):
            stop = min(start + rows, len(self))
            yield start, stop, self.read(start, stop)

    def name_of_row(self, row):
        """The source holding row ``row`` of this view, and the row's index inside it."""
        absolute = self.start + row
        i = int(np.searchsorted(self.offsets, absolute, side="right")) - 1
        return self.names[i], absolute - int(self.offsets[i])

    def check_block(self, start, block):
        """Raise :class:`InputError` naming the first row of ``block`` (read at ``start``) holding NaN or Inf."""
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            name, row = self.name_of_row(start + int(np.argmax(bad)))
            raise InputError(name, f"row {row} contains NaN or Inf; remove or impute those rows first")

    def check_finite(self, chunk_rows=65536):
        """:meth:`check_block` over every row (one pass over the data)."""
        for start, _, block in self.chunks(chunk_rows):
            self.check_block(start, block)


def open_rows(sources, *, rank=None):
    """Open ``sources`` (see :func:`expand_sources`) as one :class:`Rows`."""
    names = expand_sources(sources, rank=rank)
    arrays = [open_source(name) for name in names]
    rows = Rows(arrays, names)
    if len(rows) == 0:
        raise InputError(names[0] if len(names) == 1 else " ".join(names), "holds no vectors")
    return rows


def open_codes(path):
    """Open a ``.npy`` file of code indices (memory-mapped).

    Raises
    ------
    InputError
        Missing file, not a ``.npy`` array, or not integers.
    """
    if not os.path.exists(path):
        raise InputError(path, "no such file")
    try:
        codes = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable .npy file ({exc})") from None
    if not isinstance(codes, np.ndarray):
        codes.close()
        raise InputError(path, "is an .npz archive; codes are the .npy file that vqcore encode writes")
    if codes.dtype.kind not in "iu":
        raise InputError(path, f"has dtype {codes.dtype}; codes are integers (the output of vqcore encode)")
    if codes.ndim == 0:
        raise InputError(path, "holds a single number; codes are an array of indices")
    return codes


def codes_dtype(codebook_size):
    """The smallest unsigned integer dtype that holds every index ``0 .. codebook_size - 1``."""
    return np.min_scalar_type(max(int(codebook_size) - 1, 0))


def check_output(path, force):
    """Fail early (before any work) if ``path`` cannot be written.

    Raises
    ------
    InputError
        The file exists and ``force`` is off, or its directory is missing.
    """
    if os.path.isdir(path):
        raise InputError(path, "is a directory; give a file name")
    if os.path.exists(path) and not force:
        raise InputError(path, "already exists; pass --force to overwrite it")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InputError(path, f"directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise InputError(path, f"directory {directory} is not writable")


@contextlib.contextmanager
def atomic_path(path, *, force=False, suffix=".tmp"):
    """Yield a temporary file name next to ``path``; publish it there if the block succeeds.

    Without ``force`` an existing file is never replaced, even one created
    while the block ran.  The temporary file is removed when the block raises.
    """
    try:
        with atomic_file(path, overwrite=force, suffix=suffix) as tmp:
            yield tmp
    except FileExistsError:
        raise InputError(path, "already exists (created while this command ran); pass --force to overwrite it") from None


@contextlib.contextmanager
def atomic_npy(path, shape, dtype, *, force=False):
    """Yield a writable memory-mapped ``.npy`` array that appears at ``path`` when the block succeeds.

    Results larger than RAM are written block by block into the map.
    """
    with atomic_path(path, force=force, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=tuple(shape))
        yield out
        out.flush()
        del out
