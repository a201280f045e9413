"""rbe: compressed weight blocks that compute without decompressing."""
from . import calibration, layer, optim, reference, seeds, trellis
from ._core import get_num_threads, set_num_threads, threads
from .code import CodeLinear
from .encoder import HybridMatrix, encode
from .fused import FusedLinear
from .hybrid import HybridLinear
from .io import FormatError, load, save
from .kernel import generate, generate_with_grad, kernel_info

__version__ = "0.1.0"

__all__ = [
    "FusedLinear", "HybridLinear", "CodeLinear", "HybridMatrix", "encode", "save", "load",
    "FormatError", "calibration", "layer", "optim", "reference", "seeds", "trellis", "generate",
    "generate_with_grad", "kernel_info",
    "get_num_threads", "set_num_threads", "threads", "__version__",
]
