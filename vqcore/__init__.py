"""vqcore: exact vector quantization in Numba-jitted NumPy, importable without torch."""
from .comm import Communicator, SerialComm

__version__ = "0.1.0"

__all__ = ["Communicator", "SerialComm", "__version__"]
