"""State dicts and quantizer files: checks, conversion, atomic ``.npz`` writing."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile

import numpy as np

FORMAT = "vqcore"
FORMAT_VERSION = 1


def to_numpy(value):
    """A numpy copy of an array or a torch tensor (without importing torch)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.array(value, copy=True)


def check_state(state, expected, *, optional=(), strict=True):
    """Check keys and shapes of a state dict; return it with float32 values.

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
        Naming every missing, unexpected or mis-shaped key.
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
        if key in expected and tuple(value.shape) != tuple(expected[key]):
            problems.append(f"{key} has shape {tuple(value.shape)}, expected {tuple(expected[key])}")
        elif key in expected and value.dtype.kind not in "fiub":
            problems.append(f"{key} has dtype {value.dtype}, expected numbers")
        elif key in expected and value.size and not np.all(np.isfinite(value)):
            problems.append(f"{key} contains NaN or Inf")
    if problems:
        raise ValueError(
            "state dict does not fit this quantizer: " + "; ".join(problems)
            + " (is it from a layer with the same dim, codebook_size, heads and options?)"
        )
    return {k: v.astype(np.float32) for k, v in state.items() if k in expected}


@contextlib.contextmanager
def atomic_file(path, *, overwrite=True, suffix=".tmp"):
    """Yield a temporary file name next to ``path``; move it onto ``path`` when the block succeeds.

    The file is synced before it is published and removed when the block
    raises, so a crash never leaves half a file at ``path``.

    Raises
    ------
    FileExistsError
        ``overwrite=False`` and ``path`` exists (checked atomically at publication).
    """
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".vqcore-", suffix=suffix, dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _publish(tmp, path, overwrite)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def write_npz(path, *, kind, config, state):
    """Write ``config`` (JSON) and ``state`` arrays to ``path`` atomically (see :func:`atomic_file`)."""
    arrays = {f"state/{k}": np.asarray(v) for k, v in state.items()}
    arrays["format"] = np.array(FORMAT)
    arrays["format_version"] = np.array(FORMAT_VERSION)
    arrays["kind"] = np.array(kind)
    arrays["config"] = np.array(json.dumps(config, sort_keys=True))
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_npz(path, *, kind):
    """Read ``(config, state)`` from a file written by :func:`write_npz`.

    Raises
    ------
    ValueError
        Not a vqcore file, another kind of object, or a newer format version.
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            files = dict(data.items())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable .npz file ({exc})") from None
    if str(files.get("format", "")) != FORMAT or "format_version" not in files:
        raise ValueError(f"{path} is not a vqcore file (no vqcore format marker)")
    version = int(files["format_version"])
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {version}; this vqcore reads up to {FORMAT_VERSION} — upgrade vqcore")
    if str(files.get("kind", "")) != kind:
        raise ValueError(f"{path} holds a {files.get('kind')!s}, not a {kind}")
    config = json.loads(str(files["config"]))
    state = {k[len("state/"):]: v for k, v in files.items() if k.startswith("state/")}
    return config, state
