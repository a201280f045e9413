"""rbe: compressed weight blocks that compute without decompressing."""
import os

# Idle OpenMP threads sleep instead of spinning (unless the user chose otherwise): on a machine
# whose cores are shared with other processes, spinning threads at a parallel region's barrier
# hold up the very threads they wait for, which made 2-thread kernels several times slower than
# 1 thread. Read by the OpenMP runtime when it loads, so it must precede the import of _core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import optim, reference, seeds  # noqa: E402
from ._core import get_num_threads, set_num_threads  # noqa: E402
from .encoder import HybridMatrix, encode  # noqa: E402
from .fused import FusedLinear  # noqa: E402
from .hybrid import HybridLinear  # noqa: E402
from .io import FormatError, load, save  # noqa: E402
from .kernel import generate, generate_with_grad, kernel_info  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "FusedLinear", "HybridLinear", "HybridMatrix", "encode", "save", "load", "FormatError",
    "optim", "reference", "seeds", "generate", "generate_with_grad", "kernel_info",
    "get_num_threads", "set_num_threads", "__version__",
]
