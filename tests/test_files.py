"""vqcore's files: one strict, bounded reader; atomic writes that a kill cannot tear; permissions like np.save."""
from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import vqcore
from vqcore import state
from vqcore.io import write_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def saved(tmp_path):
    quantizer = vqcore.VectorQuantizer(8, 16, kmeans_init=True, seed=0)
    quantizer.partial_fit(np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32))
    path = tmp_path / "q.npz"
    quantizer.save(path)
    return quantizer, path


def members(path):
    """The arrays of a vqcore file, read with numpy (the test's own reference reader)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_zip(path, entries, compression=zipfile.ZIP_STORED):
    """A zip of ``name -> bytes`` (hand-made members, e.g. headers that lie)."""
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, payload in entries.items():
            archive.writestr(name, payload)


def vqcore_entries(path, **replace):
    """The members of a saved file as ``name.npy -> bytes``, some replaced."""
    entries = {f"{k}.npy": npy_bytes(v) for k, v in members(path).items()}
    entries.update(replace)
    return entries


def read_strict(path):
    with state.VqcoreFile(path) as f:
        return f.config, f.read_state()


def test_a_saved_file_reads_back(saved):
    quantizer, path = saved
    config, arrays = read_strict(path)
    assert config == quantizer.config
    expected = quantizer.state_dict()
    assert arrays.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(arrays[key], expected[key])


@pytest.mark.parametrize("damage", ["truncated", "flipped", "random", "empty", "npy"])
def test_damaged_files_raise_value_error_without_pickle_advice(saved, tmp_path, damage):
    _, path = saved
    raw = path.read_bytes()
    bad = tmp_path / "bad.npz"
    if damage == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped":  # a byte inside the codebook's data: the CRC check fails
        with zipfile.ZipFile(path) as archive:
            start = archive.getinfo("state/_codebook.embed.npy").header_offset
        name_length, extra_length = struct.unpack("<HH", raw[start + 26:start + 30])
        flipped = bytearray(raw)
        flipped[start + 30 + name_length + extra_length + 200] ^= 0xFF
        bad.write_bytes(bytes(flipped))
    elif damage == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        np.save(tmp_path / "bad.npy", np.zeros((4, 8), np.float32))
        bad = tmp_path / "bad.npy"
    for read in (read_strict, vqcore.VectorQuantizer.load):
        with pytest.raises(ValueError) as caught:
            read(bad)
        message = str(caught.value)
        assert "allow_pickle" not in message
        expected = "not a vqcore codebook file" if damage == "npy" else "not a vqcore file / damaged"
        assert expected in message and str(bad) in message, message


def test_a_member_declaring_more_than_it_holds_is_refused_before_reading(saved, tmp_path):
    _, path = saved
    # a header declaring 2**40 floats, followed by 16 bytes
    header = state.npy_header((2**40,), np.float32)
    bad = tmp_path / "huge.npz"
    write_zip(bad, vqcore_entries(path, **{"state/_codebook.embed.npy": header + bytes(16)}))
    tracemalloc.start()
    with pytest.raises(ValueError, match="declares shape"):
        read_strict(bad)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


def test_a_compression_bomb_is_refused_before_decompressing(saved, tmp_path):
    _, path = saved
    zeros = npy_bytes(np.zeros(1 << 22, np.float32))  # 16 MB of zeros deflate to ~16 kB
    bad = tmp_path / "bomb.npz"
    write_zip(bad, vqcore_entries(path, **{"state/_codebook.embed.npy": zeros}), zipfile.ZIP_DEFLATED)
    assert bad.stat().st_size < 1 << 17
    tracemalloc.start()
    with pytest.raises(ValueError, match="declares"):
        read_strict(bad)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


def test_expected_shapes_are_checked_before_any_data_is_read(saved, tmp_path):
    quantizer, path = saved
    shapes = {k: v.shape for k, v in quantizer.state_dict().items()}
    config, arrays = state.read_npz(path, kind="VectorQuantizer", expected=lambda config: shapes)
    assert arrays.keys() == shapes.keys()
    wrong = dict(shapes, **{"_codebook.embed": (1, 4096, 65536)})
    with pytest.raises(ValueError, match=r"_codebook.embed declares shape \(1, 16, 8\), expected \(1, 4096, 65536\)"):
        state.read_npz(path, kind="VectorQuantizer", expected=lambda config: wrong)


@pytest.mark.parametrize("case", ["nested", "huge-int", "not-object", "extra-member", "objects", "no-marker"])
def test_hostile_headers_are_refused(saved, tmp_path, case):
    _, path = saved
    bad = tmp_path / "bad.npz"
    if case == "nested":
        replace = {"config.npy": npy_bytes(np.array("[" * 5000 + "]" * 5000))}
        fragment = "nested deeper"
    elif case == "huge-int":
        config = json.loads(str(members(path)["config"]))
        config["codebook_size"] = 2**40
        replace = {"config.npy": npy_bytes(np.array(json.dumps(config)))}
        fragment = "codebook_size=1099511627776"
    elif case == "not-object":
        replace = {"config.npy": npy_bytes(np.array("[1, 2]"))}
        fragment = "not an object"
    elif case == "extra-member":
        replace = {"payload.npy": npy_bytes(np.zeros(3))}
        fragment = "unexpected member 'payload.npy'"
    elif case == "objects":
        replace = {"state/x.npy": state.npy_header((1,), np.dtype(object)) + bytes(8)}
        fragment = "Python objects"
    else:
        replace = {"format.npy": npy_bytes(np.array("other"))}
        fragment = "no vqcore format marker"
    write_zip(bad, vqcore_entries(path, **replace))
    with pytest.raises(ValueError) as caught:
        read_strict(bad)
    assert fragment in str(caught.value) and "not a vqcore file / damaged" in str(caught.value)
    assert "allow_pickle" not in str(caught.value)


def test_save_refuses_non_finite_state_and_keeps_the_previous_file(saved):
    quantizer, path = saved
    before = path.read_bytes()
    poisoned = {k: v.copy() for k, v in quantizer.state_dict().items()}
    poisoned["_codebook.embed"][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"_codebook.embed.*NaN or Inf"):
        state.write_npz(path, kind="VectorQuantizer", config=quantizer.config, state=poisoned)
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".vqcore-")]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_honour_the_umask_like_np_save(tmp_path, umask):
    old = os.umask(umask)
    try:
        np.save(tmp_path / "reference.npy", np.zeros(3))
        write_rows(tmp_path / "rows.npy", np.zeros((3, 2)))
        vqcore.VectorQuantizer(4, 2).save(tmp_path / "q.npz")
    finally:
        os.umask(old)
    expected = (tmp_path / "reference.npy").stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    assert (tmp_path / "rows.npy").stat().st_mode & 0o777 == expected
    assert (tmp_path / "q.npz").stat().st_mode & 0o777 == expected


def test_overwriting_keeps_the_existing_mode(tmp_path):
    target = tmp_path / "rows.npy"
    write_rows(target, np.zeros((3, 2)))
    os.chmod(target, 0o640)
    write_rows(target, np.ones((4, 2)), overwrite=True)
    assert target.stat().st_mode & 0o777 == 0o640
    np.testing.assert_array_equal(np.load(target), np.ones((4, 2)))
    vqcore.VectorQuantizer(4, 2).save(tmp_path / "q.npz")
    os.chmod(tmp_path / "q.npz", 0o604)
    vqcore.VectorQuantizer(4, 3).save(tmp_path / "q.npz")
    assert (tmp_path / "q.npz").stat().st_mode & 0o777 == 0o604


@pytest.mark.parametrize("rows", [np.arange(12, dtype=np.uint16).reshape(6, 2), np.zeros((0, 3, 2), np.float32),
                                  np.arange(5, dtype=np.int64)])
def test_write_rows_on_one_process_is_np_save(tmp_path, rows):
    write_rows(tmp_path / "a.npy", rows)
    np.save(tmp_path / "b.npy", rows)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()


def test_write_rows_refuses_to_replace_without_overwrite(tmp_path):
    (tmp_path / "a.npy").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_rows(tmp_path / "a.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="at least one axis"):
        write_rows(tmp_path / "b.npy", np.float32(1))
    assert (tmp_path / "a.npy").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


def test_a_failing_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with state.open_rows_writer(tmp_path / "a.npy", 4, (2,), np.float32) as out:
            out.write(0, np.ones((2, 2)))
            raise RuntimeError("stop")
    with pytest.raises(ValueError, match="do not fit"):
        with state.open_rows_writer(tmp_path / "a.npy", 4, (2,), np.float32) as out:
            out.write(3, np.ones((2, 2)))
    assert list(tmp_path.iterdir()) == []


KILLED_WRITER = """
import os, signal, sys
import numpy as np
from vqcore.state import atomic_file
with atomic_file(sys.argv[1]) as tmp, open(tmp, "wb") as f:
    f.write(b"x" * 1000000)
    f.flush()
    print("writing", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_during_a_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.npz"
    target.write_bytes(b"previous")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL and "writing" in result.stdout, result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]
    assert target.read_bytes() == b"previous"


def test_named_temporary_files_are_removed_on_failure(tmp_path):
    tmp = state.TempFile(str(tmp_path), suffix=".npy", named=True)
    assert Path(tmp.path).name.startswith(".vqcore-") and Path(tmp.path).exists()
    tmp.close()
    assert list(tmp_path.iterdir()) == []
    unnamed = state.TempFile(str(tmp_path))
    os.write(unnamed.fd, b"abc")
    assert list(tmp_path.iterdir()) == []  # no name until published
    unnamed.publish(str(tmp_path / "done"), overwrite=False)
    assert (tmp_path / "done").read_bytes() == b"abc"


def test_a_configuration_claiming_a_huge_codebook_is_refused_before_allocating(saved, tmp_path):
    _, path = saved
    config = json.loads(str(members(path)["config"]))
    config.update(dim=65536, codebook_size=4096)  # 1 GiB of float32 that a 5 kB file cannot hold
    bad = tmp_path / "claims.npz"
    write_zip(bad, vqcore_entries(path, **{"config.npy": npy_bytes(np.array(json.dumps(config)))}))
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"codebook_size=4096, dim=65536\) implies 268435456 values"):
        vqcore.VectorQuantizer.load(bad)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 22 and bad.stat().st_size < 10_000
