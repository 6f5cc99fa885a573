"""Residual VQ in PyTorch (issue 12): vqtorch.ResidualVQ on both backends against the seed's ResidualVQ."""
from __future__ import annotations

import numpy as np

from .core import Case, Config, Impl, Target, run_case
from .peers import gaussian, require, torch_eval_forward, torch_train_step

NAME = "residual_torch"
DESCRIPTION = "ResidualVQ train step (forward+backward) and eval forward: vqtorch backends vs the seed"

FULL = {"shape": (16, 1024, 256), "k": 1024, "stages": 8}
QUICK = {"shape": (2, 128, 32), "k": 64, "stages": 3}
SEED = "vqp 1.14.5 ResidualVQ"
BACKENDS = ("vqcore", "torch")


def run(config: Config) -> list[Case]:
    """One case per mode; every stack starts from the seed stack's codebooks."""
    params = QUICK if config.quick else FULL
    b, n, d = params["shape"]
    k, stages = params["k"], params["stages"]
    x = gaussian(np.random.default_rng(0), b, n, d)
    cases = []
    for mode in ("train", "eval"):
        what = "train step fwd+bwd" if mode == "train" else "eval forward"
        case = Case(NAME, f"{what} x=({b}, {n}, {d}) q={stages} k={k}",
                    {"shape": [b, n, d], "k": k, "num_quantizers": stages, "mode": mode, "dtype": "float32"},
                    targets=[
                        Target("vqtorch[vqcore]", SEED, 0.25),
                        Target("vqtorch[torch]", SEED, None),
                    ])
        impls = [Impl(SEED, lambda mode=mode: _timed(_seed(d, k, stages, mode), x, mode))]
        impls += [
            Impl(f"vqtorch[{backend}]", lambda mode=mode, backend=backend: _timed(
                _ours(d, k, stages, mode, backend), x, mode))
            for backend in BACKENDS
        ]
        cases.append(run_case(case, impls, config.repeat, config.budget_s, config.threads))
    return cases


def _seed(d, k, stages, mode):
    seed = require("vector_quantize_pytorch")
    torch = require("torch")
    torch.manual_seed(0)  # the same initial codebooks for every stack built here
    return seed.ResidualVQ(dim=d, num_quantizers=stages, codebook_size=k).train(mode == "train")


def _ours(d, k, stages, mode, backend):
    """vqtorch's stack holding the seed stack's initial state (keys are shared by contract)."""
    stack_class = require("vqtorch", "ResidualVQ")
    stack = stack_class(dim=d, num_quantizers=stages, codebook_size=k, backend=backend)
    stack.load_state_dict(_seed(d, k, stages, "eval").state_dict(), strict=True)
    return stack.train(mode == "train")


def _timed(stack, x, mode):
    torch = require("torch")
    inputs = torch.from_numpy(x)
    return torch_train_step(stack, inputs) if mode == "train" else torch_eval_forward(stack, inputs)
