"""Residual encoding kernels (``@jit`` only): greedy stages fused per block of rows; the beam search, all
stages per block of rows (encoding) or one stage over every row's beams (training)."""
import numpy as np
from numba import prange

from .._config import jit
from .search import finish_row, float_key, prepare_row, row_bound, row_scratch, vector_row_code

#: Codes per block of the beam search's sequential candidate scan (one minimum per block).
SCAN_BLOCK = 16
#: Most scores per block of the candidate selection's first pass (one integer minimum per block); the
#: extensions' scores are padded to a multiple of it.
SELECT_BLOCK = 64

#: A float32 key's sign shift and exponent-and-mantissa mask (see ``float_key``).
_SIGN_SHIFT = np.int32(31)
_MAGNITUDE = np.int32(0x7FFFFFFF)


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


@jit(inline="always")
def _scan_extensions(dots, values, picks):
    """The ``len(values)`` smallest of ``dots`` (ties: lowest index first), ascending; returns their count.

    The sequential definition: every score is offered in order, by blocks
    whose minimum, once the buffer is full, skips blocks no better than its
    worst.  Used for small selections and for scores that could overflow.
    """
    total = dots.shape[0]
    keep = values.shape[0]
    count = 0
    for c0 in range(0, total, SCAN_BLOCK):
        c1 = min(c0 + SCAN_BLOCK, total)
        low = dots[c0]
        for c in range(c0 + 1, c1):
            low = min(low, dots[c])
        if count == keep and low >= values[keep - 1]:
            continue
        for c in range(c0, c1):
            if count < keep or dots[c] < values[keep - 1]:
                count = _insert(values, picks, count, dots[c], c)
    return count


@jit(inline="always")
def _select_extensions(dots, keys, total, values, picks, low, low_bits, found):
    """What :func:`_scan_extensions` selects from ``dots[:total]``, in vectorised passes for finite scores.

    Blocks of up to ``SELECT_BLOCK`` scores get their minimum from an
    integer minimum over ``keys`` (the scores' bits, a view of ``dots``,
    padded with +inf to whole blocks).  The ``keep``-th smallest block
    minimum ``t`` has at least ``keep`` scores at or below it, so the
    selection lies among the scores ``<= t`` of the blocks whose minimum is
    at most ``t``: collected without branches in index order, then
    inserted.  Scratch: ``low`` (total / 8 + 1,) float32 and ``low_bits``,
    its int32 view; ``found`` (total,) int64.
    """
    keep = values.shape[0]
    block = 8
    while block < SELECT_BLOCK and total >= 4 * keep * block:
        block *= 2
    blocks = (total + block - 1) // block
    if blocks < keep:
        return _scan_extensions(dots[:total], values, picks)
    for i in range(blocks):
        smallest = _MAGNITUDE
        for c in range(i * block, (i + 1) * block):
            smallest = min(smallest, float_key(keys[c], _SIGN_SHIFT, _MAGNITUDE))
        low_bits[i] = float_key(smallest, _SIGN_SHIFT, _MAGNITUDE)
    count = 0
    for i in range(blocks):
        count = _insert(values, picks, count, low[i], i)
    bound = np.float32(values[keep - 1])
    hits = 0
    for i in range(blocks):
        if low[i] <= bound:
            for c in range(i * block, min(total, (i + 1) * block)):
                found[hits] = c
                hits += dots[c] <= bound
    count = 0
    for m in range(hits):
        count = _insert(values, picks, count, dots[found[m]], found[m])
    return count


@jit(inline="always")
def _step_scratch(beam_size, k):
    """Scratch of :func:`_step_row` for up to ``beam_size`` beams, before and after, of ``k`` codes (one per thread)."""
    padded = -(-beam_size * k // SELECT_BLOCK) * SELECT_BLOCK
    dots = np.empty(padded, dtype=np.float32)
    low = np.empty(padded // 8 + 1, dtype=np.float32)
    return (dots, dots.view(np.int32), low, low.view(np.int32), np.empty(padded, dtype=np.int64),
            np.empty(2 * beam_size), np.empty(2 * beam_size, dtype=np.int64))


@jit(inline="always")
def _step_row(x_dot, cross, codes, error, c_sq, residual, codebook, finite, scratch,
              new_residual, new_error, parent, chosen):
    """One stage of the beam search for one row: every extension of its ``b`` beams scored, the best kept.

    ``x_dot`` (k,) holds input . code; ``cross`` (stage, k, k) the earlier
    stages' code . code products; ``codes`` (b, >= stage), ``error`` (b,)
    and ``residual`` (b, d) describe the beams.  The ``2 * width`` best
    extensions by a float32 score (at most ``b * k``) are re-scored exactly
    (float64 residual norms) and the best ``width = len(new_error)``
    written to the OUT rows, in ascending order (``parent``: beam extended,
    ``chosen``: code added).  ``finite``: no score can overflow, so the
    vectorised selection applies.  ``scratch``: :func:`_step_scratch`.
    """
    dots, keys, low, low_bits, found, values, picks = scratch
    k = x_dot.shape[0]
    b, stage = error.shape[0], cross.shape[0]
    d = residual.shape[1]
    width = new_error.shape[0]
    total = b * k
    keep = min(2 * width, total)
    two = np.float32(2.0)  # float32 literals keep the passes in float32 (vectorised)
    for j in range(b):
        # float32 scores of every code for this beam, in vectorised passes
        base = np.float32(error[j])
        beam_dots = dots[j * k:(j + 1) * k]
        for c in range(k):
            beam_dots[c] = base + (c_sq[c] - two * x_dot[c])
        for s in range(stage):  # r . c = x . c - sum of the earlier codes' products (contiguous rows)
            earlier = cross[s, codes[j, s]]
            for c in range(k):
                beam_dots[c] += two * earlier[c]
    if finite:
        dots[total:-(-total // SELECT_BLOCK) * SELECT_BLOCK] = np.inf
        count = _select_extensions(dots, keys, total, values[:keep], picks[:keep], low, low_bits, found)
    else:
        count = _scan_extensions(dots[:total], values[:keep], picks[:keep])
    # exact float64 scores of the kept extensions; the best ``width`` survive, in order
    for m in range(count):
        j, c = picks[m] // k, picks[m] % k
        total = 0.0
        for f in range(d):
            diff = residual[j, f] - codebook[c, f]
            total += diff * diff
        values[m] = total
    kept = 0
    for m in range(count):
        kept = _insert(new_error, parent, kept, values[m], picks[m])  # parent holds flat indices until unpacked
    for w in range(width):
        flat = parent[w]
        j, c = flat // k, flat % k
        parent[w] = j
        chosen[w] = c
        for f in range(d):
            new_residual[w, f] = residual[j, f] - codebook[c, f]


@jit(parallel=True)
def beam_extend(z, codes_t, cross, c_sq, codebook, codes, error, residual, finite, rows, nthreads, write32,
                new_codes, new_error, new_residual, residual32):
    """One stage of the beam search for every row, keeping every row's beams (training); blocks of rows.

    One GEMM per block of rows gives input . code (in a per-thread buffer);
    each row's beams are then extended by :func:`_step_row` and written
    with their codes (the parent's followed by the new one).

    Parameters
    ----------
    z : (n, d) float32, C-contiguous, the input                     # IN
    codes_t : (d, k) float32, this stage's codes transposed          # IN
    cross : (i, k, k) float32, earlier stages' codes . code          # IN
    c_sq : (k,) float32, squared norm of each code                   # IN
    codebook : (k, d) float32                                        # IN
    codes : (n, b, i) int64, codes each beam chose so far            # IN
    error : (n, b) float64, squared norm of each beam's residual     # IN
    residual : (n, b, d) float64                                     # IN
    finite : bool, no float32 score can overflow                     # IN
    rows, nthreads : int                                             # IN block rows, threads
    write32 : bool, also fill ``residual32``                         # IN
    new_codes : (n, width, i + 1) int64                              # OUT
    new_error : (n, width) float64, exact, ascending                 # OUT
    new_residual : (n, width, d) float64                             # OUT
    residual32 : (n * width, d) float32, ``new_residual`` rounded    # OUT if ``write32``
    """
    n, b = error.shape
    k, d = codebook.shape
    width, stage = new_error.shape[1], cross.shape[0]
    nblocks = (n + rows - 1) // rows
    for t in prange(nthreads):
        x_dot = np.empty((rows, k), dtype=np.float32)
        scratch = _step_scratch(max(b, width), k)
        parent = np.empty(width, dtype=np.int64)
        chosen = np.empty(width, dtype=np.int64)
        for blk in range(t, nblocks, nthreads):
            start = blk * rows
            m = min(n, start + rows) - start
            np.dot(z[start:start + m], codes_t, x_dot[:m])
            for r in range(m):
                row = start + r
                _step_row(x_dot[r], cross, codes[row], error[row], c_sq, residual[row], codebook, finite, scratch,
                          new_residual[row], new_error[row], parent, chosen)
                for w in range(width):
                    new_codes[row, w, :stage] = codes[row, parent[w]]
                    new_codes[row, w, stage] = chosen[w]
                    if write32:
                        for f in range(d):
                            residual32[row * width + w, f] = np.float32(new_residual[row, w, f])


@jit(parallel=True)
def beam_encode(z, codes_t, cross, c_sq, codebooks, beam_size, finite, rows, nthreads, out):
    """Beam search over all stages, one block of rows at a time; the best beam's codes per row.

    One GEMM per block gives input . code for every stage; each row then
    runs all its stages (:func:`_step_row`) on beams held in small
    per-thread buffers, so nothing of size n is written but the output.

    Parameters
    ----------
    z : (n, d) float32, C-contiguous                                # IN
    codes_t : (d, stages * k) float32, every stage's codes transposed  # IN
    cross : (stages * (stages - 1) / 2, k, k) float32               # IN stage i's tables ``C_s @ C_i.T`` for
                                                                    #    s < i, from row i (i - 1) / 2
    c_sq : (stages, k) float32, squared norm of each code           # IN
    codebooks : (stages, k, d) float32                              # IN
    beam_size : int                                                 # IN
    finite : bool, no float32 score can overflow                    # IN
    rows, nthreads : int                                            # IN block rows, threads
    out : (n, stages) int64                                         # OUT codes of the best beam
    """
    n, d = z.shape
    stages, k = codebooks.shape[0], codebooks.shape[1]
    nblocks = (n + rows - 1) // rows
    for t in prange(nthreads):
        x_dot = np.empty((rows, stages * k), dtype=np.float32)
        scratch = _step_scratch(beam_size, k)
        residual = np.empty((2, beam_size, d))
        error = np.empty((2, beam_size))
        codes = np.empty((2, beam_size, stages), dtype=np.int64)
        parent = np.empty(beam_size, dtype=np.int64)
        chosen = np.empty(beam_size, dtype=np.int64)
        for blk in range(t, nblocks, nthreads):
            start = blk * rows
            m = min(n, start + rows) - start
            np.dot(z[start:start + m], codes_t, x_dot[:m])
            for r in range(m):
                total = 0.0
                for f in range(d):
                    residual[0, 0, f] = z[start + r, f]
                    total += residual[0, 0, f] * residual[0, 0, f]
                error[0, 0] = total
                b = 1
                for i in range(stages):
                    old, new = i % 2, 1 - i % 2
                    width = min(beam_size, b * k)
                    _step_row(x_dot[r, i * k:(i + 1) * k], cross[i * (i - 1) // 2:i * (i + 1) // 2], codes[old, :b],
                              error[old, :b], c_sq[i], residual[old, :b], codebooks[i], finite, scratch,
                              residual[new, :width], error[new, :width], parent[:width], chosen[:width])
                    for w in range(width):
                        codes[new, w, :i] = codes[old, parent[w], :i]
                        codes[new, w, i] = chosen[w]
                    b = width
                out[start + r] = codes[stages % 2, 0]


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
        scratch = row_scratch(k, block, np.zeros(0, dtype=np.int32))
        indices = np.empty(rows, dtype=np.int64)
        dist = np.empty(rows)
        unused = np.zeros(1, dtype=np.int32)
        for b in range(t, nblocks, nthreads):
            start = b * rows
            m = min(n, start + rows) - start
            residual[:m] = z[start:start + m]
            for r in range(m):
                norms[r], _, statuses[r] = _prepare(residual, r, mus[0], scales[0], limit, vblock[r])
            for i in range(stages):
                codebook, scale = codebooks[i], scales[i]
                np.dot(vblock[:m], operands[i], block[:m])
                for r in range(m):
                    bound = row_bound(coefs[i], norms[r], 0.0, 0.0)
                    if statuses[r] == 0:
                        j, _, _ = vector_row_code(residual, r, codebook, block[r], biases[i], bound, scale, scale,
                                                  False, scratch)
                    else:  # beyond float32's range or not finite: the generic path decides
                        finish_row(residual, r, codebook, block[r], biases[i], bound, scale, statuses[r], scale,
                                   False, indices, dist, unused, False, scratch)
                        j = indices[r]
                    codes[start + r, i] = j
                    if j >= 0:  # a row that cannot be ranked keeps its residual and fails again later
                        for f in range(d):
                            residual[r, f] -= codebook[j, f]
                    if i + 1 < stages:  # the next stage's scaled row while this one is in cache
                        norms[r], _, statuses[r] = _prepare(residual, r, mus[i + 1], scales[i + 1], limit, vblock[r])
