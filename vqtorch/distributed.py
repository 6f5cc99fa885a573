"""The vqcore communicator protocol over ``torch.distributed``.

``TorchDistComm`` lets the numpy engine (vqcore) run its collectives through
the process group a PyTorch job already has -- the seed's own distributed
mode.  numpy arrays are wrapped with ``torch.from_numpy`` (no copy) on CPU
backends such as gloo; with nccl they are staged through the current CUDA
device.  Torch tensors are accepted too and reduced where they live.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from vqcore.comm import Communicator, check_gather_headers
from vqcore._threads import configure_threads_once

__all__ = ["TorchDistComm", "default_comm"]


def default_comm():
    """A :class:`TorchDistComm` when ``torch.distributed`` runs more than one process, else None.

    This is the seed's default for ``sync_codebook``: on exactly when the
    default process group is initialised with a world size above one.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchDistComm()
    return None


class TorchDistComm(Communicator):
    """Communicator over a ``torch.distributed`` process group.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup, optional
        Default: the default (world) group.  ``root`` ranks passed to
        :meth:`bcast_` are ranks *within* this group.

    Raises
    ------
    RuntimeError
        If ``torch.distributed`` is not initialised (call
        ``torch.distributed.init_process_group`` first).
    """

    def __init__(self, group=None):
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "TorchDistComm needs an initialised process group; call "
                "torch.distributed.init_process_group(backend='gloo') (CPU) or 'nccl' (GPU) first"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        if self.rank < 0:
            raise ValueError(f"this process is not a member of group={group!r}")
        backend = dist.get_backend(group)
        # nccl reduces CUDA tensors only; gloo and mpi take CPU tensors as they are.
        self._device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None
        configure_threads_once()

    # numpy <-> torch: a shared-memory view on CPU backends, a device round trip with nccl
    def _run_in_place(self, array, collective):
        if isinstance(array, torch.Tensor):
            collective(array)
            return array
        if not isinstance(array, np.ndarray):
            raise TypeError(f"TorchDistComm needs a numpy array or torch tensor, got {type(array).__name__}")
        if not array.flags.c_contiguous or not array.flags.writeable:
            raise ValueError("TorchDistComm works in place and needs a writable C-contiguous numpy array")
        tensor = torch.from_numpy(array)
        if self._device is None:
            collective(tensor)
        else:
            staged = tensor.to(self._device)
            collective(staged)
            tensor.copy_(staged.cpu())
        return array

    def allreduce_sum_(self, array):
        return self._run_in_place(array, lambda t: dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group))

    def bcast_(self, array, root=0):
        if not 0 <= root < self.size:
            raise ValueError(f"root={root} is not a rank of this {self.size}-process group")
        source = root if self.group is None else dist.get_global_rank(self.group, root)
        return self._run_in_place(array, lambda t: dist.broadcast(t, src=source, group=self.group))

    def allgatherv(self, array):
        as_numpy = not isinstance(array, torch.Tensor)
        tensor = torch.from_numpy(np.ascontiguousarray(array)) if as_numpy else array.contiguous()
        if tensor.dim() == 0:
            raise ValueError("allgatherv needs an array with a leading (row) axis, got a 0-d array")
        headers = self.allgather_object((tensor.shape[0], tuple(tensor.shape[1:]), str(tensor.dtype)))
        rows = check_gather_headers(headers)
        # torch's all_gather wants equal sizes: pad every block to the longest.
        longest = max(rows)
        device = self._device if self._device is not None else tensor.device
        padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]), device=device)
        padded[: tensor.shape[0]] = tensor
        blocks = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(blocks, padded, group=self.group)
        out = torch.cat([block[:n] for block, n in zip(blocks, rows)], dim=0)
        return out.cpu().numpy() if as_numpy else out.to(tensor.device)

    def allgather_object(self, obj):
        gathered = [None] * self.size
        dist.all_gather_object(gathered, obj, group=self.group)
        return gathered

    def __repr__(self):
        return f"TorchDistComm(rank={self.rank}, size={self.size}, backend={dist.get_backend(self.group)!r})"
