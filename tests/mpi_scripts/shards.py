"""Helpers shared by the multi-process scripts (imported from the script's own folder)."""
import numpy as np


def expect_error(kind, fragment, fn, *args, **kwargs):
    """Call ``fn`` and check it raises ``kind`` with ``fragment`` in the message."""
    try:
        fn(*args, **kwargs)
    except kind as err:
        assert fragment in str(err), f"{fragment!r} not in {err}"
        return
    raise AssertionError(f"{fn.__name__} raised no {kind.__name__}")


def shard_rows(total, size):
    """Uneven rows per rank; with 2+ ranks, rank 1 holds none."""
    weights = np.array([(r % 3) + 1 for r in range(size)], dtype=float)
    if size > 1:
        weights[1] = 0
    rows = np.floor(weights / weights.sum() * total).astype(int)
    rows[0] += total - rows.sum()
    return rows


def my_shard(global_array, rows, rank, axis=0):
    """This rank's contiguous block of ``global_array`` along ``axis``."""
    start = int(rows[:rank].sum())
    block = np.take(global_array, np.arange(start, start + rows[rank]), axis=axis)
    return np.ascontiguousarray(block)
