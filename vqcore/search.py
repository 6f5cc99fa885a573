"""Certified exact nearest-code search and the seed's distance matrix."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import _validate
from ._config import num_threads, single_threaded_blas
from .kernels.bf16 import HAS_BF16, bf16_round, error_bound_terms, pack_codes
from .kernels.search import ROW_NOT_FINITE, block_rows, certified_assign, power_of_two_scale

__all__ = ["nearest", "distances"]


def _pair(x, codebook, check_x_finite=True):
    """Validate ``x`` and ``codebook`` together; return 3-D views and whether to squeeze."""
    x = _validate.float_array("x", x, check_finite=check_x_finite)
    codebook = _validate.float_array("codebook", codebook, dtype=x.dtype)
    if x.ndim != codebook.ndim:
        raise ValueError(
            f"x has shape {x.shape} but codebook has shape {codebook.shape}: use x (n, d) with "
            "codebook (k, d), or x (c, n, d) with codebook (c, k, d)"
        )
    squeeze = x.ndim == 2
    if squeeze:
        x, codebook = x[None], codebook[None]
    if x.shape[0] != codebook.shape[0]:
        raise ValueError(
            f"x has {x.shape[0]} codebook sets (shape {x.shape}) but codebook has "
            f"{codebook.shape[0]} (shape {codebook.shape}); the leading dimensions must match"
        )
    if x.shape[-1] != codebook.shape[-1]:
        raise ValueError(
            f"x has d={x.shape[-1]} but codebook has d={codebook.shape[-1]}; "
            "the last dimensions must match"
        )
    if codebook.shape[1] == 0:
        raise ValueError("codebook holds no codes (k=0); it needs at least one row")
    return x, codebook, squeeze


#: ``precision=`` choices of :func:`nearest`: the engine of the fast candidate scores.
PRECISIONS = ("auto", "bf16", "fp32", "fp64")
_UNIT_ROUNDOFF = {np.dtype(np.float32): 2.0 ** -24, np.dtype(np.float64): 2.0 ** -53}
# Largest scaled value the working precision's GEMM takes: products and sums
# over d stay far from overflow (codes are scaled to |c'| <= 1).
_WORK_LIMIT = {np.dtype(np.float32): 2.0 ** 64, np.dtype(np.float64): 2.0 ** 500}
_U64 = 2.0 ** -53
#: Engines scoring in bf16; "bf16-emulated" computes vdpbf16ps's exact results without
#: the instruction (slow), so the path is tested on every CPU.
BF16_ENGINES = ("bf16", "bf16-emulated")


def _gamma(n, u):
    """Higham's ``gamma_n = n u / (1 - n u)``: bound on the relative error of an n-term dot product."""
    if n * u >= 0.5:
        raise ValueError(f"d={n} is too large for a certified search in this precision")
    return n * u / (1 - n * u)


@dataclass(frozen=True)
class SearchPlan:
    """A codebook prepared once for certified search (see :func:`plan`).

    Holds the codes as given, their centre and power-of-two scale, the
    engine's operand for the scores (``codes_t`` for BLAS, packed bf16 codes
    for ``"bf16"``) and the five coefficients of each row's error bound
    (see :func:`plan`).
    """

    codebook: np.ndarray
    metric: str
    engine: str
    mu: np.ndarray
    scale: float
    operand: np.ndarray
    bias: np.ndarray
    coefs: np.ndarray
    limit: float


def engine_for(dtype, precision):
    """The score engine for input ``dtype`` under ``precision=``: "bf16", "fp32" or "fp64".

    ``"auto"`` takes bf16 for float32 input on CPUs with avx512_bf16, fp32 on
    others, and fp64 for float64 input; ``"bf16"`` on a CPU without it runs fp32.
    """
    precision = _validate.choice("precision", precision, PRECISIONS)
    if precision == "auto":
        precision = "fp64" if dtype == np.float64 else "bf16"
    if precision == "bf16" and not HAS_BF16:
        return "fp32"
    return precision


def plan(codebook, metric, engine="fp32"):
    """Prepare one validated codebook ``(k, d)`` for :func:`assign`.

    Parameters
    ----------
    codebook : ndarray of shape (n_codes, n_features), float32 or float64
    metric : {"euclidean", "cosine"}
    engine : {"fp32", "fp64", "bf16", "bf16-emulated"}
        Precision of the fast scores (see :func:`engine_for`).

    Notes
    -----
    The bound.  Rows and codes are centred on the codebook's mean ``mu`` (not
    for cosine) and scaled by a power of two ``s`` so that ``|c'| <= 1``:
    ``v = (x - mu) s`` and ``c' = (c - mu) s`` are computed in float64 and
    rounded to the working precision (unit roundoff ``u``, so each value is
    off by at most ``eps = u + 2**-53`` relative).  With ``C = max_j |c'_j|``
    and ``gamma_m = m u / (1 - m u)`` (Higham's bound for an m-term dot
    product), every fast score ``|c'_j|^2 - 2 v . c'_j`` of a row is within

    * BLAS engines: ``(2u + 2 gamma_d + 4 eps) C |v| + (2u + 3 eps + gamma64_d) C**2``
    * bf16: ``4 eps C |v| + 2 C |r| + (2 C_r + (2 gamma + 2u) C_b) |b| + (2u + 3 eps + gamma64_d) C**2 + eta``,
      where ``b = bf16(v)``, ``r = v - b`` (exact), ``C_r``/``C_b`` the largest
      norms of the codes' residuals/bf16 parts and ``gamma``/``eta`` the
      ``vdpbf16ps`` accumulation terms of :func:`vqcore.kernels.bf16.error_bound_terms`

    of the exact value, plus a float64 margin ``4 gamma64_(d+2) (1 + C**2)
    (1 + |v|)**2``, so that every code the float64 direct form could rank
    first is kept, and a term for subnormal rounding; 1 % is added to cover
    second-order terms.  Cosine scores ``-v . c'`` have no ``C**2`` term
    and half the others.  A code can be nearest only if its score minus the
    bound is at most the best score plus the bound, so exactly those are
    re-ranked by the float64 direct form.
    """
    k, d = codebook.shape
    work = np.dtype(np.float64 if engine == "fp64" else np.float32)
    c64 = codebook.astype(np.float64)
    cosine = metric == "cosine"
    mu = np.zeros(d) if cosine else c64.mean(axis=0)
    centred = c64 - mu
    scale = float(power_of_two_scale(float(np.abs(centred).max()) if centred.size else 0.0))
    scaled = (centred * scale).astype(work)
    s64 = scaled.astype(np.float64)
    sq = np.einsum("kd,kd->k", s64, s64)
    big_c = upward(np.sqrt(sq.max()))
    factor = score_factor(metric)
    if engine in BF16_ENGINES:
        u = _UNIT_ROUNDOFF[work]
        eps = u + _U64
        coefs = np.zeros(5)
        coefs[3], coefs[4] = _shared_terms(big_c, d, work, cosine)
        rounded = bf16_round(scaled)
        big_r = upward(np.sqrt(np.einsum("kd,kd->k", *(2 * [(scaled - rounded).astype(np.float64)])).max()))
        big_b = upward(np.sqrt(np.einsum("kd,kd->k", *(2 * [rounded.astype(np.float64)])).max()))
        gamma, eta = error_bound_terms(d)
        coefs[0] = factor * 2 * eps * big_c
        coefs[1] = factor * big_c
        coefs[2] = factor * (big_r + (gamma + u) * big_b)
        coefs[3] += eta * factor
        coefs *= 1.01
        operand = pack_codes(np.ascontiguousarray(-factor * scaled))  # times a power of two: exact
    else:
        c0, c3, c4 = blas_terms(big_c, d, metric, work)
        coefs = np.array([c0, 0.0, 0.0, c3, c4])
        operand = np.ascontiguousarray((-factor * scaled).T)
    bias = np.zeros(k, dtype=work) if cosine else sq.astype(work)
    return SearchPlan(codebook, metric, engine, mu, scale, operand, bias, coefs, _WORK_LIMIT[work])


def score_factor(metric):
    """Fast scores are ``|c'|^2 - 2 v.c'`` (euclidean) or ``-v.c'`` (cosine): the factor on ``v.c'``."""
    return 1.0 if metric == "cosine" else 2.0


@lru_cache(maxsize=1024)
def _term_constants(d, work_name, cosine, margin):
    """The constants of :func:`_shared_terms`, times ``margin``: ``c3 = a3 C**2``,
    ``c4 = a4 (1 + C**2) + tiny (1 + C)**2``."""
    u = _UNIT_ROUNDOFF[np.dtype(work_name)]
    eps = u + _U64
    gamma64 = _gamma(d + 2, _U64)
    tiny = (d + 4) * (2.0 ** -120 if work_name == "float32" else 2.0 ** -1000)
    factor = score_factor("cosine" if cosine else "euclidean")
    a3 = 0.0 if cosine else 2 * u + 3 * eps + gamma64
    return a3 * margin, factor * 2 * gamma64 * margin, tiny * margin


def _shared_terms(big_c, d, work, cosine, margin=1.0):
    """The bound's terms common to every engine (see :func:`plan`): ``c3, c4``, times ``margin``.

    Plain arithmetic on ``big_c``, so a float or a 0-d float64 tensor (kept on its device) works;
    the constants are folded first, so a tensor costs few operations.
    """
    a3, a4, tiny = _term_constants(d, np.dtype(work).name, cosine, margin)
    c_sq = big_c * big_c
    return a3 * c_sq, a4 * (1 + c_sq) + tiny * (1 + big_c) ** 2


@lru_cache(maxsize=1024)
def _c0_constant(d, work_name, metric):
    u = _UNIT_ROUNDOFF[np.dtype(work_name)]
    return score_factor(metric) * (u + _gamma(d, u) + 2 * (u + _U64)) * 1.01


def blas_terms(big_c, d, metric, work=np.float32):
    """Coefficients ``(c0, c3, c4)`` of the bound on fp32/fp64 GEMM scores (see :func:`plan`).

    A row's scores are within ``c0 |v| + c3 + c4 (1 + |v|)**2`` of their exact values, whatever
    the GEMM's summation order; ``big_c`` is an upper bound on the scaled codes' norms, a float or a
    0-d float64 tensor.  The 1 % margin is in the constants.
    """
    work_name = np.dtype(work).name
    c3, c4 = _shared_terms(big_c, d, work, metric == "cosine", margin=1.01)
    return _c0_constant(d, work_name, metric) * big_c, c3, c4


def work_limit(work=np.float32):
    """Largest scaled row value whose fast score cannot overflow in ``work`` precision."""
    return _WORK_LIMIT[np.dtype(work)]


def upward(value):
    """``value`` nudged up past float64 rounding of the computation that produced it (a float or a tensor)."""
    return value * (1 + 2.0 ** -40)


def assign(x, codebook, metric, indices, dist, sums=None, counts=None, *, precision="auto", candidates=None):
    """Certified nearest codes of one validated 2-D set (fills the OUT arrays).

    Parameters
    ----------
    x : ndarray (n, d)                       # IN
    codebook : ndarray (k, d) or SearchPlan  # IN
    metric : {"euclidean", "cosine"}
    indices : ndarray (n,) int64             # OUT, negative for rows that cannot be ranked
    dist : ndarray (n,) float64              # OUT distance (cosine: dot product) of the code
    sums, counts : float64 (threads, k, d), (threads, k), zeroed, optional   # INOUT per-thread statistics
    precision : str
    candidates : ndarray (n,) int32, optional  # OUT codes re-ranked per row
    """
    n = x.shape[0]
    if n == 0:
        return
    search_plan = codebook if isinstance(codebook, SearchPlan) else plan(codebook, metric,
                                                                        engine_for(x.dtype, precision))
    k, d = search_plan.codebook.shape
    threads = num_threads()
    accumulate = sums is not None
    if not accumulate:
        sums, counts = np.zeros((1, 1, 1)), np.zeros((1, 1))
    record = candidates is not None
    if not record:
        candidates = np.zeros(1, dtype=np.int32)
    itemsize = 8 if search_plan.engine == "fp64" else 4
    args = (x, search_plan.codebook, search_plan.mu, search_plan.scale, search_plan.metric == "cosine",
            search_plan.operand, search_plan.bias, search_plan.coefs, search_plan.limit,
            block_rows(n, k, d, itemsize, threads), threads, indices, dist, candidates, record, sums, counts,
            accumulate)
    with single_threaded_blas():
        if search_plan.engine in BF16_ENGINES:
            from .kernels.search_bf16 import certified_assign_bf16

            certified_assign_bf16(*args, search_plan.engine == "bf16-emulated")
        else:
            certified_assign(*args, np.zeros(0, dtype=np.int64 if itemsize == 8 else np.int32))


def check_rows(x, indices):
    """Raise for rows the search could not rank: NaN/Inf input, or float64 values beyond range."""
    if indices.size and indices.min() < 0:
        if (indices == ROW_NOT_FINITE).any():
            raise ValueError("x contains NaN or Inf; remove or impute those values first")
        raise ValueError(
            f"x is too far from the codebook to rank exactly in float64 (max |value| {np.abs(x).max():.3g}); "
            "rescale the data"
        )


def nearest_unchecked(x, codebook, metric, precision="auto"):
    """Certified search for validated 3-D input ``x (c, n, d)``, ``codebook (c, k, d)``.

    Returns ``(indices (c, n) int64, dist (c, n) float64)``: the euclidean
    distance (cosine: the dot product) of each chosen code, computed directly.
    """
    c, n, _ = x.shape
    indices = np.empty((c, n), dtype=np.int64)
    dist = np.empty((c, n))
    for h in range(c):
        assign(x[h], codebook[h], metric, indices[h], dist[h], precision=precision)
    check_rows(x, indices)
    return indices, dist


def scores_from_dist(dist, metric, dtype):
    """The seed's negative distance (cosine: the dot product) from :func:`nearest_unchecked`'s ``dist``."""
    return (-dist if metric == "euclidean" else dist).astype(dtype)


def nearest(x, codebook, *, metric="euclidean", return_distances=False, precision="auto"):
    """Index of the nearest code for every vector: certified exact, blocked, parallel.

    Parameters
    ----------
    x : array_like of shape (n_samples, n_features) or (n_codebooks, n_samples, n_features)
        Vectors to assign, float32 or float64.
    codebook : array_like of shape (n_codes, n_features) or (n_codebooks, n_codes, n_features)
        One codebook, or one per leading set of ``x`` (e.g. per head).
    metric : {"euclidean", "cosine"}
        ``"euclidean"`` picks the smallest squared L2 distance; ``"cosine"`` the
        largest dot product (inputs assumed l2-normalised, as in the seed).
    return_distances : bool
        Also return the seed's *negative* distance of the chosen code,
        ``-||x - c||`` for euclidean, ``x . c`` for cosine (higher = closer),
        computed directly in float64 and rounded to ``x``'s dtype.
    precision : {"auto", "bf16", "fp32", "fp64"}
        Engine of the fast candidate scores; the answer is the same for all.
        ``"auto"`` takes bf16 (``vdpbf16ps``) for float32 input on CPUs with
        avx512_bf16, fp32 elsewhere, and fp64 for float64 input.

    Returns
    -------
    indices : ndarray of int64, shape (n_samples,) or (n_codebooks, n_samples)
    distances : ndarray, same shape, only with ``return_distances=True``

    Raises
    ------
    ValueError
        ``x`` holds NaN/Inf, or float64 values so far from the codebook
        (beyond about 1e150 times its spread) that their squares overflow.

    Notes
    -----
    The guarantee: the returned index minimises ``sum((x - c)**2)`` evaluated
    in float64 from the given values, after scaling them by a common power of
    two so that no square underflows or overflows (for cosine, maximises
    ``sum(x * c)``), and ties go to the lowest index.  For float32 input that is the true
    distance to within ``(d + 2) * 2**-53`` relative.  Scores are computed
    fast after shifting ``x`` and the codes by the codebook's mean (distances
    do not change under translation) and scaling them by a power of two;
    every score's rounding error is bounded rigorously (see :func:`plan`) and
    all codes whose score could be the best are re-ranked in float64.
    Memory beyond input and output is one block per thread, bounded
    independently of ``n_samples``.
    """
    metric = _validate.metric(metric)
    # NaN/Inf rows are flagged by the kernel: no separate pass over x.
    x, codebook, squeeze = _pair(x, codebook, check_x_finite=False)
    indices, dist = nearest_unchecked(x, codebook, metric, precision)
    scores = scores_from_dist(dist, metric, x.dtype) if return_distances else None
    if squeeze:
        indices = indices[0]
        scores = None if scores is None else scores[0]
    return (indices, scores) if return_distances else indices


def distances_unchecked(x, codebook, metric):
    """The seed's negative distance matrix for validated 3-D input: (c, n, k)."""
    dots = np.matmul(x, codebook.transpose(0, 2, 1))
    if metric == "cosine":
        return dots
    sq = np.einsum("cnd,cnd->cn", x, x)[:, :, None] + np.einsum("ckd,ckd->ck", codebook, codebook)[:, None, :]
    sq -= 2 * dots
    np.maximum(sq, 0, out=sq)
    np.sqrt(sq, out=sq)
    return np.negative(sq, out=sq)


def distances(x, codebook, *, metric="euclidean"):
    """The full matrix of the seed's negative distances.

    Parameters
    ----------
    x : array_like of shape (n_samples, n_features) or (n_codebooks, n_samples, n_features)
    codebook : array_like of shape (n_codes, n_features) or (n_codebooks, n_codes, n_features)
    metric : {"euclidean", "cosine"}
        ``-cdist(x, codebook)`` for euclidean, ``x @ codebook.T`` for cosine.

    Returns
    -------
    ndarray of shape (n_samples, n_codes) or (n_codebooks, n_samples, n_codes)

    Notes
    -----
    This materialises ``n x k`` values; use :func:`nearest` when only the
    argmax is needed.
    """
    metric = _validate.metric(metric)
    x, codebook, squeeze = _pair(x, codebook)
    out = distances_unchecked(x, codebook, metric)
    return out[0] if squeeze else out
