"""vqtorch: a drop-in ``VectorQuantize`` layer for PyTorch backed by vqcore."""
