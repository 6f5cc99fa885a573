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
            scores = codebook @ row
        out[i] = int(np.argmax(scores))  # first maximum on ties
    return out


def neg_distances(x, codebook, metric="euclidean"):
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
