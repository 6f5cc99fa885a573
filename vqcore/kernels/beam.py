"""The beam search's inner step: score every extension of every beam, keep the best (``@jit`` only)."""
import numpy as np
from numba import prange

from .._config import jit

#: Codes per block of the beam search's candidate scan (one vector minimum per block).
SCAN_BLOCK = 16


@jit(inline="always")
def _insert(values, indices, count, value, index):
    """Insert ``(value, index)`` into the ascending prefix ``values[:count]`` (capacity len(values)).

    Equal values keep their order of arrival (the lower flat index first).
    Returns the new count.
    """
    capacity = values.shape[0]
    if count == capacity and value >= values[capacity - 1]:
        return count
    pos = count if count < capacity else capacity - 1
    while pos > 0 and values[pos - 1] > value:
        if pos < capacity:
            values[pos] = values[pos - 1]
            indices[pos] = indices[pos - 1]
        pos -= 1
    values[pos] = value
    indices[pos] = index
    return count + 1 if count < capacity else count


@jit(parallel=True)
def beam_step(x_dot, cross, codes, error, c_sq, residual, codebook, scratch_dot, scratch_value, scratch_index,
               new_residual, new_error, parent, chosen):
    """One stage of the beam search for every row.

    Parameters
    ----------
    x_dot : (n, k) float32, input . code                             # IN
    cross : (i, k_s, k) float32, earlier stages' codes . code        # IN
    codes : (n, b, i) int64, codes each beam chose so far            # IN
    error : (n, b) float64, squared norm of each beam's residual     # IN
    c_sq : (k,) float32, squared norm of each code                   # IN
    residual : (n, b, d) float64                                     # IN
    codebook : (k, d) float32                                        # IN
    scratch_dot : (n, k) float32                                     # scratch: one beam's products
    scratch_value, scratch_index : (n, keep)                         # scratch: best approximate extensions
    new_residual : (n, width, d) float64                             # OUT
    new_error : (n, width) float64, exact, ascending                 # OUT
    parent, chosen : (n, width) int64, beam extended and code added  # OUT
    """
    n, k = x_dot.shape
    b, stage = codes.shape[1], codes.shape[2]
    d = residual.shape[2]
    width = new_error.shape[1]
    keep = scratch_value.shape[1]
    for row in prange(n):
        values = scratch_value[row]
        picks = scratch_index[row]
        dots = scratch_dot[row]
        count = 0
        two = np.float32(2.0)  # float32 literals keep the passes in float32 (vectorised)
        for j in range(b):
            # float32 scores of every code for this beam, in vectorised passes
            base = np.float32(error[row, j])
            for c in range(k):
                dots[c] = base + (c_sq[c] - two * x_dot[row, c])
            for s in range(stage):  # r . c = x . c - sum of the earlier codes' products (contiguous rows)
                earlier = cross[s, codes[row, j, s]]
                for c in range(k):
                    dots[c] += two * earlier[c]
            # scan blocks of codes: a vectorised block minimum skips most blocks once the buffer is full
            for c0 in range(0, k, SCAN_BLOCK):
                c1 = min(c0 + SCAN_BLOCK, k)
                low = dots[c0]
                for c in range(c0 + 1, c1):
                    low = min(low, dots[c])
                if count == keep and low >= values[keep - 1]:
                    continue
                for c in range(c0, c1):
                    if count < keep or dots[c] < values[keep - 1]:
                        count = _insert(values, picks, count, dots[c], j * k + c)
        # exact float64 scores of the kept extensions; the best ``width`` survive, in order
        for m in range(count):
            j, c = picks[m] // k, picks[m] % k
            total = 0.0
            for f in range(d):
                diff = residual[row, j, f] - codebook[c, f]
                total += diff * diff
            values[m] = total
        best = new_error[row]
        best_pick = parent[row]  # flat (beam, code) indices until unpacked below
        kept = 0
        for m in range(count):
            kept = _insert(best, best_pick, kept, values[m], picks[m])
        for w in range(width):
            flat = best_pick[w]
            j, c = flat // k, flat % k
            parent[row, w] = j
            chosen[row, w] = c
            for f in range(d):
                new_residual[row, w, f] = residual[row, j, f] - codebook[c, f]
