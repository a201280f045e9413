"""rbe: compressed weight blocks that compute without decompressing."""
from . import reference, seeds
from ._core import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = ["reference", "seeds", "get_num_threads", "set_num_threads", "__version__"]
