"""The seed's head layouts for tensors: split, merge, indices, masks and logits in one object.

vqtorch keeps the position axis: a batch ``(b, n, heads * d)`` becomes
``(heads, b, n, d)`` with a codebook per head, ``(1, b * heads, n, d)`` with one
shared codebook (the seed's ``'b n (h d) -> h b n d'`` and
``'b n (h d) -> 1 (b h) n d'``), and stays ``(b, n, d)`` with one head.
:class:`vqcore.layout.HeadLayout` is the numpy twin; one table of cases tests both.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HeadLayout"]


@dataclass(frozen=True)
class HeadLayout:
    """Layouts for ``heads`` heads; ``separate``: one codebook per head."""

    heads: int
    separate: bool

    def split(self, x):
        """``(b, n, heads * d)`` -> the codebook layout (``x`` itself with one head)."""
        if self.heads == 1:
            return x
        b, n, _ = x.shape
        x = x.view(b, n, self.heads, -1)
        if self.separate:
            return x.permute(2, 0, 1, 3)
        return x.permute(0, 2, 1, 3).reshape(1, b * self.heads, n, -1)

    def merge(self, q, b):
        """The codebook layout -> ``(b, n, heads * d)``."""
        if self.heads == 1:
            return q
        if self.separate:
            return q.permute(1, 2, 0, 3).reshape(b, q.shape[2], -1)
        n = q.shape[2]
        return q[0].view(b, self.heads, n, -1).permute(0, 2, 1, 3).reshape(b, n, -1)

    def indices(self, ind, b):
        """Codebook-layout indices -> ``(b, n)``, or ``(b, n, heads)``."""
        if self.heads == 1:
            return ind
        if self.separate:
            return ind.permute(1, 2, 0)
        return ind[0].view(b, self.heads, -1).permute(0, 2, 1)

    def mask(self, mask):
        """A ``(b, n)`` mask in the layout of :meth:`split` without ``d`` (``(c, b', n)``, or ``(b, n)``)."""
        if self.heads == 1:
            return mask
        if self.separate:
            return mask.unsqueeze(0).expand(self.heads, -1, -1)
        b, n = mask.shape
        return mask.unsqueeze(1).expand(-1, self.heads, -1).reshape(1, b * self.heads, n)

    def index_mask(self, mask):
        """A ``(b, n)`` mask in the layout of :meth:`indices`."""
        return mask if self.heads == 1 else mask.unsqueeze(-1).expand(-1, -1, self.heads)

    def logits(self, distances, b):
        """Negative distances ``(c, b', n, k)`` -> cross-entropy logits ``(b, k, n[, heads])``."""
        if self.heads == 1:
            return distances[0].permute(0, 2, 1)
        if self.separate:
            return distances.permute(1, 3, 2, 0)
        _, _, n, k = distances.shape
        return distances[0].view(b, self.heads, n, k).permute(0, 3, 2, 1)
