"""vqcore: exact vector quantization in Numba-jitted NumPy, importable without torch."""
from . import ema
from .cluster import kmeans
from .codebook import CosineSimCodebook, EuclideanCodebook
from .comm import Communicator, SerialComm
from .sampling import gumbel_sample, sample_multinomial, sample_vectors
from .quantizer import VectorQuantizer
from .search import distances, nearest

__version__ = "0.1.0"

__all__ = [
    "Communicator",
    "CosineSimCodebook",
    "EuclideanCodebook",
    "VectorQuantizer",
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
