"""Certified exact nearest-code search, blocked.

A block of rows is centred and scaled (``v = (x - mu) * scale``) into a
per-thread buffer in the working precision, one GEMM writes
``-2 v . c'`` into a score block, and a fused pass over each row

1. finds the smallest score ``s_min`` (``bias + block``),
2. counts the codes within ``2 * E`` of it, where ``E`` bounds every score's
   rounding error for that row (see :func:`vqcore.search` for the bound),
3. when more than one code is left, re-ranks them by the distance computed
   directly in float64 from the given values, ties to the lowest index.

Rows whose scaled values leave the working precision's safe range are
searched by the float64 direct form over all codes, so no input is ever
answered from an overflowed score.  The full ``n x k`` matrix never exists.

Cosine uses the same pass without the shift (``mu = 0``), a per-row power-of-two
scale and ``-v . c'`` as the score (largest dot product first).
"""
import numpy as np
from numba import prange

from .._config import jit

# Largest score block per thread: big blocks amortise BLAS packing of the
# codebook, and the block is read right after the GEMM wrote it.
MAX_BLOCK_BYTES = 32 << 20
MAX_BLOCK_ROWS = 1024

#: ``indices`` marks a row with NaN/Inf input with this value.
ROW_NOT_FINITE = -1
#: ``indices`` marks a float64 row too far from the codebook to rank safely.
ROW_OUT_OF_RANGE = -2
FLOAT64_MAX = 1.7976931348623157e308
#: Largest scaled value whose square, summed over any realistic d, stays finite in float64.
DIRECT_LIMIT = 2.0 ** 500


def block_rows(n, k, d, itemsize, nthreads):
    """Rows per block: as many as fit the byte budget, but enough blocks for every thread."""
    rows = max(16, min(MAX_BLOCK_ROWS, MAX_BLOCK_BYTES // max(1, (k + d) * itemsize)))
    per_thread = -(-n // max(1, nthreads))
    return max(1, min(rows, per_thread))


@jit(exact=True)
def exact_score(x, r, codebook, j, scale, row_scale, cosine):
    """The reference score of code ``j`` for row ``r``, in float64 from the given values.

    Euclidean: ``sum(((x - c) * scale)**2)`` (the squared distance in scaled
    units).  Cosine: ``-sum((x * row_scale) * (c * scale))`` (smaller = closer
    in both cases).  Powers of two scale exactly, so the order is that of the
    unscaled values, without overflow.  Compiled without fast-math, also where
    the calling kernel has it: reassociated, ``(x * c) * (row_scale * scale)``
    underflows and overflows into 0 * inf = NaN for subnormal rows.
    """
    d = x.shape[1]
    # four independent sums (their order fixed): without fast-math one sum would be a chain of
    # dependent adds, 4 cycles each; these overlap, and the compiler may pair them into vectors
    a0 = a1 = a2 = a3 = 0.0
    quads = d - d % 4
    for f in range(0, quads, 4):
        a0 += _term(x, r, codebook, j, f, scale, row_scale, cosine)
        a1 += _term(x, r, codebook, j, f + 1, scale, row_scale, cosine)
        a2 += _term(x, r, codebook, j, f + 2, scale, row_scale, cosine)
        a3 += _term(x, r, codebook, j, f + 3, scale, row_scale, cosine)
    for f in range(quads, d):
        a0 += _term(x, r, codebook, j, f, scale, row_scale, cosine)
    return (a0 + a1) + (a2 + a3)


@jit(exact=True, inline="always")
def _term(x, r, codebook, j, f, scale, row_scale, cosine):
    """One feature's share of :func:`exact_score`, each factor scaled before the product."""
    if cosine:
        return -((np.float64(x[r, f]) * row_scale) * (np.float64(codebook[j, f]) * scale))
    t = (np.float64(x[r, f]) - np.float64(codebook[j, f])) * scale
    return t * t


@jit(inline="always")
def rerank(x, r, codebook, first, stop, scores, bias, threshold, scale, row_scale, cosine):
    """Lowest-index minimum of :func:`exact_score` over codes ``j`` in [first, stop) whose
    fast score is within ``threshold`` (all of them when ``scores`` is empty)."""
    best = np.inf
    arg = -1
    for j in range(first, stop):
        if scores.shape[0] > 0 and np.float64(scores[j] + bias[j]) > threshold:
            continue
        v = exact_score(x, r, codebook, j, scale, row_scale, cosine)
        if v < best:
            best, arg = v, j
    return arg, best


@jit(inline="always")
def float_key(bits, sign_shift, magnitude):
    """An integer that orders like the float with these bits (its own inverse), so minima vectorise.

    ``sign_shift`` and ``magnitude`` are the key type's bits less one and its
    exponent-and-mantissa mask (31 and ``0x7FFFFFFF`` for float32), of that type.
    """
    return bits ^ ((bits >> sign_shift) & magnitude)


@jit(inline="always")
def vector_row_code(x, r, codebook, scores, bias, bound, row_scale, scale, cosine, scratch):
    """The certified nearest code of a fast-path row (``prepare_row`` status 0), in vectorised passes.

    The smallest ``scores + bias`` comes from an integer minimum over the
    sums' keys, the codes within ``2 * bound`` of it are counted with the sum
    of their indices (the index when one is left) in a branch-free pass, and
    two or more are re-ranked in float64 by :func:`rerank`, ties to the lowest
    index.  ``scratch`` is ``(work, keys, iota, sign_shift, magnitude)`` from
    :func:`row_scratch`.  Returns ``(code, exact score, candidates)``; the
    exact score is computed only when there were two or more candidates.
    """
    work, keys, iota, sign_shift, magnitude = scratch
    k = scores.shape[0]
    for j in range(k):
        work[j] = scores[j] + bias[j]
    smallest = magnitude
    for j in range(k):
        smallest = min(smallest, float_key(keys[j], sign_shift, magnitude))
    keys[k] = float_key(smallest, sign_shift, magnitude)
    threshold = np.float64(work[k]) + 2.0 * bound
    # Round the threshold up past the working precision, so the comparison
    # in that precision can only keep more codes, never fewer.
    cut = work.dtype.type(threshold + abs(threshold) * 2.0 ** -20 + 2.0 ** -140)
    one, zero = work.dtype.type(1.0), work.dtype.type(0.0)
    count = zero
    index_sum = zero  # exact: one index (< k) when it is used
    for j in range(k):
        inside = work[j] <= cut
        count += one if inside else zero
        index_sum += iota[j] if inside else zero
    if count == one:
        return np.int64(index_sum), 0.0, 1
    j, v = rerank(x, r, codebook, 0, k, scores, bias, np.float64(cut), scale, row_scale, cosine)
    return j, v, np.int64(count)


@jit(inline="always")
def row_scratch(k, dtype_like, key_like):
    """Per-thread scratch of :func:`vector_row_code` for ``k`` codes in ``dtype_like``'s precision."""
    work = np.empty(k + 1, dtype=dtype_like.dtype)
    keys = work.view(key_like.dtype)
    iota = np.arange(k).astype(dtype_like.dtype)
    bits = keys.dtype.type(keys.itemsize * 8 - 1)
    magnitude = keys.dtype.type((1 << bits) - 1)  # wraps to the largest key for int64
    return work, keys, iota, bits, magnitude


@jit(inline="always")
def prepare_row(x, r, mu, scale, cosine, limit, out):
    """Write row ``r`` centred and scaled into ``out`` (working precision).

    Returns ``(norm, row_scale, status)``: the float64 norm of ``out``, the
    row's scale (cosine: a power of two bringing its largest value near 1;
    euclidean: ``scale``), and a status: 0 fine, 1 NaN/Inf, 2 beyond the
    working precision's ``limit`` (answer by the direct form), 3 beyond what
    the float64 direct form can square safely.
    """
    d = x.shape[1]
    row_scale = scale
    if cosine:
        top = 0.0
        for f in range(d):
            a = abs(np.float64(x[r, f]))
            if not a <= 1.7e308:  # NaN or Inf
                return 0.0, 1.0, 1
            top = max(top, a)
        row_scale = power_of_two_scale(top)
    sq = 0.0
    status = 0
    for f in range(d):
        value = np.float64(x[r, f])
        v = value * row_scale if cosine else (value - mu[f]) * row_scale
        a = abs(v)
        if not a <= limit:
            if not a <= DIRECT_LIMIT:
                # NaN/Inf input, or a finite value whose scaled form overflows (ranked at its own scale)
                return 0.0, row_scale, 1 if not abs(value) <= FLOAT64_MAX else 3
            status = 2
        w = out.dtype.type(v)
        out[f] = w
        sq += np.float64(w) * np.float64(w)
    return np.sqrt(sq), row_scale, status


@jit(inline="always")
def prepare_block(x, start, mu, scale, cosine, limit, vblock, norms, row_scales, statuses):
    """:func:`prepare_row` for rows ``start .. start + len(vblock)``; rows answered directly get zeros."""
    for i in range(vblock.shape[0]):
        norms[i], row_scales[i], statuses[i] = prepare_row(x, start + i, mu, scale, cosine, limit, vblock[i])
        if statuses[i] != 0:
            vblock[i, :] = 0  # keep the scores finite; the row is answered by the direct form


@jit
def power_of_two_scale(top):
    """The power of two ``s`` with ``top * s`` in (1/2, 1] (1 for 0): an exact scaling.

    Below 2**-1023 (subnormal spreads) the largest finite power of two, 2**1023, is used instead.
    """
    return 1.0 if top == 0.0 else 2.0 ** min(1023.0, -np.ceil(np.log2(top)))


@jit(inline="always")
def far_row_scale(x, r, codebook):
    """A power of two bringing every ``|x[r] - c|`` to at most 1 (0.0 when a difference overflows)."""
    top = 0.0
    for j in range(codebook.shape[0]):
        for f in range(x.shape[1]):
            top = max(top, abs(np.float64(x[r, f]) - np.float64(codebook[j, f])))
    if not top <= FLOAT64_MAX:
        return 0.0
    return power_of_two_scale(top)


@jit(inline="always")
def finish_row(x, r, codebook, scores_row, bias, bound, row_scale, status, scale, cosine,
               indices, dist, candidates, record, scratch):
    """Select the certified nearest code of row ``r`` from its fast scores (fills the OUT arrays).

    ``bound`` bounds the rounding error of every fast score of the row;
    ``scratch`` is :func:`row_scratch`'s, for :func:`vector_row_code`.
    """
    k = codebook.shape[0]
    if status == 3 and not cosine:
        # Too far out for the codebook's scale (a float64 row, codes spread over a tiny range):
        # the direct form at the row's own power of two, which every code shares, so still exact.
        scale = far_row_scale(x, r, codebook)
        row_scale = scale
        status = 2 if scale > 0.0 else 3
    if status == 1 or status == 3:
        indices[r] = ROW_NOT_FINITE if status == 1 else ROW_OUT_OF_RANGE
        dist[r] = np.nan
        return
    if status == 2:
        j, v = rerank(x, r, codebook, 0, k, scores_row[:0], bias, 0.0, scale, row_scale, cosine)
        count = k
    else:
        j, v, count = vector_row_code(x, r, codebook, scores_row, bias, bound, row_scale, scale, cosine, scratch)
        if count == 1:  # chosen without its exact score, which dist needs
            v = exact_score(x, r, codebook, j, scale, row_scale, cosine)
    finish_code(r, j, v, count, row_scale, scale, cosine, indices, dist, candidates, record)


@jit(exact=True)
def finish_code(r, j, v, count, row_scale, scale, cosine, indices, dist, candidates, record):
    """Write row ``r``'s code ``j``, its distance from the exact score ``v``, and its candidate count.

    Without fast-math (see :func:`exact_score`): one power of two at a time, since their
    product can overflow where each division alone is exact.
    """
    indices[r] = j
    # back to unscaled units: the distance (its square could underflow), or the dot product for cosine
    dist[r] = (-v / row_scale) / scale if cosine else np.sqrt(v) / scale
    if record:
        candidates[r] = count


@jit(inline="always")
def row_bound(coefs, norm, residual_norm, rounded_norm):
    """The error bound of a row's scores from its norms (see ``vqcore.search.plan``)."""
    return (coefs[0] * norm + coefs[1] * residual_norm + coefs[2] * rounded_norm + coefs[3]
            + coefs[4] * (1.0 + norm) * (1.0 + norm))


@jit(inline="always")
def add_row_stats(x, r, j, t, sums, counts):
    """Add row ``r`` of ``x`` to code ``j``'s slot in thread ``t``'s slabs."""
    counts[t, j] += 1.0
    acc = sums[t, j]
    for f in range(x.shape[1]):
        acc[f] += x[r, f]


@jit(parallel=True)
def certified_assign(x, codebook, mu, scale, cosine, codes_t, bias, coefs, limit,
                     rows, nthreads, indices, dist, candidates, record, sums, counts, accumulate, key_like):
    """Certified nearest code of every row of ``x``, with BLAS scores in ``codes_t``'s precision.

    Parameters
    ----------
    x : (n, d) float32/float64, C-contiguous                  # IN
    codebook : (k, d), same dtype as x                         # IN the codes as given
    mu : (d,) float64                                          # IN centre (zeros for cosine)
    scale : float                                              # IN power of two (codes' scale)
    cosine : bool                                              # IN metric
    codes_t : (d, k) working float, ``-2 c'.T`` (``-c'.T`` cosine)   # IN
    bias : (k,) working float, ``|c'|^2`` (zeros for cosine)   # IN
    coefs : (5,) float64                                       # IN error bound coefficients (see row_bound)
    limit : float                                              # IN largest safe |scaled value|
    rows, nthreads : int                                       # IN block rows, threads
    indices : (n,) int64                                       # OUT code, or ROW_NOT_FINITE / ROW_OUT_OF_RANGE
    dist : (n,) float64                                        # OUT distance (cosine: dot product) of that code
    candidates : (n,) int32                                    # OUT codes re-ranked per row, if ``record``
    record : bool                                              # IN
    sums : (nthreads, k, d) float64, zeroed                    # INOUT per-thread sums, if ``accumulate``
    counts : (nthreads, k) float64, zeroed                     # INOUT per-thread counts, if ``accumulate``
    accumulate : bool                                          # IN
    key_like : (0,) int32/int64, the working float's width     # IN dtype of the scores' integer keys
    """
    n, d = x.shape
    k = codebook.shape[0]
    nblocks = (n + rows - 1) // rows
    work = codes_t.dtype
    vslabs = np.empty((nthreads, rows * d), dtype=work)
    sslabs = np.empty((nthreads, rows * k), dtype=work)
    for t in prange(nthreads):
        norms = np.empty(rows)
        row_scales = np.empty(rows)
        statuses = np.empty(rows, dtype=np.int8)
        scratch = row_scratch(k, codes_t, key_like)
        for b in range(t, nblocks, nthreads):
            start = b * rows
            m = min(n, start + rows) - start
            vblock = vslabs[t][: m * d].reshape((m, d))
            block = sslabs[t][: m * k].reshape((m, k))
            prepare_block(x, start, mu, scale, cosine, limit, vblock, norms, row_scales, statuses)
            np.dot(vblock, codes_t, block)
            for i in range(m):
                r = start + i
                bound = row_bound(coefs, norms[i], 0.0, 0.0)
                finish_row(x, r, codebook, block[i], bias, bound, row_scales[i], statuses[i], scale,
                           cosine, indices, dist, candidates, record, scratch)
                if accumulate and indices[r] >= 0:
                    add_row_stats(x, r, indices[r], t, sums, counts)
