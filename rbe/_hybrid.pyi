"""Type stubs for rbe._hybrid (rbe/_hybrid.pyx).

Arrays are numpy arrays; the module checks dtypes, contiguity and sizes and raises ValueError.
"""
import numpy as np
from numpy.typing import NDArray

# hybrid blocks in the transform domain (rbe/include/rbe/hybrid.h); float32 or float64 arrays;
# block b's entries are index[offsets[b]:offsets[b + 1]], values likewise
def hybrid_forward(shape: tuple[int, int], block: tuple[int, int], slot: NDArray[np.uint8],
                   offsets: NDArray[np.int64], index: NDArray[np.uint16],
                   values: NDArray[np.float32], nslots: int, batch: int,
                   z_base: NDArray[np.int64], z_step: NDArray[np.int64],
                   u_base: NDArray[np.int64], u_step: NDArray[np.int64],
                   z: NDArray[np.floating], u: NDArray[np.floating]) -> None: ...
def pooled_gemm(a: NDArray[np.float32], b: NDArray[np.float32],
                c: NDArray[np.float32]) -> None: ...
def hybrid_cols_backward(shape: tuple[int, int], block: tuple[int, int],
                         slot: NDArray[np.uint8], offsets: NDArray[np.int64],
                         index: NDArray[np.uint16], values: NDArray[np.float32],
                         a: NDArray[np.floating],
                         dz: NDArray[np.floating]) -> None: ...
def hybrid_value_grads(shape: tuple[int, int], block: tuple[int, int], slot: NDArray[np.uint8],
                       offsets: NDArray[np.int64], index: NDArray[np.uint16],
                       values: NDArray[np.float32],
                       a: NDArray[np.floating], z: NDArray[np.floating],
                       grad: NDArray[np.floating]) -> None: ...
