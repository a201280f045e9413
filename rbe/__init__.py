"""rbe: compressed weight blocks that compute without decompressing."""
from . import layer, optim, reference, seeds
from ._core import get_num_threads, set_num_threads, threads
from .encoder import HybridMatrix, encode
from .fused import FusedLinear
from .hybrid import HybridLinear
from .io import FormatError, load, save
from .kernel import generate, generate_with_grad, kernel_info

__version__ = "0.1.0"

__all__ = [
    "FusedLinear", "HybridLinear", "HybridMatrix", "encode", "save", "load", "FormatError",
    "layer", "optim", "reference", "seeds", "generate", "generate_with_grad", "kernel_info",
    "get_num_threads", "set_num_threads", "threads", "__version__",
]
