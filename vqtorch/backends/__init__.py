"""Where a codebook's non-differentiable work runs: the backend interface and the selection policy.

``"torch"`` (:class:`~vqtorch.backends.torch_ops.TorchBackend`) runs torch ops on
any device (the CUDA path); ``"vqcore"`` (:class:`~vqtorch.backends.vqcore_kernels.VqcoreBackend`)
runs vqcore's numpy kernels on zero-copy views of CPU tensors; ``"auto"`` takes
vqcore for CPU tensors and torch elsewhere.  :func:`select_backend` holds the
whole policy, including the one exception: k-means synchronised over
``torch.distributed`` runs in torch ops, which keep the seed's sampling protocol.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Protocol

from .torch_ops import TorchBackend

__all__ = ["Backend", "select_backend"]


class Backend(Protocol):
    """The codebook kernels every backend provides (float32 tensors; ``metric`` is "euclidean" or "cosine")."""

    name: str

    def nearest(self, x, embed, *, metric):
        """Index of the nearest code: x (c, n, d), embed (c, k, d) -> (c, n) int64."""

    def cluster_stats(self, x, indices, codebook_size, mask=None):
        """This process's counts (c, k) and sums (c, k, d) per code."""

    def ema_update_(self, cluster_size, embed_avg, embed, counts, sums, *, decay, eps, metric):
        """One EMA step of the codebook, in place."""

    def kmeans(self, samples, num_clusters, *, iters, metric, sample_fn=None, all_reduce=None):
        """The seed's k-means on (c, n, d): ``(means (c, k, d), counts (c, k))``."""

    def sample_vectors(self, samples, num):
        """``num`` rows of ``samples`` (n, d), drawn as the seed draws them."""

    def batch_stats(self, data):
        """Mean and biased variance over rows: (c, n, d) -> two (c, 1, d) tensors."""


_TORCH = TorchBackend()


@lru_cache(maxsize=1)
def _vqcore_backend():
    from .vqcore_kernels import VqcoreBackend

    return VqcoreBackend()


def select_backend(name, tensor, *, distributed_kmeans=False) -> Backend:
    """The backend for ``name`` ("auto", "vqcore" or "torch") and the device of ``tensor``.

    Parameters
    ----------
    name : {"auto", "vqcore", "torch"}
    tensor : torch.Tensor
        Where the data lives.
    distributed_kmeans : bool
        The step is k-means synchronised over ``torch.distributed``: it runs in
        torch ops on every setting, since only they keep the seed's sampling.

    Raises
    ------
    ValueError
        ``"vqcore"`` for a tensor that is not on the CPU.
    """
    on_cpu = tensor.device.type == "cpu"
    if name == "vqcore" and not on_cpu:
        raise ValueError(f"backend='vqcore' runs on CPU tensors, got a tensor on {tensor.device}: "
                         "use backend='torch' or 'auto' for other devices.")
    if name == "torch" or distributed_kmeans or not on_cpu:
        return _TORCH
    return _vqcore_backend()
