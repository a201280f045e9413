"""Type stubs for rbe._core (rbe/_core.pyx): the seed-block weight kernels and the kernels'
thread count.

Arrays are numpy arrays; the core checks dtypes, contiguity and sizes and raises ValueError.
"""
import numpy as np
from numpy.typing import NDArray

SIMD_PATHS: dict[str, int]
APPROX_FAMILIES: dict[str, int]
BEST_SIMD: str

def openmp_enabled() -> bool: ...
MAX_THREADS: int
def max_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def num_threads_set() -> bool: ...
class threads:
    n: int
    def __init__(self, n: int) -> None: ...
    def __enter__(self) -> threads: ...
    def __exit__(self, *exc: object) -> None: ...

# seed-block weight kernel (rbe/include/rbe/weight.h, dispatch.h)
def generate_fast(hi: NDArray[np.uint64], rho: NDArray[np.float32], sin_phi: NDArray[np.float32],
                  cos_phi: NDArray[np.float32], out: NDArray[np.float32],
                  dr: NDArray[np.float32] | None = ..., dth: NDArray[np.float32] | None = ...,
                  simd: int = ..., family: int = ...) -> None: ...
def generate_precise(hi: NDArray[np.uint64], out: NDArray[np.float64],
                     dr: NDArray[np.float64] | None = ...,
                     dth: NDArray[np.float64] | None = ...) -> None: ...

# the scalar approximations one by one (rbe/include/rbe/approx.h)
APPROX_FUNCTIONS: dict[str, int]
def approx_eval(family: int, function: int, x: NDArray[np.float32],
                out: NDArray[np.float32]) -> None: ...
