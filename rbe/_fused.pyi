"""Type stubs for rbe._fused (rbe/_fused.pyx).

Arrays are numpy arrays; the module checks dtypes, contiguity and sizes and raises ValueError.
"""
import numpy as np
from numpy.typing import NDArray

# the fused seed-block layer (rbe/include/rbe/fused.h); inputs in its grouped column order
FUSED_STATS: dict[str, int]
def fused_gemv(hi: NDArray[np.uint64], rho: NDArray[np.float32], sin_phi: NDArray[np.float32],
               cos_phi: NDArray[np.float32], w: int, xp: NDArray[np.float32],
               y: NDArray[np.float32], scale: NDArray[np.float32], simd: int,
               family: int) -> None: ...
def fused_forward_batch(hi: NDArray[np.uint64], rho: NDArray[np.float32],
                        sin_phi: NDArray[np.float32], cos_phi: NDArray[np.float32], w: int,
                        xp: NDArray[np.float32], y: NDArray[np.float32],
                        scale: NDArray[np.float32], simd: int, family: int) -> None: ...
def fused_backward(hi: NDArray[np.uint64], rho: NDArray[np.float32],
                   sin_phi: NDArray[np.float32], cos_phi: NDArray[np.float32], w: int,
                   xp: NDArray[np.float32], dy: NDArray[np.float32], dxp: NDArray[np.float32],
                   stats: NDArray[np.float64], scale: NDArray[np.float32],
                   offset: NDArray[np.float32], simd: int, family: int) -> None: ...
def fused_group(x: NDArray[np.float32], source: NDArray[np.intp],
                xp: NDArray[np.float32]) -> None: ...
def fused_ungroup(xp: NDArray[np.float32], source: NDArray[np.intp],
                  x: NDArray[np.float32]) -> None: ...
