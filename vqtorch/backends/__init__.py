"""Backend selection.

A backend does the codebook's non-differentiable work on float32 tensors:

* ``nearest(x (c,n,d), embed (c,k,d), *, cosine) -> (c, n) int64``
* ``cluster_stats(x, indices, num_codes, mask=None) -> counts (c,k), sums (c,k,d)`` (local)
* ``ema_update_(cluster_size, embed_avg, embed, counts, sums, *, decay, eps, cosine)`` (in place)
* ``kmeans(samples, num_clusters, *, iters, cosine, sample_fn=None, all_reduce=None) -> means, counts``
* ``sample_vectors(samples (n,d), num) -> (num, d)``
* ``batch_stats(data (c,n,d)) -> mean (c,1,d), variance (c,1,d)``

``"torch"`` (:class:`~vqtorch.backend_torch.TorchBackend`) runs on any device;
``"vqcore"`` (:class:`~vqtorch.backend_vqcore.VqcoreBackend`) calls vqcore's
numpy kernels on CPU tensors; ``"auto"`` takes vqcore for CPU tensors when it
is importable and torch otherwise.
"""
from __future__ import annotations

from functools import lru_cache

from .backend_torch import TorchBackend

__all__ = ["select_backend", "vqcore_available"]

_TORCH = TorchBackend()


@lru_cache(maxsize=1)
def vqcore_available() -> bool:
    """True when vqcore's codebook kernels (``nearest``, ``kmeans``, ``ema``) can be imported."""
    try:
        import vqcore
    except ImportError:
        return False
    return all(hasattr(vqcore, name) for name in ("nearest", "kmeans", "ema"))


@lru_cache(maxsize=1)
def _vqcore_backend():
    from .backend_vqcore import VqcoreBackend
    return VqcoreBackend()


def select_backend(name, tensor):
    """The backend object for ``name`` ("auto", "vqcore" or "torch") and a tensor's device."""
    if name == "torch":
        return _TORCH
    on_cpu = tensor.device.type == "cpu"
    if name == "vqcore":
        if not on_cpu:
            raise ValueError(
                f"backend='vqcore' runs on CPU tensors, got a tensor on {tensor.device}: "
                "use backend='torch' or 'auto' for other devices."
            )
        if not vqcore_available():
            raise ValueError("backend='vqcore' needs vqcore's kernels, which are not importable: use backend='torch'.")
        return _vqcore_backend()
    if on_cpu and vqcore_available():
        return _vqcore_backend()
    return _TORCH
