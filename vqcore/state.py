"""State dicts and quantizer files: checks, conversion, atomic ``.npz`` writing."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import zipfile

import numpy as np

FORMAT = "vqcore"
FORMAT_VERSION = 1


def to_numpy(value):
    """A numpy copy of an array or a torch tensor (without importing torch)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.array(value, copy=True)


#: State arrays holding EMA counts or variances (never negative), and 0/1 flags, by the key's last part.
NON_NEGATIVE_STATE = ("cluster_size", "batch_variance", "codebook_variance")
FLAG_STATE = ("initted", "codebook_mean_needs_init", "codebook_variance_needs_init")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _value_problem(key, value, state):
    """Why the values of state array ``key`` cannot be used as float32 state, or None.

    A codebook statistic whose ``<name>_needs_init`` flag in ``state`` is 1 is
    not in use yet (the first training step overwrites it; the seed leaves it
    as ``torch.empty`` garbage), so only its finiteness and range are checked.
    """
    if not value.size:
        return None
    if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
        return f"{key} contains NaN or Inf"
    largest = float(np.max(np.abs(value.astype(np.float64))))
    if largest > _FLOAT32_MAX:  # float64 (or int) values that would turn into inf as float32
        return f"{key} holds {largest:.3g}, beyond the float32 range (|x| <= {_FLOAT32_MAX:.3g})"
    name = key.rsplit(".", 1)[-1]
    flag = state.get(key + "_needs_init")
    unused = flag is not None and np.size(flag) and bool(np.all(np.asarray(flag) == 1))
    if name in NON_NEGATIVE_STATE and not unused and np.min(value) < 0:
        return f"{key} holds a negative value ({float(np.min(value)):.3g}); it is a count or variance (>= 0)"
    if name in FLAG_STATE and not np.all((value == 0) | (value == 1)):
        return f"{key} must be 0 or 1; got {sorted(set(np.unique(value).tolist()))[:5]}"
    return None


def check_state(state, expected, *, optional=(), strict=True):
    """Check keys, shapes and values of a state dict; return it with float32 values.

    Parameters
    ----------
    state : dict of str to ndarray
    expected : dict of str to tuple
        Every key the owner knows, with its shape.
    optional : iterable of str
        Keys that may be absent even with ``strict`` (e.g. affine batch
        statistics that exist only after a first batch).
    strict : bool
        Missing and unexpected keys are errors.

    Raises
    ------
    ValueError
        Naming every missing, unexpected or mis-shaped key, and every array
        whose values are not usable state: NaN or Inf, beyond the float32
        range (a float64 ``1e39`` would become ``inf``), a negative count or
        variance (``cluster_size``, ``*_variance`` in use: its
        ``*_needs_init`` flag is not 1), or a flag
        (``initted``, ``*_needs_init``) other than 0 or 1.
    """
    problems = []
    if strict:
        missing = sorted(set(expected) - set(state) - set(optional))
        unexpected = sorted(set(state) - set(expected))
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
    for key, value in state.items():
        if key not in expected:
            continue
        if tuple(value.shape) != tuple(expected[key]):
            problems.append(f"{key} has shape {tuple(value.shape)}, expected {tuple(expected[key])}")
        elif value.dtype.kind not in "fiub":
            problems.append(f"{key} has dtype {value.dtype}, expected numbers")
        else:
            problem = _value_problem(key, value, state)
            if problem:
                problems.append(problem)
    if problems:
        raise ValueError(
            "state dict does not fit this quantizer: " + "; ".join(problems)
            + " (is it from a layer with the same dim, codebook_size, heads and options?)"
        )
    return {k: v.astype(np.float32) for k, v in state.items() if k in expected}


class TempFile:
    """A file being written next to its destination, published there in one step.

    Where the OS allows (Linux ``O_TMPFILE``) the file has no name until
    :meth:`publish` links it into place, so a process killed mid-write (even
    by SIGKILL) leaves nothing behind.  Elsewhere, and with ``named=True``
    (other processes must open it, e.g. MPI ranks writing one file), it is a
    hidden ``.vqcore-*`` file in the destination's directory that a SIGKILL
    may leave behind; every other failure removes it.

    The file is created with the mode ``np.save`` would give (``0o666`` less
    the umask), or with ``mode`` (e.g. the mode of a file being replaced).

    Attributes
    ----------
    path : str
        A name any ``open`` of this process accepts (``/proc/self/fd/N`` for
        an unnamed file).
    fd : int
        An open read-write descriptor.
    """

    def __init__(self, directory, *, suffix=".tmp", mode=None, named=False):
        self.directory, self.suffix, self.named_path = directory, suffix, None
        self.fd = None
        if not named and hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd"):
            try:
                self.fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o666)
            except OSError:  # file systems without O_TMPFILE support: use a named file
                self.fd = None
        if self.fd is None:
            self.named_path, self.fd = _create_named(directory, suffix)
        self.path = self.named_path or f"/proc/self/fd/{self.fd}"
        if mode is not None:
            os.fchmod(self.fd, mode)

    def publish(self, path, *, overwrite):
        """Sync the file and give it the name ``path`` atomically.

        Raises
        ------
        FileExistsError
            ``overwrite`` is False and ``path`` exists (checked atomically).
        """
        os.fsync(self.fd)
        if self.named_path is None:
            if overwrite:  # a link cannot replace a file: link under a hidden name, then rename
                hidden = _link_hidden(self.path, self.directory, self.suffix)
                os.replace(hidden, path)
            else:
                _link_following(self.path, path)  # fails if path exists
        else:
            _publish(self.named_path, path, overwrite)
            self.named_path = None
        self.close()

    def close(self):
        """Close the descriptor and remove a named file not yet published."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.named_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.named_path)
            self.named_path = None


def _at_new_name(directory, suffix, make):
    """``make(name)`` at the first free hidden name ``.vqcore-<random><suffix>`` in ``directory``."""
    for _ in range(100):
        name = os.path.join(directory, f".vqcore-{secrets.token_hex(6)}{suffix}")
        try:
            return make(name)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory}")


def _create_named(directory, suffix):
    """A new hidden file in ``directory``: (name, descriptor), mode 0o666 less the umask."""
    return _at_new_name(directory, suffix,
                        lambda name: (name, os.open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)))


def _link_hidden(source, directory, suffix):
    """Link ``source`` at a new hidden name in ``directory``; return the name."""
    def link(name):
        _link_following(source, name)
        return name

    return _at_new_name(directory, suffix, link)


def _link_following(source, target):
    """``linkat(..., AT_SYMLINK_FOLLOW)``: link the file ``/proc/self/fd/N`` points to, not the link.

    ``os.link`` calls plain ``link()`` unless a directory descriptor is given,
    and ``link()`` would try to link the ``/proc`` symlink itself.
    """
    root = os.open("/", os.O_RDONLY)
    try:
        os.link(source, target, src_dir_fd=root, follow_symlinks=True)
    finally:
        os.close(root)


def existing_mode(path):
    """Permission bits of the regular file at ``path``, or None (so a replaced file keeps its mode)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else None


@contextlib.contextmanager
def atomic_file(path, *, overwrite=True, suffix=".tmp"):
    """Yield a temporary file name next to ``path``; move it onto ``path`` when the block succeeds.

    The file is synced before it is published and removed when the block
    raises, so a crash never leaves half a file at ``path``; on Linux the
    temporary file is unnamed (see :class:`TempFile`), so even SIGKILL leaves
    nothing.  New files get ``0o666`` less the umask, as ``np.save`` gives;
    a replaced file keeps its mode.

    Raises
    ------
    FileExistsError
        ``overwrite=False`` and ``path`` exists (checked atomically at publication).
    """
    path = os.fspath(path)
    if path.startswith("/proc/self/fd/"):  # already an unnamed temporary file: write it directly
        yield path
        return
    tmp = TempFile(os.path.dirname(os.path.abspath(path)), suffix=suffix,
                   mode=existing_mode(path) if overwrite else None)
    try:
        yield tmp.path
        tmp.publish(path, overwrite=overwrite)
    finally:
        tmp.close()


def _publish(tmp, path, overwrite):
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic, and fails if path exists
    except FileExistsError:
        raise
    except OSError:  # file systems without hard links
        if os.path.exists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_npz(path, *, kind, config, state, overwrite=True):
    """Write ``config`` (JSON) and ``state`` arrays to ``path`` atomically (see :func:`atomic_file`).

    Raises
    ------
    ValueError
        A state array holds NaN or Inf: :func:`read_npz` would refuse the
        file, so it is not written and the previous file stays.
    """
    arrays = {f"state/{k}": np.asarray(v) for k, v in state.items()}
    bad = sorted(k for k, v in state.items()
                 if np.asarray(v).dtype.kind in "fc" and not np.all(np.isfinite(np.asarray(v))))
    if bad:
        raise ValueError(f"not writing {os.fspath(path)}: state {bad} contains NaN or Inf (a diverged or "
                         "corrupted quantizer would not load again); the previous file is unchanged")
    arrays["format"] = np.array(FORMAT)
    arrays["format_version"] = np.array(FORMAT_VERSION)
    arrays["kind"] = np.array(kind)
    arrays["config"] = np.array(json.dumps(config, sort_keys=True))
    with atomic_file(path, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


#: Bounds of the strict reader: text members, JSON nesting, configuration integers.
MAX_TEXT_CHARS = 1 << 16
MAX_JSON_DEPTH = 8
MAX_CONFIG_INT = 1 << 31
#: A compressed member may declare at most this many times its stored size.
MAX_COMPRESSION_RATIO = 64
#: A configuration may imply at most this many times the values its file holds (plus the slack).
MAX_IMPLIED_RATIO = 64
MAX_IMPLIED_SLACK = 1 << 24
#: Kinds whose files store their codebooks (FSQ/LFQ codebooks are implicit, so their size says nothing).
STORED_CODEBOOK_KINDS = frozenset({"VectorQuantizer", "ResidualQuantizer", "ProductQuantizer"})
_HEADER_MEMBERS = ("format", "format_version", "kind", "config")


def damaged(path, problem):
    """The one error every unreadable vqcore file raises."""
    return ValueError(f"{os.fspath(path)}: not a vqcore file / damaged: {problem}")


class VqcoreFile:
    """A vqcore ``.npz`` file opened for strict, bounded reading.

    Opening reads only the zip directory and the small members ``format``,
    ``format_version``, ``kind`` and ``config``; every member's ``.npy``
    header is checked against its size in the archive before any array data
    is read, so no file can make the reader allocate more than it holds.
    Pickled (object) members are refused; numpy's advice to enable pickle is
    never shown.

    Parameters
    ----------
    path : str or os.PathLike

    Attributes
    ----------
    kind : str
    config : dict
    shapes : dict of str to tuple
        Declared shape of every ``state/`` member, by state key.

    Raises
    ------
    ValueError
        ``"<path>: not a vqcore file / damaged: <why>"``, or a newer format
        version.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise damaged(self.path, "is a directory")
        with open(self.path, "rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise ValueError(f"{self.path}: not a vqcore codebook file: it is a .npy array; quantizer files are "
                             "the .npz files that save() and vqcore fit write")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
            raise damaged(self.path, f"not a readable .npz file ({exc})") from None
        try:
            self._members = self._check_members()
            self._read_header()
        except BaseException:
            self._zip.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close the archive."""
        self._zip.close()

    def _check_members(self):
        """Map member name -> (shape, dtype, info) from every header, checking sizes."""
        members = {}
        for info in self._zip.infolist():
            name = info.filename
            if not name.endswith(".npy") or not (name[:-4] in _HEADER_MEMBERS or name.startswith("state/")):
                raise damaged(self.path, f"unexpected member {name!r}")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise damaged(self.path, f"member {name!r} uses an unsupported compression")
            if info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1 << 14):
                raise damaged(self.path, f"member {name!r} declares {info.file_size} bytes in "
                                         f"{info.compress_size} stored bytes")
            members[name[:-4]] = (*self._header(name, info), info)
        missing = [m for m in _HEADER_MEMBERS if m not in members]
        if missing:
            raise damaged(self.path, f"no {', '.join(missing)} member (no vqcore format marker)")
        return members

    def _header(self, name, info):
        try:
            with self._zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = reader(f, max_header_size=4096)
                header_bytes = f.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError, TypeError) as exc:
            raise damaged(self.path, f"member {name!r} has no valid .npy header ({exc})") from None
        if dtype.hasobject:
            raise damaged(self.path, f"member {name!r} holds Python objects; vqcore files hold numbers and text")
        count = 1
        for extent in shape:
            count *= int(extent)
        if header_bytes + count * dtype.itemsize != info.file_size:
            raise damaged(self.path, f"member {name!r} declares shape {shape} of {dtype} "
                                     f"({count * dtype.itemsize} bytes) but holds {info.file_size - header_bytes}")
        return tuple(shape), dtype

    def _read(self, key):
        shape, dtype, info = self._members[key]
        try:
            with self._zip.open(info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise damaged(self.path, f"member {key!r} cannot be read ({exc})") from None

    def _text(self, key):
        shape, dtype, _ = self._members[key]
        if shape != () or dtype.kind not in "US" or dtype.itemsize > 4 * MAX_TEXT_CHARS:
            raise damaged(self.path, f"member {key!r} is not a short text (shape {shape}, dtype {dtype})")
        return str(self._read(key))

    def _read_header(self):
        if self._text("format") != FORMAT:
            raise damaged(self.path, "no vqcore format marker")
        shape, dtype, _ = self._members["format_version"]
        if shape != () or dtype.kind not in "iu":
            raise damaged(self.path, f"format_version has shape {shape} and dtype {dtype}")
        version = int(self._read("format_version"))
        if version > FORMAT_VERSION or version < 1:
            raise ValueError(f"{self.path} has format version {version}; this vqcore reads 1 to {FORMAT_VERSION}"
                             + (" — upgrade vqcore" if version > FORMAT_VERSION else ""))
        self.kind = self._text("kind")
        self.config = parse_config(self._text("config"), self.path)
        self.shapes = {k[len("state/"):]: v[0] for k, v in self._members.items() if k.startswith("state/")}
        self._check_implied_size()

    def _check_implied_size(self):
        """A configuration must not imply far more memory than the file's arrays hold.

        Building the quantizer allocates about ``codebook_size * dim`` values
        before its state is checked; a saved quantizer stores codebooks of that
        order, so a small file whose configuration claims a huge codebook is
        damaged or hostile, and is refused here, before anything is allocated.
        """
        k, dim = self.config.get("codebook_size"), self.config.get("dim")
        if self.kind not in STORED_CODEBOOK_KINDS or not (isinstance(k, int) and isinstance(dim, int)):
            return
        held = sum(int(np.prod(shape, dtype=np.int64)) for shape in self.shapes.values())
        if k * dim > MAX_IMPLIED_RATIO * held + MAX_IMPLIED_SLACK:
            raise damaged(self.path, f"its configuration (codebook_size={k}, dim={dim}) implies {k * dim} values "
                                     f"but the file holds {held}")

    def read_state(self, expected=None):
        """Every ``state/`` array, after checking declared shapes against ``expected``.

        Parameters
        ----------
        expected : dict of str to tuple, optional
            The shapes the configuration implies; a member declaring another
            shape, or an unexpected member, is refused before any data is read.
        """
        if expected is not None:
            problems = [f"{k} declares shape {shape}, expected {tuple(expected[k])}" if k in expected
                        else f"unexpected state {k!r}" for k, shape in self.shapes.items()
                        if k not in expected or tuple(expected[k]) != shape]
            if problems:
                raise damaged(self.path, "; ".join(problems) + " (does the configuration match the arrays?)")
        for key in self.shapes:
            dtype = self._members["state/" + key][1]
            if dtype.kind not in "fiub":
                raise damaged(self.path, f"state {key!r} has dtype {dtype}, expected numbers")
        return {key: self._read("state/" + key) for key in self.shapes}


def _json_depth(text):
    """Deepest nesting of ``[``/``{`` in JSON ``text`` (strings skipped), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped = not escaped and char == "\\"
            in_string = escaped or char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_config(text, path):
    """A file's JSON configuration: a flat-ish dict with bounded integers.

    Raises
    ------
    ValueError
        Not JSON, nested deeper than :data:`MAX_JSON_DEPTH`, not an object, or
        an integer beyond :data:`MAX_CONFIG_INT` (no real quantizer is that large).
    """
    if _json_depth(text) > MAX_JSON_DEPTH:
        raise damaged(path, f"configuration nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise damaged(path, f"configuration is not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise damaged(path, f"configuration is a {type(config).__name__}, not an object")

    def check(value, where):
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, int) and abs(value) > MAX_CONFIG_INT:
            raise damaged(path, f"configuration {where}={value} is beyond any real quantizer "
                                f"(at most {MAX_CONFIG_INT})")
        for i, item in enumerate(value.values() if isinstance(value, dict) else
                                 value if isinstance(value, list) else ()):
            check(item, f"{where}[{i}]")

    for key, value in config.items():
        check(value, key)
    return config


def read_npz(path, *, kind, expected=None):
    """Read ``(config, state)`` from a file written by :func:`write_npz`, strictly (see :class:`VqcoreFile`).

    Parameters
    ----------
    path : str or os.PathLike
    kind : str
        The kind the caller reads; another kind is refused.
    expected : callable, optional
        ``expected(config)`` -> dict of state key to shape: checked against
        every member's declared shape before any array data is read.

    Raises
    ------
    ValueError
        Not a vqcore file or damaged, another kind of object, or a newer
        format version.
    """
    with VqcoreFile(path) as f:
        if f.kind != kind:
            raise ValueError(f"{f.path} holds a {f.kind}, not a {kind}")
        return f.config, f.read_state(None if expected is None else expected(f.config))


def read_kind(path):
    """The kind recorded in a vqcore file, reading only its small header members (strict, see :class:`VqcoreFile`)."""
    with VqcoreFile(path) as f:
        return f.kind


class OtherRankFailed(ValueError):
    """Raised on the healthy ranks of a collective write when another rank failed (same message)."""


def _share_errors(comm, error):
    """Raise on every rank if any rank's ``error`` is set: its own on the failing rank, the first elsewhere."""
    errors = comm.allgather_object(None if error is None else str(error))
    failed = [message for message in errors if message is not None]
    if failed:
        if error is not None:
            raise error
        raise OtherRankFailed(failed[0])


def npy_header(shape, dtype):
    """The bytes ``np.save`` writes before an array of ``shape`` and ``dtype``."""
    import io

    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(s) for s in shape)}
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # a header too long for format 1.0 (very many axes)
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


class RowsWriter:
    """Rows written into a ``.npy`` file at their offsets, published atomically when every rank is done.

    Use :func:`open_rows_writer`; :meth:`write` takes this rank's rows by their
    local index.  Memory stays bounded by the blocks given (``pwrite``, no map).
    """

    def __init__(self, fd, data_offset, row_bytes, first_row, n_rows, dtype, row_shape):
        self.fd, self.data_offset, self.row_bytes = fd, data_offset, row_bytes
        self.first_row, self.n_rows, self.dtype, self.row_shape = first_row, n_rows, dtype, row_shape
        self.bytes_written = 0

    def write(self, start, block):
        """Write ``block`` as this rank's rows ``start, start + len(block)``.

        Raises
        ------
        ValueError
            Rows outside this rank's share, or rows of another shape.
        """
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape or start < 0 or start + len(block) > self.n_rows:
            raise ValueError(f"rows {start}..{start + len(block)} of shape {block.shape[1:]} do not fit this rank's "
                             f"{self.n_rows} rows of shape {self.row_shape}")
        view = memoryview(block.reshape(-1).view(np.uint8))
        position = self.data_offset + (self.first_row + start) * self.row_bytes
        while len(view):
            done = os.pwrite(self.fd, view, position)
            view, position = view[done:], position + done
        self.bytes_written += block.nbytes


@contextlib.contextmanager
def open_rows_writer(path, n_rows, row_shape, dtype, *, comm=None, overwrite=False, shared=True):
    """Write one ``.npy`` file from the rows of every rank (or one file per rank), atomically.

    A collective call: every rank of ``comm`` enters and leaves the block.
    With ``shared=True`` rank 0 creates a temporary file in ``path``'s
    directory holding the ``.npy`` header for the rows of all ranks (in rank
    order) and the final size; each rank writes its rows at its offset; when
    every rank's block succeeded, rank 0 syncs the file and renames it onto
    ``path``.  With ``shared=False`` each rank writes its own ``path`` (which
    should differ by rank), published only when every rank succeeded.

    If the block raises on any rank, no rank publishes, the temporary file is
    removed and every rank raises: the failing rank its own exception, the
    others :class:`OtherRankFailed` with its message.  The bytes equal
    ``np.save`` of the concatenated rows.

    Temporary files: one process (or ``shared=False``) writes an unnamed file
    (Linux ``O_TMPFILE``), so even SIGKILL leaves nothing; ranks sharing a file
    must open it by name, so there it is a hidden ``.vqcore-*.npy`` file that
    only a killed job can leave behind (never a partial file at ``path``).

    Parameters
    ----------
    path : str or os.PathLike
    n_rows : int
        This rank's rows.
    row_shape : tuple
        Shape of one row (``()`` for one number per row).
    dtype : numpy dtype
    comm : vqcore.comm.Communicator, optional
    overwrite : bool
        Replace an existing file (keeping its permissions); otherwise an
        existing file is an error, checked again atomically at publication.
    shared : bool

    Yields
    ------
    RowsWriter
    """
    from .comm import resolve_comm

    comm = resolve_comm(comm)
    path = os.fspath(path)
    dtype, row_shape = np.dtype(dtype), tuple(int(s) for s in row_shape)
    layouts = comm.allgather_object((int(n_rows), row_shape, dtype.str))
    if len({layout[1:] for layout in layouts}) > 1:
        raise ValueError(f"ranks write rows of different shapes or dtypes: {[layout[1:] for layout in layouts]}")
    counts = [layout[0] for layout in layouts]
    owner = comm.rank == 0 or not shared
    total, first = (sum(counts), sum(counts[:comm.rank])) if shared else (int(n_rows), 0)
    header = npy_header((total,) + row_shape, dtype)
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    tmp, name, error = None, None, None
    if owner:
        try:
            if not overwrite and os.path.lexists(path):
                raise FileExistsError(f"{path} already exists; pass overwrite=True (--force) to replace it")
            tmp = TempFile(os.path.dirname(os.path.abspath(path)), suffix=".npy",
                           mode=existing_mode(path) if overwrite else None, named=shared and comm.size > 1)
            os.pwrite(tmp.fd, header, 0)
            os.ftruncate(tmp.fd, len(header) + total * row_bytes)
            name = tmp.named_path
        except (OSError, ValueError) as exc:
            error = exc
            if tmp is not None:
                tmp.close()
    try:
        _share_errors(comm, error)
        fd = tmp.fd if owner else None
        if not owner:  # the other ranks open rank 0's file by name
            name = comm.allgather_object(name)[0]
            fd = os.open(name, os.O_WRONLY)
        elif shared and comm.size > 1:
            comm.allgather_object(name)
        writer = RowsWriter(fd, len(header), row_bytes, first, int(n_rows), dtype, row_shape)
        error = None
        try:
            yield writer
            if not owner:
                os.fsync(fd)
        except BaseException as exc:  # noqa: BLE001 -- every rank must learn of it before anyone publishes
            error = exc
        finally:
            if not owner:
                os.close(fd)
        _share_errors(comm, error)
        error = None
        if owner:
            try:
                tmp.publish(path, overwrite=overwrite)
            except OSError as exc:
                error = exc
        _share_errors(comm, error)
    finally:
        if tmp is not None:
            tmp.close()
