"""How heads share or split codebooks: the seed's head layouts, as one small object.

A batch ``(b, n, heads * d)`` becomes codebook input ``(c, N, d)``: with a
codebook per head, ``c = heads`` and ``N = b * n`` (the seed's
``'b n (h d) -> h b n d'``); with one shared codebook, ``c = 1`` and
``N = b * heads * n`` (``'b n (h d) -> 1 (b h) n d'``).  Indices and masks
follow the same order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HeadLayout"]


@dataclass(frozen=True)
class HeadLayout:
    """Split, merge, indices and mask layouts for ``heads`` heads.

    Parameters
    ----------
    heads : int
    separate : bool
        One codebook per head (else one shared by all heads).
    """

    heads: int
    separate: bool

    @property
    def num_codebooks(self) -> int:
        """Codebook sets the layout feeds."""
        return self.heads if self.separate else 1

    def split(self, z):
        """``(b, n, heads * d)`` -> ``(c, N, d)``, C-contiguous."""
        b, n, hd = z.shape
        h = self.heads
        z4 = z.reshape(b, n, h, hd // h)
        if self.separate:
            return np.ascontiguousarray(z4.transpose(2, 0, 1, 3)).reshape(h, b * n, hd // h)
        return np.ascontiguousarray(z4.transpose(0, 2, 1, 3)).reshape(1, b * h * n, hd // h)

    def merge(self, q, b, n):
        """``(c, N, d)`` -> ``(b, n, heads * d)`` (the inverse of :meth:`split`)."""
        h, d = self.heads, q.shape[-1]
        if self.separate:
            return q.reshape(h, b, n, d).transpose(1, 2, 0, 3).reshape(b, n, h * d)
        return q.reshape(b, h, n, d).transpose(0, 2, 1, 3).reshape(b, n, h * d)

    def indices(self, indices, b, n):
        """``(c, N)`` -> ``(b, n)``, or ``(b, n, heads)`` with several heads."""
        h = self.heads
        if h == 1:
            return indices.reshape(b, n)
        if self.separate:
            return indices.reshape(h, b, n).transpose(1, 2, 0)
        return indices.reshape(b, h, n).transpose(0, 2, 1)

    def mask(self, mask):
        """``(b, n)`` bool -> ``(c, N)``: every head of a position shares its mask."""
        b, n = mask.shape
        h = self.heads
        if self.separate:
            return np.broadcast_to(mask.reshape(1, b * n), (h, b * n))
        return np.broadcast_to(mask[:, None, :], (b, h, n)).reshape(1, b * h * n)
