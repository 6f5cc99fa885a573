"""Optional dependencies: import them at the entry that needs them, or say which extra brings them."""
from __future__ import annotations

import importlib

#: import name -> (what to install, the vqcore extra that brings it)
PACKAGES = {
    "torch": ("PyTorch", "torch"),
    "sklearn": ("scikit-learn", "demo"),
    "matplotlib": ("matplotlib", "demo"),
    "mpi4py": ("mpi4py and an MPI library", "mpi"),
}


class MissingDependencyError(ImportError):
    """An optional package a feature needs is not installed (the message names the extra)."""


def require(module, feature):
    """Import ``module`` for ``feature``, or raise :class:`MissingDependencyError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package, extra = PACKAGES[module.split(".")[0]]
        raise MissingDependencyError(f'{feature} needs {package}: pip install "vqcore[{extra}]"',
                                     name=module) from None
