"""The trellis code of code blocks: state values, rotations, and the encoder.

A matrix W (out_features x in_features) is coded in a rotated basis,

    R = H_out (s_out * pad(W) * s_in^T) H_in^T,

pad() adding zero rows and columns up to the rotated sides (:func:`rotated_side`), s random
signs drawn from a seed (:func:`signs`) and H = Q_b kron H_{2^a} an orthonormal rotation: an
orthonormal DCT-II of the side's odd factor b <= 63 (:func:`odd_factor`) and the Sylvester
Hadamard matrix of its power-of-two factor. Rotated, a trained matrix's entries are close to
Gaussian whatever its structure, which is what the trellis codes well. R is cut into tiles of
16 x 16; each tile is one sequence of 256 weights (row-major) coded by a tail-biting bitshift
trellis of k bits per weight and L state bits whose values are computed from the states
(:func:`state_values`, rbe/include/rbe/code.h), times one scale per row of R.

:func:`encode` chooses the streams by Viterbi search (rbe._code, in C), tile by tile; given the
second moment H = E[x x^T] of the layer's inputs it minimises the error of the layer's outputs
instead of the weights' (LDLQ: the tiles are coded column block by column block, last to first,
each target corrected by the errors already made, weighted by the block LDL factor of the
rotated H).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.linalg
import threadpoolctl
from numpy.typing import ArrayLike
from tqdm.auto import tqdm

from . import _code, _core, kernel
from ._cache import cached
from ._checks import int_in_range

BITS = (2, 3, 4)
TILE = _code.TILE
#: Default state bits per bits per weight, from the time/error table in docs/code.md.
DEFAULT_STATE_BITS = {2: 15, 3: 15, 4: 15}
MIN_STATE_BITS = 8
MAX_STATE_BITS = _code.MAX_STATE_BITS
MAX_ODD = _code.MAX_ODD
#: The centre and spread of the state values' integers (rbe/code.h).
CENTRE = 510
SPREAD = 147.800537109375
#: Row scale over the root mean square of the row's targets: a trellis reproduces values a
#: little smaller than its targets (measured on Gaussian targets, every k and L).
SCALE_GAIN = 1.05
DEFAULT_DAMPING = 0.1
_MAX_SEED = (1 << 62) - 1
_PROGRESS_MIN_TILES = 4096


def check_bits(bits: int) -> int:
    """bits, if it is one of BITS (2, 3 or 4)."""
    return int_in_range("bits", bits, BITS[0], BITS[-1])


def check_state_bits(state_bits: int | None, bits: int) -> int:
    """The state bits for ``bits`` (the default when None), MIN_STATE_BITS .. 16."""
    if state_bits is None:
        return DEFAULT_STATE_BITS[bits]
    return int_in_range("state_bits", state_bits, MIN_STATE_BITS, MAX_STATE_BITS)


def check_seed(seed: int) -> int:
    """seed, if it is an integer in [0, 2**62)."""
    return int_in_range("seed", seed, 0, _MAX_SEED)


def state_values(state_bits: int) -> np.ndarray:
    """The value of every state of ``state_bits`` bits, (sum of the bytes of s * 34038481 +
    76625530 mod 2^32, minus 510) / 147.8: about standard normal over the states. Read-only."""
    return cached(("code.state_values", state_bits), lambda: _state_values(state_bits))


def _state_values(state_bits):
    s = np.arange(1 << state_bits, dtype=np.uint64)
    x = (s * np.uint64(34038481) + np.uint64(76625530)) & np.uint64(0xFFFFFFFF)
    total = sum((x >> np.uint64(8 * i)) & np.uint64(0xFF) for i in range(4)).astype(np.int64)
    values = ((total - CENTRE) / SPREAD).astype(np.float32)
    values.flags.writeable = False
    return values


# ---- rotations ----------------------------------------------------------------------------

def rotated_side(n: int) -> int:
    """The rotated side of n features: the smallest 2^a * b >= n with a >= 4 and b odd <= 63
    (the next multiple of 16 up to 1008, beyond that at most 1/32 more than n)."""
    best = None
    for odd in range(1, MAX_ODD + 1, 2):
        side = max(TILE, 1 << max(0, (-(-n // odd) - 1).bit_length())) * odd
        best = side if best is None else min(best, side)
    return best


def factorise(side: int) -> tuple[int, int]:
    """(2^a, b) with side = 2^a * b, b odd."""
    odd = side
    while odd % 2 == 0:
        odd //= 2
    return side // odd, odd


def odd_factor(odd: int) -> np.ndarray | None:
    """The orthonormal DCT-II matrix of size ``odd`` (None for 1), float64, read-only."""
    return None if odd == 1 else cached(("code.odd_factor", odd), lambda: _dct_matrix(odd))


def _dct_matrix(n):
    matrix = scipy.fft.dct(np.eye(n), norm="ortho", axis=0)
    matrix.flags.writeable = False
    return matrix


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 of uint64 values (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


#: Sides of a layer in :func:`signs`.
INPUTS, OUTPUTS = 0, 1


def signs(seed: int, side: int, n: int) -> np.ndarray:
    """n signs (+-1 float32) of the ``side`` (INPUTS or OUTPUTS) of a layer with ``seed``: bit
    i % 64 of SplitMix64(key + i // 64), key = SplitMix64(2 seed + side)."""
    with np.errstate(over="ignore"):
        key = _splitmix64(np.array([2 * seed + side], np.uint64))[0]
        words = _splitmix64(key + np.arange(-(-n // 64), dtype=np.uint64))
    bits = (words[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    return (1.0 - 2.0 * bits.ravel()[:n]).astype(np.float32)


@dataclass(frozen=True)
class Rotation:
    """One side's rotation: x -> H (s * pad(x)) and back."""

    features: int
    side: int
    signs: np.ndarray

    @property
    def odd_matrix(self) -> np.ndarray | None:
        return odd_factor(factorise(self.side)[1])

    def forward(self, rows: np.ndarray) -> np.ndarray:
        """H (s * pad(v)) for every row v of rows (features wide), float32 (rows, side)."""
        out = np.zeros((rows.shape[0], self.side), np.float32)
        out[:, :self.features] = rows
        out *= self.signs
        _code.rotate_rows(out, self.odd_matrix, False)
        return out

    def backward(self, rows: np.ndarray) -> np.ndarray:
        """(s * H^T v)[:features] for every row v of rows (side wide): the inverse."""
        out = np.array(rows, np.float32, order="C")
        _code.rotate_rows(out, self.odd_matrix, True)
        out *= self.signs
        return np.ascontiguousarray(out[:, :self.features])


def rotation(features: int, seed: int, side: int) -> Rotation:
    """The rotation of a layer's side (INPUTS or OUTPUTS) of ``features`` features."""
    padded = rotated_side(features)
    return Rotation(features, padded, signs(seed, side, padded))


def rotate_matrix(W: np.ndarray, rows: Rotation, cols: Rotation) -> np.ndarray:
    """rows.H (s_rows pad(W) s_cols) cols.H^T, float64 computed in float32 rotations."""
    inner = cols.forward(W.astype(np.float32))                  # each row: H_cols (s * w)
    return rows.forward(np.ascontiguousarray(inner.T)).T.astype(np.float64)


def unrotate_matrix(R: np.ndarray, rows: Rotation, cols: Rotation) -> np.ndarray:
    """The inverse of :func:`rotate_matrix`: W (features x features) from R."""
    inner = rows.backward(np.ascontiguousarray(R.T, dtype=np.float32))   # columns of R back
    return cols.backward(np.ascontiguousarray(inner.T))


# ---- the encoder --------------------------------------------------------------------------

@dataclass
class Coded:
    """What :func:`encode` returns: the streams, the row scales of R and the errors."""

    codes: np.ndarray        #: uint8 (tile rows, tile columns, 32 bits)
    scale: np.ndarray        #: float64 (rotated rows)
    weight_error: float      #: ||W_hat - W||^2 / ||W||^2
    output_error: float      #: tr(E H E^T) / tr(W H W^T) with the rotated, damped H


def check_hessian(hessian: ArrayLike, features: int) -> np.ndarray:
    """A symmetric positive semi-definite (features x features) second moment, float64."""
    H = np.asarray(hessian)
    if H.shape != (features, features):
        raise ValueError(f"hessian must have shape ({features}, {features}), got {H.shape}")
    if H.dtype.kind not in "fiu":
        raise ValueError(f"hessian must hold real numbers, got {H.dtype}")
    H = H.astype(np.float64)
    if not np.isfinite(H).all():
        raise ValueError("hessian contains NaN or infinite values")
    if not np.allclose(H, H.T, rtol=1e-5, atol=1e-8 * max(1.0, float(np.abs(H).max()))):
        raise ValueError("hessian must be symmetric (a second moment E[x x^T])")
    if np.trace(H) <= 0:
        raise ValueError("hessian must have a positive trace (inputs that are not all zero)")
    return (H + H.T) / 2


def _block_ldl(H: np.ndarray) -> np.ndarray:
    """L of H = L D L^T, L unit lower triangular by blocks of TILE (D block diagonal): from
    the Cholesky factor C, L = C blockdiag(C_jj)^-1 and D_j = C_jj C_jj^T."""
    chol = np.linalg.cholesky(H)
    L = np.empty_like(chol)
    for j in range(0, H.shape[0], TILE):
        block = slice(j, j + TILE)
        L[:, block] = scipy.linalg.solve_triangular(chol[block, block], chol[:, block].T,
                                                    lower=True, trans="T").T
    return L


def encode(W: np.ndarray, bits: int, state_bits: int, rows: Rotation, cols: Rotation,
           hessian: np.ndarray | None = None, damping: float = DEFAULT_DAMPING,
           progress: bool | None = None) -> Coded:
    """Code a float64 matrix W (checked by the caller) between the rotations ``rows`` and
    ``cols``; with ``hessian`` (the inputs' second moment, in_features square) minimise the
    error of the outputs (LDLQ), else of the weights."""
    # The coder alternates with BLAS products; BLAS threads, which keep spinning after each
    # product, would hold the cores the coder's threads need.
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        return _encode(W, bits, state_bits, rows, cols, hessian, damping, progress)


def _encode(W, bits, state_bits, rows, cols, hessian, damping, progress):
    R = rotate_matrix(W, rows, cols)
    if hessian is None:
        Hr = None
    else:
        padded = np.zeros((cols.side, cols.side))
        padded[:W.shape[1], :W.shape[1]] = hessian
        Hr = rotate_matrix(padded, cols, cols)
        Hr = (Hr + Hr.T) / 2
        Hr[np.diag_indices_from(Hr)] += damping * max(float(np.mean(np.diag(Hr))), 1e-30)
    scale = SCALE_GAIN * np.sqrt(np.mean(R ** 2, axis=1))
    scale[scale == 0] = 1.0
    coder = _TileCoder(bits, state_bits, rows.side, cols.side, progress)
    if Hr is None:
        decoded = coder.code_columns(R / scale[:, None], 0, cols.side // TILE)
    else:
        decoded = _ldlq(R, scale, Hr, coder)
    coder.close()
    # the least-squares row scale for the chosen streams (weighted by H when given)
    target = R if Hr is None else R @ Hr
    weighted = decoded if Hr is None else decoded @ Hr
    norms = np.einsum("ij,ij->i", decoded, weighted)
    fitted = np.einsum("ij,ij->i", target, decoded) / np.where(norms > 0, norms, 1.0)
    scale = np.where(norms > 0, fitted, scale)
    E = R - scale[:, None] * decoded
    weight = _relative(E, R, None)
    return Coded(coder.codes, scale, weight, weight if Hr is None else _relative(E, R, Hr))


def _relative(E, R, H):
    """||E||^2 / ||R||^2, or tr(E H E^T) / tr(R H R^T)."""
    if H is None:
        return float(np.sum(E ** 2)) / max(float(np.sum(R ** 2)), 1e-300)
    return float(np.einsum("ij,ij->", E @ H, E)) / max(float(np.einsum("ij,ij->", R @ H, R)),
                                                       1e-300)


def _ldlq(R: np.ndarray, scale: np.ndarray, Hr: np.ndarray, coder: _TileCoder) -> np.ndarray:
    """Code R's column blocks last to first, each target corrected by the errors of the blocks
    after it through the block LDL factor of Hr; the decoded values (R / scale units)."""
    L = _block_ldl(Hr)
    decoded = np.empty_like(R)
    feedback = np.zeros_like(R)
    for tj in range(R.shape[1] // TILE - 1, -1, -1):
        block = slice(tj * TILE, (tj + 1) * TILE)
        target = (R[:, block] + feedback[:, block]) / scale[:, None]
        decoded[:, block] = coder.code_columns(target, tj, tj + 1)
        error = R[:, block] - scale[:, None] * decoded[:, block]
        feedback[:, :tj * TILE] += error @ L[block, :tj * TILE]
    return decoded


class _TileCoder:
    """Codes tiles of R / scale into a codes array, column block by column block."""

    def __init__(self, bits, state_bits, rows, cols, progress):
        self.bits, self.state_bits = bits, state_bits
        self.codes = np.zeros((rows // TILE, cols // TILE, 32 * bits), np.uint8)
        tiles = self.codes.shape[0] * self.codes.shape[1]
        if progress is None:
            progress = tiles >= _PROGRESS_MIN_TILES and sys.stderr.isatty()
        self.bar = tqdm(total=tiles, unit="tile", desc="rbe.code", disable=not progress)
        self.simd = _core.SIMD_PATHS[kernel.current_simd()]

    def code_columns(self, target: np.ndarray, tj0: int, tj1: int) -> np.ndarray:
        """Code the tiles of tile columns tj0 .. tj1 - 1 (target holds those columns);
        returns the decoded values, shaped like target."""
        tile_rows, width = self.codes.shape[0], tj1 - tj0
        tiles = target.reshape(tile_rows, TILE, width, TILE).transpose(0, 2, 1, 3)
        tiles = np.ascontiguousarray(tiles.reshape(-1, TILE * TILE), dtype=np.float32)
        streams = np.empty((len(tiles), 32 * self.bits), np.uint8)
        decoded = np.empty_like(tiles)
        errors = np.empty(len(tiles))
        _code.encode_tiles(self.bits, self.state_bits, tiles, streams, decoded,
                           errors, self.simd)
        self.codes[:, tj0:tj1] = streams.reshape(tile_rows, width, -1)
        self.bar.update(len(tiles))
        return decoded.reshape(tile_rows, width, TILE, TILE).transpose(0, 2, 1, 3) \
            .reshape(target.shape).astype(np.float64)

    def close(self):
        self.bar.close()
