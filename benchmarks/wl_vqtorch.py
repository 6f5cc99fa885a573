"""The PyTorch layer (issue 4): vqtorch.VectorQuantize on both backends against the seed's layer."""
from __future__ import annotations

import numpy as np

from .core import Case, Config, Impl, Target, run_case
from .peers import gaussian, require, seed_layer, torch_eval_forward, torch_train_step

NAME = "vqtorch"
DESCRIPTION = "VectorQuantize train step (forward+backward) and eval forward: vqtorch backends vs the seed"

FULL = {"shape": (16, 1024, 256), "ks": (1024, 8192)}
QUICK = {"shape": (2, 256, 64), "ks": (128, 512)}
SEED = "vqp 1.14.5 VectorQuantize"
BACKENDS = ("vqcore", "torch")


def run(config: Config) -> list[Case]:
    """One case per (codebook size, mode); all layers start from the seed layer's codebook."""
    params = QUICK if config.quick else FULL
    b, n, d = params["shape"]
    x = gaussian(np.random.default_rng(0), b, n, d)
    cases = []
    for k in params["ks"]:
        for mode in ("train", "eval"):
            what = "train step fwd+bwd" if mode == "train" else "eval forward"
            case = Case(NAME, f"{what} x=({b}, {n}, {d}) k={k}",
                        {"shape": [b, n, d], "k": k, "mode": mode, "dtype": "float32"}, targets=[
                            Target("vqtorch[vqcore]", SEED, 0.25),
                            Target("vqtorch[torch]", SEED, None),
                        ])
            impls = [Impl(SEED, lambda k=k, mode=mode: _timed(_seed(d, k, mode), x, mode))]
            impls += [
                Impl(f"vqtorch[{backend}]", lambda k=k, mode=mode, backend=backend: _timed(
                    _ours(d, k, mode, backend), x, mode))
                for backend in BACKENDS
            ]
            cases.append(run_case(case, impls, config.repeat, config.budget_s, config.threads))
    return cases


def _seed(d, k, mode):
    return seed_layer(d, k, train=(mode == "train"))


def _ours(d, k, mode, backend):
    """vqtorch's layer holding the seed layer's initial state (keys are shared by contract)."""
    layer_class = require("vqtorch", "VectorQuantize")
    layer = layer_class(dim=d, codebook_size=k, backend=backend)
    layer.load_state_dict(seed_layer(d, k, train=False).state_dict(), strict=True)
    return layer.train(mode == "train")


def _timed(layer, x, mode):
    torch = require("torch")
    inputs = torch.from_numpy(x)
    return torch_train_step(layer, inputs) if mode == "train" else torch_eval_forward(layer, inputs)
