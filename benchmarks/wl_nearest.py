"""Exact nearest-code search (issue 2): vqcore.nearest against faiss, numpy, scipy and the seed."""
from __future__ import annotations

import numpy as np

from .core import Case, Config, Impl, Target, run_case
from .peers import agreement, gaussian, nearest_reference, require, seed_layer, torch_eval_forward

NAME = "nearest"
DESCRIPTION = "exact nearest code, float32: vqcore.nearest vs faiss IndexFlatL2, numpy x @ c.T, scipy vq, vector-quantize-pytorch eval"

#: (n, d, k) from issue 2; the first shape also gets the numpy floor and the seed.
FULL_SHAPES = ((65536, 256, 1024), (65536, 256, 8192), (262144, 64, 512))
QUICK_SHAPES = ((2048, 64, 128), (2048, 64, 512), (8192, 16, 64))


def run(config: Config) -> list[Case]:
    """Time every implementation on each shape."""
    shapes = QUICK_SHAPES if config.quick else FULL_SHAPES
    return [_case(config, shape, first=(i == 0)) for i, shape in enumerate(shapes)]


def _case(config: Config, shape, first: bool) -> Case:
    n, d, k = shape
    rng = np.random.default_rng(0)
    x, codebook = gaussian(rng, n, d), gaussian(rng, k, d)
    reference = nearest_reference(x, codebook)

    def check(output):
        return {"agree": agreement(output, reference)}

    impls = [
        Impl("vqcore", lambda: _vqcore(x, codebook), check),
        Impl("faiss IndexFlatL2", lambda: _faiss(x, codebook), check, "index built outside the timed region"),
        Impl("scipy vq", lambda: _scipy(x, codebook), check),
    ]
    targets = [Target("vqcore", "faiss IndexFlatL2", 1.0)]
    if first:
        impls.insert(2, Impl("numpy x @ c.T", lambda: _matmul(x, codebook), note="the GEMM alone: the floor"))
        impls.append(Impl("vqp 1.14.5 eval forward", lambda: _seed(x, codebook), check, "VectorQuantize.eval(), no_grad"))
        targets += [Target("vqcore", "numpy x @ c.T", 1.1), Target("vqcore", "vqp 1.14.5 eval forward", None)]
    case = Case(NAME, f"n={n} d={d} k={k}", {"n": n, "d": d, "k": k, "dtype": "float32"}, targets=targets)
    return run_case(case, impls, config.repeat, config.budget_s, config.threads)


def _vqcore(x, codebook):
    nearest = require("vqcore", "nearest")
    return lambda: nearest(x, codebook)


def _faiss(x, codebook):
    faiss = require("faiss")
    index = faiss.IndexFlatL2(codebook.shape[1])
    index.add(codebook)
    return lambda: index.search(x, 1)[1][:, 0]


def _matmul(x, codebook):
    return lambda: x @ codebook.T


def _scipy(x, codebook):
    vq = require("scipy.cluster.vq", "vq")
    return lambda: vq(x, codebook, check_finite=False)[0]


def _seed(x, codebook):
    torch = require("torch")
    layer = seed_layer(x.shape[1], len(codebook), train=False, codebook=codebook)
    return torch_eval_forward(layer, torch.from_numpy(x)[None])
