"""Arrays on disk for the command line: reading data sets and codes, writing results atomically.

Reading: a data set is one or more *sources*, each ``file.npy`` (read block by
block with ``pread``, so it may be larger than RAM and than the address space
a job is given), ``file.npz:key`` (read into memory: members of a zip archive
cannot be read in place) or a pattern holding ``{rank}`` in the file name.
Every source is a 2-D array, one vector (or one row of codes) per row; the
rows of all sources are concatenated into one :class:`Rows`.

Sources and ranks (the rule ``fit``, ``encode`` and ``decode`` share):

* one process (no ``mpiexec``): a ``{rank}`` pattern names every shard
  ``{rank}=0, 1, ...``; a missing shard before the last one is an error naming it;
* under ``mpiexec -n P`` without patterns, the concatenated rows are split
  into ``P`` contiguous, near-equal shares, one per rank;
* under ``mpiexec -n P`` with patterns, every source must be a pattern: rank
  ``r`` reads the files for ``{rank}=r`` only.  A plain file beside a
  pattern is refused (every rank would read it); shards numbered ``P`` or
  higher are refused too (they would be skipped).

Writing: :func:`atomic_path` here, and :func:`vqcore.state.open_rows_writer`
for the rows of every rank; without ``--force`` an existing file is never
replaced, and a replaced file keeps its permissions.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re

import numpy as np

from ..state import atomic_file

__all__ = [
    "InputError", "Rows", "NpyFile", "open_rows", "open_share", "expand_sources", "open_source", "open_codes",
    "codes_dtype", "check_output", "atomic_path",
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


def shard_numbers(pattern):
    """The ``{rank}`` values for which a file of ``pattern`` exists, sorted.

    Raises
    ------
    InputError
        ``{rank}`` in an ``.npz`` key (only file names are numbered per rank).
    """
    path, key = split_source(pattern)
    if key is not None and RANK_FIELD in key:
        raise InputError(pattern, f"{RANK_FIELD} may appear in the file name, not in the .npz key; "
                                  f"write one file per rank (e.g. part-{RANK_FIELD}.npz:{key.replace(RANK_FIELD, '') or 'KEY'})")
    if RANK_FIELD not in path:
        return []
    before, _, after = path.partition(RANK_FIELD)
    if RANK_FIELD in after:
        raise InputError(pattern, f"holds {RANK_FIELD} more than once")
    found = re.compile(re.escape(before) + r"(0|[1-9][0-9]*)" + re.escape(after) + r"\Z")
    numbers = set()
    for name in glob.glob(glob.escape(before) + "*" + glob.escape(after)):
        match = found.match(name)
        if match:
            numbers.add(int(match.group(1)))
    return sorted(numbers)


def expand_sources(sources, *, rank=None):
    """Resolve ``{rank}`` patterns into file names.

    Parameters
    ----------
    sources : list of str
    rank : int, optional
        This process's rank: a pattern names its one file.  Without a rank a
        pattern names every shard ``{rank}=0 .. last``, so one process reads
        the shards of a whole distributed data set.

    Raises
    ------
    InputError
        A pattern with no shard 0, or with a gap (naming the missing shard).
    """
    out = []
    for source in sources:
        numbers = shard_numbers(source)
        if RANK_FIELD not in source:
            out.append(source)
        elif rank is not None:
            out.append(source.replace(RANK_FIELD, str(rank)))
        else:
            if not numbers or numbers[0] != 0:
                raise InputError(source.replace(RANK_FIELD, "0"),
                                 f"no such file (first shard of the {RANK_FIELD} pattern {source})")
            gaps = sorted(set(range(numbers[-1] + 1)) - set(numbers))
            if gaps:
                raise InputError(source.replace(RANK_FIELD, str(gaps[0])),
                                 f"no such file, but shard {numbers[-1]} of {source} exists; "
                                 "a data set split by rank needs every shard")
            out.extend(source.replace(RANK_FIELD, str(n)) for n in numbers)
    return out


class NpyFile:
    """A C-ordered ``.npy`` file read by rows with ``pread``: memory stays bounded by the rows asked for.

    Parameters
    ----------
    path : str

    Raises
    ------
    InputError
        Not a ``.npy`` file, or shorter than its header declares.
    """

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = reader(f, max_header_size=1 << 16)
            except (ValueError, OSError, EOFError, SyntaxError) as exc:
                raise InputError(path, f"not a readable .npy file ({exc})") from None
            self.offset = f.tell()
        self.shape, self.dtype, self.fortran = tuple(shape), dtype, fortran
        self.ndim = len(self.shape)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        if not dtype.hasobject and self.ndim:
            expected = self.offset + self.shape[0] * self.row_bytes
            if os.path.getsize(path) < expected:
                raise InputError(path, f"is truncated: its header declares {expected} bytes, "
                                       f"the file holds {os.path.getsize(path)}")

    def __len__(self):
        return self.shape[0]

    def read(self, start, stop):
        """Rows ``[start, stop)`` as an array of the file's dtype."""
        if self.fortran:  # column-major files cannot be read by rows: map them
            return np.asarray(np.load(self.path, mmap_mode="r")[start:stop])
        count = (stop - start) * self.row_bytes
        buffer = bytearray(count)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset + start * self.row_bytes)
            got = f.readinto(buffer)
        if got != count:
            raise InputError(self.path, f"is truncated (rows {start}..{stop - 1} could not be read)")
        return np.frombuffer(buffer, dtype=self.dtype).reshape((stop - start,) + self.shape[1:])


class _InMemory:
    """An array already in memory, with :class:`NpyFile`'s interface."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim

    def __len__(self):
        return self.shape[0]

    def read(self, start, stop):
        return self.array[start:stop]


def _reshape_hint(shape):
    return (f"has shape {shape}; vqcore reads a 2-D array, one vector per row: reshape it first, "
            f"e.g. x.reshape(-1, {shape[-1]}) for vectors of the last axis or x.reshape(len(x), -1) "
            "to flatten each sample" if len(shape) > 2 else
            f"has shape {shape}; expected vectors as rows, shape (n_vectors, dim)")


def open_array(source, *, what="vectors"):
    """Open one source without reading its rows (``.npy``) or read its ``.npz`` member.

    Raises
    ------
    InputError
        Missing or unreadable file, unknown ``.npz`` key, or non-numeric dtype.
    """
    path, key = split_source(source)
    if not os.path.exists(path):
        raise InputError(path, "no such file")
    if os.path.isdir(path):
        raise InputError(path, "is a directory, not a .npy or .npz file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        if key is not None:
            raise InputError(path, f"is a .npy file, which has no key {key!r}; drop ':{key}'")
        array = NpyFile(path)
        if array.dtype.hasobject:
            raise InputError(path, f"holds Python objects; vqcore reads {what} as numbers")
    else:
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(path, "not a .npy or .npz file ("
                             + str(exc).split(" when allow_pickle")[0].split(" with allow_pickle")[0] + ")") from None
        with archive:
            if key is None:
                raise InputError(path, f"is an .npz archive; name an array as {path}:KEY "
                                       f"(keys: {', '.join(archive.files)})")
            if key not in archive.files:
                raise InputError(path, f"has no array {key!r} (keys: {', '.join(archive.files)})")
            try:
                array = _InMemory(archive[key])
            except Exception as exc:  # noqa: BLE001 -- object members need pickle; damaged members
                raise InputError(source, f"cannot be read without pickle or is damaged "
                                         f"({type(exc).__name__})") from None
    return array


def open_source(source):
    """Open one source of vectors: a 2-D array of numbers with at least one column.

    Raises
    ------
    InputError
        As :func:`open_array`, or not 2-D (with a hint to reshape), or dim 0.
    """
    array = open_array(source)
    if array.dtype.kind not in "fiu":
        raise InputError(source, f"has dtype {array.dtype}; vqcore needs integer or floating-point numbers")
    if array.ndim != 2:
        raise InputError(source, _reshape_hint(array.shape))
    if array.shape[1] == 0:
        raise InputError(source, f"has shape {array.shape}: vectors of dim 0; vqcore needs dim >= 1")
    return array


class Rows:
    """Rows of several arrays with the same row shape, read lazily block by block.

    Parameters
    ----------
    arrays : list of NpyFile or _InMemory
        Arrays of shape ``(n_i, *row_shape)``.
    names : list of str
        Their sources, for error messages.
    """

    def __init__(self, arrays, names):
        shapes = [tuple(a.shape[1:]) for a in arrays]
        for name, shape in zip(names, shapes):
            if shape != shapes[0]:
                raise InputError(name, f"has rows of shape {shape} (dim {shape[-1] if shape else 1}) but "
                                       f"{names[0]} has {shapes[0]} (dim {shapes[0][-1] if shapes[0] else 1}); "
                                       "all inputs need the same dim")
        self.arrays = list(arrays)
        self.names = list(names)
        self.row_shape = shapes[0] if shapes else ()
        self.dim = self.row_shape[-1] if self.row_shape else 1
        self.offsets = np.concatenate(([0], np.cumsum([len(a) for a in self.arrays]))).astype(np.int64)
        self.start, self.stop = 0, int(self.offsets[-1])

    @property
    def lead_shape(self):
        return (len(self),)

    def __len__(self):
        return self.stop - self.start

    def slice(self, start, stop):
        """The rows ``[start, stop)`` of this view, as a new view (nothing is read)."""
        view = object.__new__(Rows)
        view.__dict__.update(self.__dict__)
        view.start, view.stop = self.start + start, self.start + stop
        return view

    def read(self, start, stop, dtype=np.float32):
        """Rows ``[start, stop)`` of this view as an array of ``dtype`` (None: the files' dtype)."""
        lo, hi = self.start + start, self.start + stop
        parts = []
        for array, offset in zip(self.arrays, self.offsets[:-1]):
            a, b = max(lo - offset, 0), min(hi - offset, len(array))
            if a < b:
                part = array.read(int(a), int(b))
                parts.append(part if dtype is None else np.asarray(part, dtype=dtype))
        if not parts:
            return np.empty((0,) + self.row_shape, dtype=dtype or self.arrays[0].dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def chunks(self, rows, dtype=np.float32):
        """``(start, stop, array)`` for consecutive blocks of at most ``rows`` rows."""
        for start in range(0, len(self), rows):
            stop = min(start + rows, len(self))
            yield start, stop, self.read(start, stop, dtype)

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


def open_rows(sources, *, rank=None, allow_empty=False, opener=open_source):
    """Open ``sources`` (see :func:`expand_sources`) as one :class:`Rows`."""
    names = expand_sources(sources, rank=rank)
    rows = Rows([opener(name) for name in names], names)
    if len(rows) == 0 and not allow_empty:
        raise InputError(names[0] if len(names) == 1 else " ".join(names), "holds no vectors")
    return rows


def open_share(sources, rank, size, *, allow_empty=False, opener=open_source):
    """This rank's rows under the rules of the module docstring.

    Parameters
    ----------
    sources : list of str
    rank, size : int
        This process's rank and the number of ranks (1 without mpiexec).
    allow_empty : bool
        A rank may hold no rows (encode, decode); the data set as a whole is
        checked by the caller.
    opener : callable
        Opens one file name (vectors by default; codes for decode).

    Raises
    ------
    InputError
        Any problem with this rank's files.
    """
    patterns = [s for s in sources if RANK_FIELD in s]
    for pattern in patterns:
        shard_numbers(pattern)  # refuses {rank} in an .npz key at once
    if size == 1 or not patterns:
        rows = open_rows(sources, allow_empty=allow_empty or size > 1, opener=opener)
        if size > 1:
            n = len(rows)
            rows = rows.slice(rank * n // size, (rank + 1) * n // size)
        return rows
    plain = [s for s in sources if RANK_FIELD not in s]
    if plain:
        raise InputError(plain[0], f"is a plain file beside the {RANK_FIELD} pattern {patterns[0]}: under mpiexec "
                                   f"every rank would read it; name it per rank too, or give only plain files "
                                   "(then the ranks split their rows)")
    if rank == 0:
        for pattern in patterns:
            extra = [n for n in shard_numbers(pattern) if n >= size]
            if extra:
                raise InputError(pattern.replace(RANK_FIELD, str(extra[0])),
                                 f"exists but only {size} ranks run, so no rank would read it; "
                                 f"run mpiexec -n {extra[-1] + 1} or move the extra shards away")
    return open_rows(sources, rank=rank, allow_empty=True, opener=opener)


def open_codes(source, code_shape=None):
    """Open one file of code indices (integers, one row of codes per vector).

    Parameters
    ----------
    source : str
    code_shape : tuple, optional
        Codes of one vector; rows must have as many axes.

    Raises
    ------
    InputError
        Missing file, not an array of integers, or of the wrong number of axes.
    """
    codes = open_array(source, what="codes")
    if codes.dtype.kind not in "iu":
        raise InputError(source, f"has dtype {codes.dtype}; codes are integers (the output of vqcore encode)")
    if codes.ndim == 0:
        raise InputError(source, "holds a single number; codes are an array of indices")
    if code_shape is not None and codes.ndim != 1 + len(code_shape):
        want = "(n,)" if not code_shape else f"(n, {', '.join(map(str, code_shape))})"
        raise InputError(source, f"has shape {codes.shape}; this codebook's codes have shape {want}"
                         + (" (reshape it to one row of codes per vector)" if codes.ndim > 1 + len(code_shape)
                            else ""))
    return codes


def codes_dtype(codebook_size):
    """The smallest unsigned integer dtype that holds every index ``0 .. codebook_size - 1``."""
    return np.min_scalar_type(max(int(codebook_size) - 1, 0))


def check_output(path, force):
    """Fail early (before any work) if ``path`` cannot be written.

    Raises
    ------
    InputError
        Empty name, a directory, a dangling symbolic link, the file exists
        and ``force`` is off, or its directory is missing or not writable.
    """
    if not path:
        raise InputError(repr(path), "is an empty output name; give a file name with -o")
    if os.path.isdir(path):
        raise InputError(path, "is a directory; give a file name")
    if os.path.islink(path) and not os.path.exists(path):
        raise InputError(path, f"is a symbolic link to the missing {os.readlink(path)}; "
                               "remove the link or give another output name")
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
