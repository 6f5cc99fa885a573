"""The CPU backend: vqcore's numpy kernels on zero-copy ``.numpy()`` views of CPU tensors.

The few random draws (k-means seeds, dead-code replacement rows) are row indices drawn
with torch in the seed's order (:func:`vqtorch.backends.torch_ops._sample_rows`), and the numpy
kernels receive the chosen rows; so with the same ``torch.manual_seed`` this backend follows
the seed (and the torch backend) draw for draw.
"""
from __future__ import annotations

import numpy as np
import torch

import vqcore

from .torch_ops import _sample_rows

__all__ = ["VqcoreBackend", "nearest_op"]


# A custom operator, so torch.compile traces through the search instead of breaking the graph
# at the numpy call; the fake implementation only says what comes out.
@torch.library.custom_op("vqcore::nearest", mutates_args=())
def nearest_op(x: torch.Tensor, embed: torch.Tensor, cosine: bool) -> torch.Tensor:
    """vqcore's certified nearest code: x (c, n, d), embed (c, k, d) float32 CPU -> (c, n) int64."""
    metric = "cosine" if cosine else "euclidean"
    return torch.from_numpy(vqcore.nearest(_np(x), _np(embed), metric=metric))


@nearest_op.register_fake
def _(x, embed, cosine):
    return x.new_empty(x.shape[:2], dtype=torch.long)


def _np(t):
    """A float32/int64 numpy view of a CPU tensor (copies only if it is not contiguous)."""
    return t.detach().contiguous().numpy()


class VqcoreBackend:
    """Codebook kernels from vqcore for CPU tensors (see :mod:`vqtorch.backends` for the interface)."""

    name = "vqcore"

    @torch.no_grad()
    def nearest(self, x, embed, *, metric):
        """Index of the closest code per row: x (c, n, d), embed (c, k, d) -> (c, n) int64 (certified exact)."""
        return torch.ops.vqcore.nearest(x.detach(), embed.detach(), metric == "cosine")

    @torch.no_grad()
    def cluster_stats(self, x, indices, codebook_size, mask=None):
        """Local per-code counts (c, k) and sums (c, k, d), float32 tensors."""
        counts, sums = vqcore.ema.cluster_stats(_np(x), _np(indices), codebook_size,
                                                mask=None if mask is None else _np(mask))
        return torch.from_numpy(np.ascontiguousarray(counts, dtype=np.float32)), \
            torch.from_numpy(np.ascontiguousarray(sums, dtype=np.float32))

    @torch.no_grad()
    def ema_update_(self, cluster_size, embed_avg, embed, counts, sums, *, decay, eps, metric):
        """EMA of counts and sums, Laplace smoothing and new codes, written into the tensors' memory."""
        vqcore.ema.ema_update_(cluster_size.numpy(), embed_avg.numpy(), embed.numpy(), _np(counts), _np(sums),
                               decay=decay, eps=eps, metric=metric)

    def sample_vectors(self, samples, num):
        """``num`` rows drawn from ``samples`` (n, d), with the seed's torch draws."""
        return _sample_rows(samples, num)

    @torch.no_grad()
    def kmeans(self, samples, num_clusters, *, iters, metric, sample_fn=None, all_reduce=None):
        """vqcore's k-means with the seed's semantics; distributed runs use the torch backend instead."""
        if sample_fn is not None or all_reduce is not None:
            raise ValueError("the vqcore backend runs k-means on one process; distributed k-means uses the torch "
                             "backend")
        # Initial means drawn by torch, one codebook set after the other, as the seed seeds k-means.
        init = torch.stack([_sample_rows(part, num_clusters) for part in samples.unbind(0)])
        means, counts = vqcore.kmeans(_np(samples), num_clusters, iters=iters, metric=metric,
                                      init=_np(init))
        return torch.from_numpy(np.ascontiguousarray(means)), torch.from_numpy(counts)

    @torch.no_grad()
    def batch_stats(self, data):
        """Mean and biased variance over rows: (c, n, d) -> two (c, 1, d) tensors."""
        mean, variance = vqcore.ema.batch_stats(_np(data))
        return torch.from_numpy(np.ascontiguousarray(mean)), torch.from_numpy(np.ascontiguousarray(variance))
