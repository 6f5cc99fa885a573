"""vqtorch: drop-ins for vector-quantize-pytorch 1.14.5's layers, backed by vqcore."""
from vqcore._optional import require

require("torch", "vqtorch")  # one clear line naming the extra, instead of a bare ModuleNotFoundError

from .config import VQConfig
from .fsq import FSQ
from .layer import VectorQuantize
from .lfq import LFQ
from .random_projection import RandomProjectionQuantizer
from .residual import GroupedResidualVQ, ResidualVQ
from .residual_fsq import GroupedResidualFSQ, ResidualFSQ
from .residual_lfq import GroupedResidualLFQ, ResidualLFQ

__all__ = ["VectorQuantize", "VQConfig", "FSQ", "LFQ", "RandomProjectionQuantizer", "ResidualVQ", "GroupedResidualVQ",
           "ResidualFSQ", "GroupedResidualFSQ", "ResidualLFQ", "GroupedResidualLFQ"]
