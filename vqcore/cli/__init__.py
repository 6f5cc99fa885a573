"""The ``vqcore`` command line: fit, encode, decode, info and demo, over vqcore's public API.

No library module imports this package.
"""
from .main import build_parser, main

__all__ = ["main", "build_parser"]
