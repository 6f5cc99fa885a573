"""The CPU backend: vqcore's numpy kernels on zero-copy ``.numpy()`` views of CPU tensors.

Random draws come from a numpy generator seeded by one ``torch.randint`` draw, so
``torch.manual_seed`` still makes a run reproducible (the draws differ from the seed's
torch ones; the torch backend is the one that follows them draw for draw).
"""
from __future__ import annotations

import numpy as np
import torch

import vqcore

__all__ = ["VqcoreBackend"]


def _np(t):
    """A float32/int64 numpy view of a CPU tensor (copies only if it is not contiguous)."""
    return t.detach().contiguous().numpy()


def _torch_seeded_rng():
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))


def _metric(cosine):
    return "cosine" if cosine else "euclidean"


class VqcoreBackend:
    """Codebook kernels from vqcore for CPU tensors (see :mod:`vqtorch.backends` for the interface)."""

    name = "vqcore"

    @torch.no_grad()
    def nearest(self, x, embed, *, cosine):
        """Index of the closest code per row: x (c, n, d), embed (c, k, d) -> (c, n) int64."""
        return torch.from_numpy(vqcore.nearest(_np(x), _np(embed), metric=_metric(cosine)))

    @torch.no_grad()
    def cluster_stats(self, x, indices, num_codes, mask=None):
        """Local per-code counts (c, k) and sums (c, k, d), float32 tensors."""
        counts, sums = vqcore.ema.cluster_stats(_np(x), _np(indices), num_codes,
                                                mask=None if mask is None else _np(mask))
        return torch.from_numpy(np.ascontiguousarray(counts, dtype=np.float32)), \
            torch.from_numpy(np.ascontiguousarray(sums, dtype=np.float32))

    @torch.no_grad()
    def ema_update_(self, cluster_size, embed_avg, embed, counts, sums, *, decay, eps, cosine):
        """EMA of counts and sums, Laplace smoothing and new codes, written into the tensors' memory."""
        vqcore.ema.ema_update_(cluster_size.numpy(), embed_avg.numpy(), embed.numpy(), _np(counts), _np(sums),
                               decay=decay, eps=eps, cosine=cosine)

    def sample_vectors(self, samples, num):
        """``num`` rows drawn from ``samples`` (n, d)."""
        return torch.from_numpy(vqcore.sample_vectors(_np(samples), num, _torch_seeded_rng()))

    @torch.no_grad()
    def kmeans(self, samples, num_clusters, *, iters, cosine, sample_fn=None, all_reduce=None):
        """vqcore's k-means with the seed's semantics; distributed runs use the torch backend instead."""
        if sample_fn is not None or all_reduce is not None:
            raise ValueError("the vqcore backend runs k-means on one process; distributed k-means uses the torch "
                             "backend")
        means, counts = vqcore.kmeans(_np(samples), num_clusters, iters=iters, metric=_metric(cosine),
                                      seed=_torch_seeded_rng())
        return torch.from_numpy(np.ascontiguousarray(means)), torch.from_numpy(counts)

    @torch.no_grad()
    def batch_stats(self, data):
        """Mean and biased variance over rows: (c, n, d) -> two (c, 1, d) tensors."""
        mean, variance = vqcore.ema.batch_stats(_np(data))
        return torch.from_numpy(np.ascontiguousarray(mean)), torch.from_numpy(np.ascontiguousarray(variance))
