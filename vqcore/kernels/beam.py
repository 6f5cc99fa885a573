"""Residual encoding kernels (``@jit`` only): greedy stages fused per block of rows, and the beam search's step."""
import numpy as np
from numba import prange

from .._config import jit
from .search import exact_score, finish_row, prepare_row, row_bound

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


#: Mask of a float32's exponent and mantissa bits.
_MAGNITUDE = np.int32(0x7FFFFFFF)


@jit(inline="always")
def _float_key(bits):
    """An int32 that orders like the float32 with these bits (its own inverse): integer minima vectorise."""
    return bits ^ ((bits >> 31) & _MAGNITUDE)


@jit(inline="always")
def _prepare(residual, r, mu, scale, limit, out):
    """:func:`vqcore.kernels.search.prepare_row` for a euclidean row, in vectorised passes.

    Rows whose scaled values are all within ``limit`` (checked through their
    sum of squares, so the loop has no branch) take the fast path; the rest
    go through ``prepare_row`` and, when it flags them, get zeros.
    """
    raw = 0.0
    sq = 0.0
    for f in range(residual.shape[1]):
        v = (np.float64(residual[r, f]) - mu[f]) * scale
        w = out.dtype.type(v)
        out[f] = w
        raw += v * v
        sq += np.float64(w) * np.float64(w)
    if raw <= limit * limit:  # false for NaN/Inf too
        return np.sqrt(sq), scale, 0
    norm, row_scale, status = prepare_row(residual, r, mu, scale, False, limit, out)
    if status != 0:
        out[:] = 0  # keep the scores finite; finish_row answers the row by the direct form
    return norm, row_scale, status


@jit(inline="always")
def _nearest(residual, r, codebook, scores, bias, bound, scale, work, keys, iota):
    """:func:`vqcore.kernels.search.finish_row`'s code for a row on the fast path, in vectorised passes.

    The smallest score comes from an integer minimum over the scores' keys,
    and the codes within ``2 * bound`` of it are counted (with the sum of
    their indices, which is the index when only one is left) in a float
    pass; more than one is re-ranked in float64 as ``finish_row`` does.
    Scratch: ``work`` (k + 1,) float32 and ``keys``, its int32 view (made
    once: a view per call costs more than the pass); ``iota`` holds
    ``0 .. k - 1`` as float32 (read, not converted from the loop index, so
    the pass vectorises).
    """
    k = scores.shape[0]
    for j in range(k):
        work[j] = scores[j] + bias[j]
    smallest = _MAGNITUDE
    for j in range(k):
        smallest = min(smallest, _float_key(keys[j]))
    keys[k] = _float_key(smallest)
    threshold = np.float64(work[k]) + 2.0 * bound
    # rounded up past float32, as finish_row does, so the float32 comparison keeps every candidate
    cut = np.float32(threshold + abs(threshold) * 2.0 ** -20 + 2.0 ** -140)
    count = np.float32(0.0)
    index_sum = np.float32(0.0)  # exact: sums of at most k indices stay far below 2**24
    for j in range(k):
        inside = work[j] <= cut
        count += np.float32(1.0) if inside else np.float32(0.0)
        index_sum += iota[j] if inside else np.float32(0.0)
    if count == 1.0:
        return np.int64(index_sum)
    best, arg = np.inf, -1
    for j in range(k):
        if work[j] <= cut:
            v = exact_score(residual, r, codebook, j, scale, scale, False)
            if v < best:
                best, arg = v, j
    return arg


@jit(parallel=True)
def greedy_encode(z, codebooks, mus, scales, operands, biases, coefs, limit, rows, nthreads, codes):
    """Greedy residual encoding: at every stage the certified nearest code of the float32 residual.

    A block of rows keeps its residuals in a per-thread buffer through all
    stages, so one pass over the input replaces a search, a gather and a
    subtraction over the whole array per stage.  Each stage is the search
    of :func:`vqcore.kernels.search.certified_assign` (same scores, bound
    and float64 re-ranking, so the same codes) with the stage's prepared
    codebook, its per-row passes vectorised for the float32 engine.

    Parameters
    ----------
    z : (n, d) float32, C-contiguous                           # IN
    codebooks : (stages, k, d) float32                         # IN the codes as given
    mus : (stages, d) float64                                  # IN each codebook's centre
    scales : (stages,) float64                                 # IN each codebook's power-of-two scale
    operands : (stages, d, k) float32, ``-2 c'.T``            # IN
    biases : (stages, k) float32, ``|c'|^2``                   # IN
    coefs : (stages, 5) float64                                # IN error bound coefficients
    limit : float                                              # IN largest safe |scaled value|
    rows, nthreads : int                                       # IN block rows, threads
    codes : (n, stages) int64                                  # OUT code per stage; a negative one marks
                                                               #     a row that could not be ranked
    """
    n, d = z.shape
    stages, k = codebooks.shape[0], codebooks.shape[1]
    nblocks = (n + rows - 1) // rows
    for t in prange(nthreads):
        residual = np.empty((rows, d), dtype=z.dtype)
        vblock = np.empty((rows, d), dtype=np.float32)
        block = np.empty((rows, k), dtype=np.float32)
        norms = np.empty(rows)
        statuses = np.empty(rows, dtype=np.int8)
        work = np.empty(k + 1, dtype=np.float32)
        keys = work.view(np.int32)
        iota = np.arange(k).astype(np.float32)
        indices = np.empty(rows, dtype=np.int64)
        dist = np.empty(rows)
        unused = np.zeros(1, dtype=np.int32)
        for b in range(t, nblocks, nthreads):
            start = b * rows
            m = min(n, start + rows) - start
            residual[:m] = z[start:start + m]
            for i in range(stages):
                codebook, scale = codebooks[i], scales[i]
                for r in range(m):
                    norms[r], _, statuses[r] = _prepare(residual, r, mus[i], scale, limit, vblock[r])
                np.dot(vblock[:m], operands[i], block[:m])
                for r in range(m):
                    bound = row_bound(coefs[i], norms[r], 0.0, 0.0)
                    if statuses[r] == 0:
                        j = _nearest(residual, r, codebook, block[r], biases[i], bound, scale, work, keys, iota)
                    else:  # beyond float32's range or not finite: the generic path decides
                        finish_row(residual, r, codebook, block[r], biases[i], bound, scale, statuses[r], scale,
                                   False, indices, dist, unused, False)
                        j = indices[r]
                    codes[start + r, i] = j
                    if j >= 0:  # a row that cannot be ranked keeps its residual and fails again later
                        for f in range(d):
                            residual[r, f] -= codebook[j, f]
