"""vqcore: exact vector quantization in Numba-jitted NumPy, importable without torch.

The quantizer family (each registers its file kind, so :func:`load` reads every one):
:class:`VectorQuantizer`, :class:`ResidualQuantizer` (``groups=`` for grouped residual),
:class:`ProductQuantizer`, and the implicit-codebook encoders :class:`FSQ`, :class:`LFQ`,
:class:`ResidualFSQ`, :class:`ResidualLFQ`, :class:`GroupedResidualFSQ`, :class:`GroupedResidualLFQ`.
"""
from . import ema
from ._threads import configure_threads
from .cluster import kmeans, kmeans_plusplus
from .codebook import CosineSimCodebook, EuclideanCodebook
from .comm import CollectiveTimeout, Communicator, MPIComm, SerialComm, check_same
from .fsq import FSQ, GroupedResidualFSQ, ResidualFSQ
from .io import load
from .lfq import LFQ, GroupedResidualLFQ, ResidualLFQ
from .product import ProductQuantizer
from .quantizer import VectorQuantizer
from .residual import ResidualQuantizer
from .sampling import gumbel_sample, sample_multinomial, sample_vectors, sample_vectors_distributed
from .search import distances, nearest

__version__ = "0.1.0"

__all__ = [
    "VectorQuantizer", "ResidualQuantizer", "ProductQuantizer", "FSQ", "LFQ", "ResidualFSQ", "ResidualLFQ",
    "GroupedResidualFSQ", "GroupedResidualLFQ",
    "load", "nearest", "distances", "kmeans", "kmeans_plusplus",
    "EuclideanCodebook", "CosineSimCodebook", "ema",
    "Communicator", "SerialComm", "MPIComm", "CollectiveTimeout", "check_same", "configure_threads",
    "gumbel_sample", "sample_multinomial", "sample_vectors", "sample_vectors_distributed",
    "__version__",
]
