"""Greedy k-means++ seeding of one set of rows (``@jit`` only; the driver is ``vqcore.cluster``)."""
import numpy as np

from .._config import jit


@jit(inline="always")
def _distances_to(xt, x_sq, c, closest, out):
    """``out[i] = min(closest[i], |x_i - x_c|^2)`` in x's precision, the square clamped at 0.

    Works on the transposed rows ``xt`` (d, n), so every pass runs along the
    rows and vectorises whatever d is.
    """
    d, n = xt.shape
    zero = xt.dtype.type(0.0)
    two = xt.dtype.type(2.0)
    out[:] = zero
    for f in range(d):
        value = xt[f, c]
        for i in range(n):
            out[i] += value * xt[f, i]
    for i in range(n):
        out[i] = min(closest[i], max(zero, x_sq[i] + x_sq[c] - two * out[i]))


@jit
def greedy_kmeanspp(xt, x_sq, weights, draws, chosen):
    """Fill ``chosen[1:]`` by greedy k-means++ from ``chosen[0]``.

    Every step turns its row of ``draws`` (uniforms in [0, 1), one per
    candidate) into candidate rows with probability proportional to weight x
    squared distance to the nearest chosen centre (inverse transform over the
    float64 running sum), and keeps the candidate that lowers the weighted
    potential most (the first on ties).  One compiled loop instead of a dozen
    numpy calls per centre: seeding 256 centres took 0.33 s of a 1.3 s product
    quantizer fit in numpy.

    Parameters
    ----------
    xt : (d, n) float32/float64                       # IN rows, transposed
    x_sq : (n,) same dtype, squared norms             # IN
    weights : (n,) float64, non-negative              # IN
    draws : (k - 1, trials) float64 in [0, 1)         # IN
    chosen : (k,) int64, chosen[0] set                # INOUT
    """
    n = xt.shape[1]
    k, trials = chosen.shape[0], draws.shape[1]
    closest = np.full(n, np.inf).astype(xt.dtype)
    _distances_to(xt, x_sq, chosen[0], closest.copy(), closest)
    dist = np.empty((trials, n), dtype=xt.dtype)
    running = np.empty(n)
    candidates = np.empty(trials, dtype=np.int64)
    potential = 0.0
    for i in range(n):
        potential += weights[i] * closest[i]
    for step in range(1, k):
        total = 0.0
        for i in range(n):
            total += weights[i] * closest[i]
            running[i] = total
        best, best_potential = 0, np.inf
        for t in range(trials):
            c = min(np.searchsorted(running, draws[step - 1, t] * potential), n - 1)
            candidates[t] = c
            _distances_to(xt, x_sq, c, closest, dist[t])
            value = 0.0
            for i in range(n):
                value += weights[i] * dist[t, i]
            if value < best_potential:
                best, best_potential = t, value
        chosen[step] = candidates[best]
        closest[:] = dist[best]
        potential = best_potential
