"""Slow, obviously-correct references for the kernels (float64, plain loops)."""
import numpy as np


def nearest(x, codebook, metric="euclidean"):
    """Index of the nearest code per row, one row at a time in float64."""
    x = np.asarray(x, dtype=np.float64)
    codebook = np.asarray(codebook, dtype=np.float64)
    out = np.empty(len(x), dtype=np.int64)
    for i, row in enumerate(x):
        if metric == "euclidean":
            scores = -((codebook - row) ** 2).sum(axis=1)
        else:
            scores = (codebook * row).sum(axis=1)  # the same sum for equal codes (BLAS's gemv need not be)
        out[i] = int(np.argmax(scores))  # first maximum on ties
    return out


def distances(x, codebook, metric="euclidean"):
    """The seed's negative distances: -||x - c|| or x . c, entry by entry."""
    x = np.asarray(x, dtype=np.float64)
    codebook = np.asarray(codebook, dtype=np.float64)
    out = np.empty((len(x), len(codebook)))
    for i, row in enumerate(x):
        if metric == "euclidean":
            out[i] = -np.sqrt(((codebook - row) ** 2).sum(axis=1))
        else:
            out[i] = codebook @ row
    return out


def lloyd(x, means, iters, metric="euclidean"):
    """Textbook Lloyd iterations with the seed's rules (empty clusters stay put)."""
    x = np.asarray(x, dtype=np.float64)
    means = np.array(means, dtype=np.float64)
    counts = None
    for _ in range(iters):
        labels = nearest(x, means, metric)
        counts = np.zeros(len(means), dtype=np.int64)
        new = means.copy()
        for j in range(len(means)):
            members = x[labels == j]
            counts[j] = len(members)
            if len(members):
                new[j] = members.mean(axis=0)
                if metric == "cosine":
                    new[j] /= max(np.linalg.norm(new[j]), 1e-12)
        means = new
    return means, counts


def inertia(x, means):
    """Sum of squared distances to the nearest mean."""
    x = np.asarray(x, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    return sum(min(np.sum((row - m) ** 2) for m in means) for row in x)


def residual_greedy(x, codebooks):
    """Greedy residual encoding in float64: each stage takes the nearest code to what is left.

    Returns ``(codes (n, stages), squared error per row after each stage (n, stages))``.
    """
    residual = np.array(x, dtype=np.float64)
    codebooks = np.asarray(codebooks, dtype=np.float64)
    codes = np.empty((len(residual), len(codebooks)), dtype=np.int64)
    errors = np.empty(codes.shape)
    for i, codebook in enumerate(codebooks):
        codes[:, i] = nearest(residual, codebook)
        residual = residual - codebook[codes[:, i]]
        errors[:, i] = (residual ** 2).sum(axis=1)
    return codes, errors


def residual_exhaustive(x, codebooks):
    """The best sum of one code per stage, by trying every path (tiny cases only).

    Returns ``(codes (n, stages), squared error per row (n,))``; ties go to the
    first path in lexicographic order.
    """
    import itertools

    x = np.asarray(x, dtype=np.float64)
    codebooks = np.asarray(codebooks, dtype=np.float64)
    paths = list(itertools.product(range(codebooks.shape[1]), repeat=len(codebooks)))
    sums = np.array([sum(codebooks[i][c] for i, c in enumerate(path)) for path in paths])
    codes = np.empty((len(x), len(codebooks)), dtype=np.int64)
    errors = np.empty(len(x))
    for r, row in enumerate(x):
        err = ((sums - row) ** 2).sum(axis=1)
        best = int(np.argmin(err))
        codes[r], errors[r] = paths[best], err[best]
    return codes, errors


def product_encode(x, codebooks):
    """Product encoding: subspace ``m`` of every row goes to its nearest code in ``codebooks[m]``."""
    x = np.asarray(x, dtype=np.float64)
    m, _, sub = np.shape(codebooks)
    return np.stack([nearest(x[:, j * sub:(j + 1) * sub], codebooks[j]) for j in range(m)], axis=1)


def kmeanspp_greedy(x, k, rng, trials):
    """Greedy k-means++ (scikit-learn's), with the draws in the order vqcore makes them.

    First row ``rng.integers(n)``; then per centre ``rng.random(trials)``
    scaled by the potential picks candidates by inverse CDF, and the one with
    the smallest new potential wins.  Plain float64 loops.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    chosen = [int(rng.integers(n))]
    closest = np.array([((row - x[chosen[0]]) ** 2).sum() for row in x])
    for _ in range(1, k):
        draws = rng.random(trials) * closest.sum()
        cdf = np.cumsum(closest)
        candidates = [min(int(np.searchsorted(cdf, u)), n - 1) for u in draws]
        best = None
        for c in candidates:
            new = np.minimum(closest, ((x - x[c]) ** 2).sum(axis=1))
            if best is None or new.sum() < best[0]:
                best = (new.sum(), c, new)
        chosen.append(best[1])
        closest = best[2]
    return np.array(chosen)


def fsq_levels_and_index(t, half_l, offset, levels):
    """FSQ's rounding, one value at a time: the integer levels ``rint(t * half_l - offset)``
    (in t's dtype, each step rounded as numpy's unfused ops round) and each code's
    mixed-radix index, the first dim varying fastest."""
    t = np.asarray(t)
    d = len(levels)
    rounded = np.empty_like(t)
    for position, value in np.ndenumerate(t):
        j = position[-1] % d
        rounded[position] = np.rint(value * t.dtype.type(half_l[j]) - t.dtype.type(offset[j]))
    codes = rounded.reshape(-1, d)
    index = np.empty(len(codes), dtype=np.int64)
    for i, code in enumerate(codes):
        total, place = 0, 1
        for j in range(d):
            total += (int(code[j]) + levels[j] // 2) * place
            place *= levels[j]
        index[i] = total
    return rounded, index
