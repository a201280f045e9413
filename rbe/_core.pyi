"""Type stubs for the compiled core (rbe/_core.pyx and the .pxi files it includes).

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

# seed-block weight kernel (rbe/include/rbe/dispatch.h)
def generate_fast(hi: NDArray[np.uint64], rho: NDArray[np.float32], sin_phi: NDArray[np.float32],
                  cos_phi: NDArray[np.float32], out: NDArray[np.float32],
                  dr: NDArray[np.float32] | None = ..., dth: NDArray[np.float32] | None = ...,
                  simd: int = ..., family: int = ...) -> None: ...
def generate_precise(hi: NDArray[np.uint64], out: NDArray[np.float64],
                     dr: NDArray[np.float64] | None = ...,
                     dth: NDArray[np.float64] | None = ...) -> None: ...

# the original algorithm (rbe/include/rbe/reference.h)
def ref_generate(kind: int, seeds: NDArray[np.uint64], rows: int, cols: int,
                 out: NDArray[np.float32]) -> None: ...
def ref_pointwise(kind: int, seeds: NDArray[np.uint64], i: NDArray[np.int64],
                  j: NDArray[np.int64], rows: int, cols: int, out: NDArray[np.float32]) -> None: ...
def ref_state_function(state: NDArray[np.int32], value: NDArray[np.float32],
                       phase: NDArray[np.float32], out: NDArray[np.float32]) -> None: ...
def ref_state_transition(hi: NDArray[np.uint64], g: NDArray[np.float32], i: NDArray[np.int64],
                         j: NDArray[np.int64], advanced: bool) -> None: ...
def ref_adam(p: float, m: float, v: float, g: float, lr: float,
             t: int) -> tuple[float, float, float]: ...
def ref_fused_backward(target: NDArray[np.float32], pred: NDArray[np.float32],
                       seed: NDArray[np.uint64], rows: int, cols: int, lr: float,
                       analytic: bool) -> float: ...
def ref_fused_backward_adam(target: NDArray[np.float32], pred: NDArray[np.float32],
                            seed: NDArray[np.uint64], moments: NDArray[np.float32], rows: int,
                            cols: int, epoch: int, lr: float) -> float: ...
def ref_layer_forward(seeds: NDArray[np.uint64], bh: int, bw: int, x: NDArray[np.float64],
                      y: NDArray[np.float64]) -> None: ...
def ref_layer_backward_precise(seeds: NDArray[np.uint64], bh: int, bw: int,
                               x: NDArray[np.float64], dy: NDArray[np.float64], lr: float,
                               dx: NDArray[np.float64]) -> None: ...
def ref_layer_backward_adam(seeds: NDArray[np.uint64], bh: int, bw: int,
                            x: NDArray[np.float64], dy: NDArray[np.float64],
                            moments: NDArray[np.float32], epoch: int, lr: float,
                            dx: NDArray[np.float64]) -> None: ...

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
