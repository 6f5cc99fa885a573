"""vqtorch: a drop-in ``VectorQuantize`` layer for PyTorch backed by vqcore."""
from .config import VQConfig
from .layer import VectorQuantize

__all__ = ["VectorQuantize", "VQConfig"]
