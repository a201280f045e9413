"""Type stubs for rbe._fused (rbe/_fused.pyx).

Arrays are numpy arrays; the module checks dtypes, contiguity and sizes and raises ValueError.
"""
import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

# the fused seed-block layer (rbe/include/rbe/fused.h); the backward kernels' inputs in its
# grouped column order
FUSED_STATS: dict[str, int]
BLOCK_SUMS: dict[str, int]
def block_sums(hi: NDArray[np.uint64], rho: NDArray[np.float32], sin_phi: NDArray[np.float32],
               cos_phi: NDArray[np.float32], w: int, out_features: int, in_features: int,
               out: NDArray[np.float64], precise: bool = ...,
               with_grad: bool = ...) -> None: ...
@disjoint_base
class BlockSums:
    out_features: int
    in_features: int
    precise: bool
    count: NDArray[np.float64]
    def __init__(self, out_features: int, in_features: int, block: tuple[int, int],
                 tables: tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]],
                 precise: bool) -> None: ...
    def current(self, hi: NDArray[np.uint64], with_grad: bool = ...) -> NDArray[np.float64]: ...
    def means(self, hi: NDArray[np.uint64]) -> NDArray[np.float64]: ...
@disjoint_base
class ForwardPlan:
    sums: BlockSums
    band_rows: int
    tile_cols: int
    vec_tile_cols: int
    def __init__(self, in_features: int, out_features: int, block: tuple[int, int],
                 tables: tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]],
                 source: NDArray[np.intp], centred: bool, sums: BlockSums,
                 tile_floats: int = ...) -> None: ...
    def forward(self, x: NDArray[np.floating], hi: NDArray[np.uint64],
                scale: NDArray[np.float32] | None, alpha: float, beta: float,
                bias: NDArray[np.float32] | None = None,
                out: NDArray[np.floating] | None = None) -> NDArray[np.floating]: ...
def fused_backward(hi: NDArray[np.uint64], rho: NDArray[np.float32],
                   sin_phi: NDArray[np.float32], cos_phi: NDArray[np.float32], w: int,
                   xp: NDArray[np.float32], dy: NDArray[np.float32], dxp: NDArray[np.float32],
                   stats: NDArray[np.float64], scale: NDArray[np.float32],
                   offset: NDArray[np.float32], simd: int, family: int) -> None: ...
def fused_group(x: NDArray[np.float32], source: NDArray[np.intp],
                xp: NDArray[np.float32]) -> None: ...
def fused_ungroup(xp: NDArray[np.float32], source: NDArray[np.intp],
                  x: NDArray[np.float32]) -> None: ...
