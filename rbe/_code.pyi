"""Type stubs for rbe._code (rbe/_code.pyx).

Arrays are numpy arrays; the module checks dtypes, contiguity and sizes and raises ValueError.
"""
import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

TILE: int
STEPS: int
LANES: int
GROUP: int
MIN_BITS: int
MAX_BITS: int
MAX_STATE_BITS: int
MAX_ODD: int
WRAP_WINDOW: int

# the encoder (rbe/include/rbe/code.h); simd is an index of rbe._core.SIMD_PATHS, -1 the best
def viterbi(bits: int, state_bits: int, x: NDArray[np.float32], overlap: int = -1,
            simd: int = -1) -> tuple[NDArray[np.uint32], float]: ...
def encode_tiles(bits: int, state_bits: int, targets: NDArray[np.float32],
                 streams: NDArray[np.uint8], decoded: NDArray[np.float32],
                 errors: NDArray[np.float64], simd: int = -1) -> None: ...

# rotations: every row of rows (float32, width 2^a * b) in place
def rotate_rows(rows: NDArray[np.float32], odd_matrix: NDArray[np.floating] | None = None,
                transpose: bool = False) -> None: ...

# the products of a code layer (rbe_code_plan in rbe/include/rbe/code.h)
@disjoint_base
class CodePlan:
    in_padded: int
    out_padded: int
    groups: int
    def __init__(self, in_features: int, out_features: int, bits: int, state_bits: int,
                 codes: NDArray[np.uint8], in_signs: NDArray[np.float32],
                 out_signs: NDArray[np.float32],
                 in_odd_matrix: NDArray[np.floating] | None = None,
                 out_odd_matrix: NDArray[np.floating] | None = None) -> None: ...
    def work_sizes(self, batch: int, threads: int) -> tuple[int, int, int, int]: ...
    def threads(self, batch: int) -> int: ...
    def forward(self, x: NDArray[np.float32], y: NDArray[np.float32],
                factor: NDArray[np.float32], bias: NDArray[np.float32] | None,
                xr: NDArray[np.float32], raw: NDArray[np.float32], yr: NDArray[np.float32],
                simd: int, threads: int) -> None: ...
    def decode(self, group: int, tj0: int, tj1: int, out: NDArray[np.float32]) -> None: ...
