"""Lookup of optional libraries and shared helpers for the workloads.

Every library is imported when a workload needs it, so a missing peer (or a
vqcore function not written yet) becomes a "not available" row instead of an
import error that stops the suite.
"""
from __future__ import annotations

import importlib
import warnings

import numpy as np

from .core import Unavailable


def require(module: str, attribute: str | None = None):
    """Import ``module`` and return it, or its dotted ``attribute``.

    Raises
    ------
    Unavailable
        If the module cannot be imported or the attribute does not exist.
    """
    try:
        with warnings.catch_warnings():
            # The seed's decorators warn about torch.cuda.amp on import; noise for this table.
            warnings.simplefilter("ignore", FutureWarning)
            found = importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{module} cannot be imported ({exc})") from None
    if attribute is None:
        return found
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise Unavailable(f"{module}.{attribute} does not exist yet")
        found = getattr(found, part)
    return found


def gaussian(rng, *shape) -> np.ndarray:
    """Standard normal float32 data, drawn directly in float32 (no float64 copy)."""
    return rng.standard_normal(shape, dtype=np.float32)


def nearest_reference(x: np.ndarray, codebook: np.ndarray, rows: int = 8192) -> np.ndarray:
    """Exact nearest codes by squared L2, a few thousand rows at a time (the ground truth)."""
    half_norms = 0.5 * np.einsum("kd,kd->k", codebook, codebook)
    out = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), rows):
        block = x[start:start + rows]
        # argmin ||x - c||^2 == argmin (||c||^2 / 2 - x.c); ||x||^2 is constant per row.
        out[start:start + rows] = np.argmin(half_norms - block @ codebook.T, axis=1)
    return out


def inertia(x: np.ndarray, centers: np.ndarray, rows: int = 8192) -> float:
    """Sum of squared distances from each row of ``x`` to its nearest center, accumulated in float64."""
    centers = np.asarray(centers, dtype=np.float32)
    x_sq = np.einsum("nd,nd->n", x, x, dtype=np.float64)
    c_sq = np.einsum("kd,kd->k", centers, centers)
    total = 0.0
    for start in range(0, len(x), rows):
        block = x[start:start + rows]
        partial = (c_sq - 2.0 * (block @ centers.T)).min(axis=1)
        total += float(np.maximum(x_sq[start:start + rows] + partial, 0.0).sum())
    return total


def agreement(indices, reference: np.ndarray) -> float:
    """Fraction of positions where ``indices`` equals ``reference`` (near-ties may differ in float32)."""
    indices = np.asarray(indices).reshape(-1)
    return float(np.mean(indices == reference))


def seed_layer(dim: int, codebook_size: int, *, train: bool, codebook: np.ndarray | None = None):
    """The seed's ``VectorQuantize`` (vector-quantize-pytorch), optionally with a given codebook."""
    seed = require("vector_quantize_pytorch")
    torch = require("torch")
    torch.manual_seed(0)  # the same initial codebook for every layer built here
    layer = seed.VectorQuantize(dim=dim, codebook_size=codebook_size)
    if codebook is not None:
        with torch.no_grad():
            layer._codebook.embed.copy_(torch.from_numpy(codebook)[None])
    return layer.train(train)


def seed_state_as_numpy(layer) -> dict:
    """The seed layer's ``state_dict`` with numpy values (the form vqcore loads)."""
    return {key: value.detach().cpu().numpy().copy() for key, value in layer.state_dict().items()}


def torch_train_step(layer, x):
    """A closure doing one forward + backward of ``layer`` in train mode on a fresh leaf of ``x``."""
    def step():
        leaf = x.detach().requires_grad_()
        quantized, indices, loss = layer(leaf)
        (quantized.sum() + loss.sum()).backward()
        return indices
    return step


def torch_eval_forward(layer, x):
    """A closure doing one eval-mode forward of ``layer`` without autograd."""
    torch = require("torch")

    def forward():
        with torch.no_grad():
            return layer(x)[1]
    return forward
