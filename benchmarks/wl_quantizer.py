"""Codebook training step and encoding (issue 3): vqcore.VectorQuantizer against the seed's layer."""
from __future__ import annotations

import numpy as np

from .core import Case, Config, Impl, Target, Unavailable, run_case
from .peers import gaussian, require, seed_layer, seed_state_as_numpy, torch_train_step

NAME = "quantizer"
DESCRIPTION = "VectorQuantizer.partial_fit vs the seed's train forward+backward; encode vs nearest + gather"

FULL = {"batch": 16, "length": 1024, "d": 256, "k": 1024}
QUICK = {"batch": 2, "length": 1024, "d": 64, "k": 128}


def run(config: Config) -> list[Case]:
    """Time one training step and the encoding paths on the same data and codebook."""
    params = QUICK if config.quick else FULL
    b, length, d, k = params["batch"], params["length"], params["d"], params["k"]
    x = gaussian(np.random.default_rng(0), b, length, d)
    label = f"{b * length} x {d}, k={k}"
    step = Case(NAME, f"training step {label}", {**params, "dtype": "float32"}, targets=[
        Target("VectorQuantizer.partial_fit", "vqp 1.14.5 train fwd+bwd", 0.2),
        Target("VectorQuantizer.partial_fit", "numpy x @ c.T", None, note="issue 3: about 1.5x the GEMM"),
    ])
    impls = [
        Impl("VectorQuantizer.partial_fit", lambda: _partial_fit(x, k)),
        Impl("vqp 1.14.5 train fwd+bwd", lambda: _seed_step(x, k), note="VectorQuantize.train(), loss = q.sum() + commit"),
        Impl("numpy x @ c.T", lambda: _gemm(x, k), note="the distance GEMM alone: the floor"),
    ]
    cases = [run_case(step, impls, config.repeat, config.budget_s, config.threads)]

    encode = Case(NAME, f"encode {label}", {**params, "dtype": "float32"}, targets=[
        Target("VectorQuantizer.encode", "vqcore.nearest", 1.1, note="issue 3: as fast as nearest"),
        Target("VectorQuantizer.quantize", "vqcore.nearest + gather", 1.1),
    ])
    impls = [
        Impl("VectorQuantizer.encode", lambda: _encode(x, k)),
        Impl("vqcore.nearest", lambda: _nearest(x, k, gather=False)),
        Impl("VectorQuantizer.quantize", lambda: _quantize(x, k)),
        Impl("vqcore.nearest + gather", lambda: _nearest(x, k, gather=True)),
    ]
    cases.append(run_case(encode, impls, config.repeat, config.budget_s, config.threads))
    return cases


def _quantizer(d: int, k: int):
    """A vqcore quantizer holding the seed layer's initial codebook, so both start alike."""
    quantizer = require("vqcore", "VectorQuantizer")(d, k, seed=0)
    try:
        state = seed_state_as_numpy(seed_layer(d, k, train=True))
    except Unavailable:
        return quantizer  # no seed installed: keep vqcore's own initial codebook
    quantizer.load_state_dict(state)
    return quantizer


def _partial_fit(x, k):
    quantizer = _quantizer(x.shape[-1], k)
    return lambda: quantizer.partial_fit(x)


def _seed_step(x, k):
    torch = require("torch")
    return torch_train_step(seed_layer(x.shape[-1], k, train=True), torch.from_numpy(x))


def _gemm(x, k):
    flat = x.reshape(-1, x.shape[-1])
    codebook = gaussian(np.random.default_rng(1), k, x.shape[-1])
    return lambda: flat @ codebook.T


def _trained(x, k):
    """A vqcore quantizer after one training step on ``x``."""
    quantizer = _quantizer(x.shape[-1], k)
    quantizer.partial_fit(x)
    return quantizer


def _encode(x, k):
    quantizer = _trained(x, k)
    return lambda: quantizer.encode(x)


def _quantize(x, k):
    quantizer = _trained(x, k)
    return lambda: quantizer.quantize(x)


def _nearest(x, k, gather: bool):
    nearest = require("vqcore", "nearest")
    # The trained quantizer's codebook, so that both paths search the same codes.
    codebook = np.ascontiguousarray(_trained(x, k).state_dict()["_codebook.embed"][0])
    flat = x.reshape(-1, x.shape[-1])
    if gather:
        return lambda: codebook[nearest(flat, codebook)]
    return lambda: nearest(flat, codebook)
