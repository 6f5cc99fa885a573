"""The seed's distributed row sampling over torch.distributed (``sync_kmeans`` / ``sync_codebook``).

Rank 0 splits ``num`` draws over ranks in proportion to their row counts with a
chain of binomials, every rank samples its share locally, and the shares are
gathered in rank order, so all ranks end with the same rows.
"""
from __future__ import annotations

import torch

from .backends.torch_ops import _sample_rows

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


def sample_vectors_distributed(samples, num, comm):
    """``num`` rows sampled from the union of every rank's ``samples`` of shape (1, n, d).

    Parameters
    ----------
    samples : Tensor of shape (1, n, d)
    num : int
    comm : vqtorch.distributed.TorchDistComm
        The process group the codebook is synchronised over.

    Returns
    -------
    Tensor of shape (1, num, d), identical on every rank.
    """
    local = samples[0]
    sizes = torch.tensor(comm.allgather_object(local.shape[0]), dtype=torch.long, device=local.device)
    if comm.rank == 0:
        per_rank = _split_counts(num, sizes.double() / sizes.sum()).to(local.device)
    else:
        per_rank = torch.empty_like(sizes)
    comm.bcast_(per_rank, root=0)
    mine = _sample_rows(local, int(per_rank[comm.rank]))
    return comm.allgatherv(mine).unsqueeze(0)  # every rank's picks, in rank order
