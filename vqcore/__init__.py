"""vqcore: exact vector quantization in Numba-jitted NumPy, importable without torch."""
from . import ema
from .cluster import kmeans
from .codebook import CosineSimCodebook, EuclideanCodebook
from ._threads import configure_threads
from .comm import Communicator, MPIComm, SerialComm, check_same
from .sampling import gumbel_sample, sample_multinomial, sample_vectors, sample_vectors_distributed
from .quantizer import VectorQuantizer
from .residual import ResidualQuantizer
from .product import ProductQuantizer
from .io import load
from .search import distances, nearest

__version__ = "0.1.0"

__all__ = [
    "Communicator",
    "MPIComm",
    "check_same",
    "configure_threads",
    "sample_vectors_distributed",
    "CosineSimCodebook",
    "EuclideanCodebook",
    "VectorQuantizer",
    "ResidualQuantizer",
    "ProductQuantizer",
    "load",
    "ema",
    "SerialComm",
    "distances",
    "gumbel_sample",
    "kmeans",
    "nearest",
    "sample_multinomial",
    "sample_vectors",
    "__version__",
]
