"""rbe: compressed weight blocks that compute without decompressing."""
from . import seeds
from ._core import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = ["seeds", "get_num_threads", "set_num_threads", "__version__"]
from .encoder import HybridMatrix, encode
__all__ += ["encode", "HybridMatrix"]
from .hybrid import HybridLinear
__all__ += ["HybridLinear"]
