"""Type stubs for rbe._hybrid (rbe/_hybrid.pyx).

Arrays are numpy arrays; the module checks dtypes, contiguity and sizes and raises ValueError.
"""
import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

# hybrid blocks in the transform domain (rbe/include/rbe/hybrid.h); float32 or float64 arrays;
# block b's entries are index[offsets[b]:offsets[b + 1]], values likewise
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

# the forward product of a layer (rbe_hybrid_plan in rbe/include/rbe/hybrid.h); rbe.hybrid
# builds one per layer and dtype from its layout
@disjoint_base
class ForwardPlan:
    dtype: np.dtype
    z_rows: int
    u_rows: int
    n_values: int
    n_coef: int
    work: int
    def __init__(self, in_features: int, out_features: int, dtype: np.dtype | type, *,
                 col_x0: NDArray[np.int64], col_z0: NDArray[np.int64],
                 col_class: NDArray[np.int64], col_matrices: list[NDArray[np.floating]],
                 row_y0: NDArray[np.int64], row_u0: NDArray[np.int64],
                 row_class: NDArray[np.int64], row_matrices: list[NDArray[np.floating]],
                 rowptr: NDArray[np.int64], row_sparse: NDArray[np.int64],
                 src: NDArray[np.uint32], zrow: NDArray[np.uint32], n_values: int,
                 row_terms: NDArray[np.int64], term_col: NDArray[np.int64],
                 term_count: NDArray[np.int64], term_proj: NDArray[np.int64],
                 term_rank: NDArray[np.int64], term_sums: NDArray[np.int64], n_coef: int,
                 col_runs: NDArray[np.int64], row_runs: NDArray[np.int64]) -> None: ...
    def forward(self, x: NDArray[np.floating], values: NDArray[np.float32],
                coef: NDArray[np.float32], bias: NDArray[np.float32] | None = None,
                factors: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None,
                out: NDArray[np.floating] | None = None) -> NDArray[np.floating]: ...
