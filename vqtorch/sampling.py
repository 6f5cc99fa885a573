"""The seed's distributed row sampling over torch.distributed (``sync_kmeans`` / ``sync_codebook``).

Rank 0 splits ``num`` draws over ranks in proportion to their row counts with a
chain of binomials, every rank samples its share locally, and the shares are
gathered in rank order, so all ranks end with the same rows.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .backend_torch import _sample_rows

__all__ = ["sample_vectors_distributed"]


def _split_counts(total, probs):
    # A chain of binomials: exact multinomial draw on the CPU, as the seed does.
    probs = probs.cpu().double()
    remaining = probs.new_full((), float(total))
    remainder = probs.new_ones(())
    out = torch.empty_like(probs, dtype=torch.long)
    for i, p in enumerate(probs):
        s = torch.binomial(remaining, (p / remainder).clamp(0, 1))
        out[i] = s.long()
        remaining -= s
        remainder -= p
    return out


def sample_vectors_distributed(samples, num):
    """``num`` rows sampled from the union of every rank's ``samples`` of shape (1, n, d).

    Returns
    -------
    Tensor of shape (1, num, d), identical on every rank.
    """
    local = samples[0]
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([local.shape[0]], dtype=torch.long, device=local.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = torch.cat(sizes)
    if rank == 0:
        per_rank = _split_counts(num, sizes.double() / sizes.sum()).to(local.device)
    else:
        per_rank = torch.empty_like(sizes)
    dist.broadcast(per_rank, src=0)
    per_rank = per_rank.tolist()
    mine = _sample_rows(local, per_rank[rank])
    parts = []
    for src, count in enumerate(per_rank):
        part = mine if src == rank else local.new_empty(count, local.shape[-1])
        dist.broadcast(part, src=src)
        parts.append(part)
    return torch.cat(parts).unsqueeze(0)
