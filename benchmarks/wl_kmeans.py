"""Lloyd k-means (issue 2): vqcore.kmeans against scikit-learn, faiss and the seed, same start."""
from __future__ import annotations

import numpy as np

from .core import Case, Config, Impl, Target, run_case
from .peers import gaussian, inertia, require

NAME = "kmeans"
DESCRIPTION = "10 Lloyd iterations from the same initial centroids; inertia reported next to time"

FULL = {"n": 65536, "d": 128, "k": 1024, "iters": 10}
QUICK = {"n": 4096, "d": 32, "k": 64, "iters": 10}


def run(config: Config) -> list[Case]:
    """Time one k-means fit per library from shared initial centroids."""
    params = dict(QUICK if config.quick else FULL)
    n, d, k, iters = params["n"], params["d"], params["k"], params["iters"]
    rng = np.random.default_rng(0)
    x = gaussian(rng, n, d)
    init = x[rng.choice(n, size=k, replace=False)].copy()

    def score(centers):
        return {"inertia": inertia(x, centers)}

    impls = [
        Impl("vqcore", lambda: _vqcore(x, init, iters), score),
        Impl("sklearn KMeans lloyd", lambda: _sklearn(x, init, iters), score, "tol=0, n_init=1"),
        Impl("faiss Kmeans", lambda: _faiss(x, init, iters), score),
        Impl("vqp 1.14.5 kmeans", lambda: _seed(x, k, iters), score, "samples its own init"),
    ]
    targets = [
        Target("vqcore", "sklearn KMeans lloyd", 1.0),
        Target("vqcore", "faiss Kmeans", 0.8),
        Target("vqcore", "vqp 1.14.5 kmeans", None),
        Target("vqcore", "sklearn KMeans lloyd", None, key="inertia",
               note="inertia ratio: 1.0 means the same objective"),
    ]
    case = Case(NAME, f"n={n} d={d} k={k} iters={iters}", {**params, "dtype": "float32"}, targets=targets)
    return [run_case(case, impls, config.repeat, config.budget_s, config.threads)]


def _vqcore(x, init, iters):
    kmeans = require("vqcore", "kmeans")
    return lambda: kmeans(x, len(init), iters=iters, init=init)[0]


def _sklearn(x, init, iters):
    kmeans = require("sklearn.cluster", "KMeans")
    model = kmeans(n_clusters=len(init), init=init, n_init=1, max_iter=iters, tol=0, algorithm="lloyd")
    return lambda: model.fit(x).cluster_centers_


def _faiss(x, init, iters):
    faiss = require("faiss")

    def fit():
        model = faiss.Kmeans(x.shape[1], len(init), niter=iters, verbose=False)
        model.train(x, init_centroids=init)
        return model.centroids
    return fit


def _seed(x, k, iters):
    torch = require("torch")
    kmeans = require("vector_quantize_pytorch.vector_quantize_pytorch", "kmeans")
    samples = torch.from_numpy(x)[None]
    return lambda: kmeans(samples, k, num_iters=iters)[0][0].numpy()
