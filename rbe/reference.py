"""The original RBE algorithm, plainly: test oracle and speed baseline.

This module reproduces what the original Rust implementation (jigglypop/RBE, commit d3c9f01)
computes, defects included, as described in docs/design.md, "The original algorithm"; the
quoted section names below are its subsections. It has two renderings:

- **C-backed, float32** (``generate``, ``gradients``, ``fused_backward``, :class:`FusedLayer`, ...):
  scalar C in the original's evaluation order, one function call per weight. It reproduces the
  original's published values ("Published values") and is the baseline the fast kernels are timed
  against.
- **NumPy, float64** (the ``*_np`` functions): the same formulas written independently from the
  description and vectorised over positions. It is the oracle the C code is tested against.

Seeds are arrays of :data:`rbe.seeds.DTYPE`, but interpreted with the **original** layout
("Packed128 layout and quantisers"), not the one :mod:`rbe.seeds` packs::

    lo[63:32]  float32 bits of r         lo[31:0]  float32 bits of theta
    hi[19:0]   state bits S (4-state selectors S[7:0], detail S[19:8]; advanced fields overlap)
    hi         as a whole: the Packed64 word (r_q hi[63:44], theta_q hi[43:20], sigma hi[19:0])

Position (i, j) of an R x C block has normalised coordinates x = 2 j/(C-1) - 1,
y = 2 i/(R-1) - 1; as in the original, a block with one row or one column gives NaN.
Where the original panics on an out-of-range slice, these functions raise ``ValueError``.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from . import _reference
from ._checks import positive_pair
from .seeds import DTYPE, masters, unpack
from .seeds import check as check_seeds

__all__ = [
    "make_seed", "from_continuous", "from_packed128", "q0x", "phase", "r_theta",
    "generate", "generate_advanced", "gradients", "fused_forward", "fused_forward_advanced",
    "analytical_gradients", "packed64_weights", "state_function",
    "state_transition", "advanced_transition", "adam_update",
    "fused_backward", "fused_backward_fast", "fused_backward_adam", "FusedLayer",
    "coords_np", "fused_forward_np", "fused_forward_advanced_np", "gradients_np",
    "packed64_np", "state_function_np", "pattern", "PATTERNS",
]

PI32 = np.float32(np.pi)
TWO_PI32 = np.float32(2.0) * PI32
STATE_MASK = 0xFFFFF


# ---- input checks ---------------------------------------------------------------------------

def _seed_words(seeds: np.ndarray) -> np.ndarray:
    """(n, 2) uint64 view [hi, lo] of a C-contiguous seed array, sharing its memory."""
    if not seeds.flags.c_contiguous:
        raise ValueError("seeds must be C-contiguous")
    return seeds.reshape(-1).view(np.uint64).reshape(-1, 2)


def _mutable_seeds(seeds) -> np.ndarray:
    if not isinstance(seeds, np.ndarray):
        raise ValueError("seeds updated in place must be a numpy array")
    seeds = check_seeds(seeds)
    if not seeds.flags.writeable:
        raise ValueError("seeds updated in place must be writeable")
    _seed_words(seeds)
    return seeds


def _float_array(name: str, value, dtype, ndim: int | None = None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


# ---- seeds and quantisers ("Packed128 layout and quantisers") -------------------------------

def _float_bits(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float32).view(np.uint32).astype(np.uint64)


def make_seed(r: ArrayLike, theta: ArrayLike, state_bits: ArrayLike = 0) -> np.ndarray:
    """Seeds in the original layout (numpy broadcasting).

    Parameters
    ----------
    r, theta : array_like
        Stored as float32 bits in ``lo`` (r in bits 63..32, theta in bits 31..0).
    state_bits : array_like of int
        Stored unchanged as the whole ``hi`` word. The 4-state and advanced forwards read only
        bits 19..0; Packed64 and the advanced transition use all 64 bits.

    Returns
    -------
    ndarray of rbe.seeds.DTYPE
    """
    r, theta, hi = np.broadcast_arrays(np.asarray(r, np.float32), np.asarray(theta, np.float32),
                                       np.asarray(state_bits, dtype=np.uint64))
    out = np.empty(r.shape, dtype=DTYPE)
    out["hi"] = hi
    out["lo"] = (_float_bits(r) << np.uint64(32)) | _float_bits(theta)
    return out


def r_theta(seeds: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The float32 (r, theta) stored in ``lo`` (the original's ``decode()``)."""
    r, theta = masters(seeds)
    return r.copy(), theta.copy()


def _quantise(v: np.ndarray, bits: int) -> np.ndarray:
    """u64(v * f32(2**bits - 1)) for v in [0, 1] or NaN, as Rust's saturating f32 -> u64 cast:
    truncation toward zero, NaN gives 0."""
    if not 1 <= int(bits) <= 32:
        raise ValueError(f"bits must be in 1..32, got {bits}")
    v = v * np.float32(2**int(bits) - 1)
    return np.where(v > 0, v, np.float32(0)).astype(np.uint64)


def q0x(v: ArrayLike, bits: int = 20) -> np.ndarray:
    """``ste_quant_q0x``: u64(clamp(v, 0, 1) * (2**bits - 1)), truncated, in float32."""
    return _quantise(np.clip(np.asarray(v, dtype=np.float32), np.float32(0), np.float32(1)),
                     bits)


def phase(v: ArrayLike, bits: int = 24) -> np.ndarray:
    """``ste_quant_phase``: u64(rem_euclid(v, 2 pi) / 2 pi * (2**bits - 1)), in float32."""
    v = np.fmod(np.asarray(v, dtype=np.float32), TWO_PI32)
    v = np.where(v < 0, v + TWO_PI32, v).astype(np.float32)
    return _quantise(v / TWO_PI32, bits)


def from_continuous(r: ArrayLike, theta: ArrayLike) -> np.ndarray:
    """The original ``Packed128::from_continuous``: hi = (q0x(r) << 44) | (phase(theta) << 20)."""
    hi = (q0x(r) << np.uint64(44)) | (phase(theta) << np.uint64(20))
    return make_seed(r, theta, hi)


# Our states with an original counterpart ("Weight function"): sin, cos, tanh, exp are its
# 0, 1, 2, 3.
# States 3, 5, 6, 7 have none; they get an arbitrary one.
ORIGINAL_STATE = np.array([0, 1, 2, 3, 3, 1, 2, 3], dtype=np.uint64)


def from_packed128(seeds: ArrayLike) -> np.ndarray:
    """The original-layout seeds with the same r, theta, selectors and detail as ``seeds``.

    ``seeds`` are in rbe's own layout (:mod:`rbe.seeds`). States 0, 1, 2, 4 become the
    original's 0..3 and detail 0..255 its 0..4095, so for those states the two weight functions
    agree; states 3, 5, 6, 7 have no counterpart and are mapped to an arbitrary original state
    (fine for timing comparisons, not for values).
    """
    f = unpack(check_seeds(seeds))
    shifts = np.uint64(2) * np.arange(4, dtype=np.uint64)
    state_bits = np.bitwise_or.reduce(ORIGINAL_STATE[f.sel] << shifts, axis=-1)
    detail = np.rint(f.detail * (4095.0 / 255.0)).astype(np.uint64)
    return make_seed(f.r, f.theta, state_bits | (detail << np.uint64(8)))


# ---- C-backed float32 functions -------------------------------------------------------------

# Function selectors of the C core (rbe/include/rbe/reference.h).
FORWARD, ADVANCED, PACKED64, GRAD_R, GRAD_THETA = range(5)


def _blocks(kind: int, seeds, shape) -> np.ndarray:
    seeds = check_seeds(seeds)
    rows, cols = positive_pair("block shape", shape)
    out = np.empty((seeds.size, rows, cols), dtype=np.float32)
    _reference.ref_generate(kind, _seed_words(np.ascontiguousarray(seeds)), rows, cols, out)
    return out.reshape(seeds.shape + (rows, cols))


def _points(kind: int, seeds, i, j, shape) -> np.ndarray:
    seeds, i, j = np.broadcast_arrays(check_seeds(seeds), np.asarray(i), np.asarray(j))
    if i.dtype.kind not in "ui" or j.dtype.kind not in "ui":
        raise ValueError("positions i and j must be integer arrays")
    rows, cols = positive_pair("block shape", shape)
    out = np.empty(seeds.shape, dtype=np.float32)
    _reference.ref_pointwise(kind, _seed_words(np.ascontiguousarray(seeds)),
                             np.ascontiguousarray(i, np.int64).reshape(-1),
                             np.ascontiguousarray(j, np.int64).reshape(-1), rows, cols,
                             out.reshape(-1))
    return out


def generate(seeds: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
    """The original weight generator: ``fused_forward`` ("Four-state weight function") at every
    position.

    One C function call per weight, as the original: the speed baseline for generation.

    Parameters
    ----------
    seeds : ndarray of rbe.seeds.DTYPE, any shape
    shape : (rows, cols)
        Block shape R x C.

    Returns
    -------
    ndarray of float32, shape ``seeds.shape + (rows, cols)``
    """
    return _blocks(FORWARD, seeds, shape)


def generate_advanced(seeds: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
    """``fused_forward_advanced`` (8 states, "Eight-state variant") at every position; see
    :func:`generate`."""
    return _blocks(ADVANCED, seeds, shape)


def gradients(seeds: ArrayLike, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``analytical_gradient_r`` and ``analytical_gradient_theta`` ("Analytic gradients") at
    every position.

    Returns
    -------
    (dW/dr, dW/dtheta) : two float32 arrays shaped ``seeds.shape + (rows, cols)``
    """
    return _blocks(GRAD_R, seeds, shape), _blocks(GRAD_THETA, seeds, shape)


def fused_forward(seeds: ArrayLike, i: ArrayLike, j: ArrayLike,
                  shape: tuple[int, int]) -> np.ndarray:
    """``Packed128::fused_forward(i, j, R, C)`` ("Four-state weight function") at given positions.

    Parameters
    ----------
    seeds : ndarray of rbe.seeds.DTYPE
    i, j : array_like of non-negative int
        Positions; broadcast with ``seeds``. Positions outside the block are not rejected (the
        original does not check them either).
    shape : (R, C)

    Returns
    -------
    ndarray of float32, the broadcast shape of ``seeds``, ``i`` and ``j``.
    """
    return _points(FORWARD, seeds, i, j, shape)


def fused_forward_advanced(seeds: ArrayLike, i: ArrayLike, j: ArrayLike,
                           shape: tuple[int, int]) -> np.ndarray:
    """``fused_forward_advanced(i, j, R, C)`` ("Eight-state variant") at given positions; see
    :func:`fused_forward`."""
    return _points(ADVANCED, seeds, i, j, shape)


def analytical_gradients(seeds: ArrayLike, i: ArrayLike, j: ArrayLike,
                         shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``analytical_gradient_r`` and ``analytical_gradient_theta`` ("Analytic gradients") at given
    positions;
    see :func:`fused_forward`."""
    return _points(GRAD_R, seeds, i, j, shape), _points(GRAD_THETA, seeds, i, j, shape)


def packed64_weights(hi: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
    """Packed64 ``compute_weight`` (the CORDIC path, "Packed64 (CORDIC)") at every position.

    Parameters
    ----------
    hi : array_like of uint64
        Packed64 words (a Packed128 seed's ``hi``).
    shape : (rows, cols)

    Returns
    -------
    ndarray of float32, shape ``hi.shape + (rows, cols)``
    """
    hi = np.asarray(hi)
    if hi.dtype.kind not in "ui":
        raise ValueError(f"hi must be an integer array, got dtype {hi.dtype}")
    return _blocks(PACKED64, make_seed(0.0, 0.0, hi), shape)


def state_function(state: ArrayLike, value: ArrayLike, phase: ArrayLike) -> np.ndarray:
    """``compute_state_function(state, input, phase)`` ("Eight-state variant"), float32,
    broadcasting."""
    state, value, phase = np.broadcast_arrays(np.asarray(state), np.asarray(value),
                                              np.asarray(phase))
    if state.dtype.kind not in "ui":
        raise ValueError(f"state must be an integer array, got dtype {state.dtype}")
    out = np.empty(state.shape, dtype=np.float32)
    _reference.ref_state_function(np.ascontiguousarray(state, np.int32).reshape(-1),
                                  _float_array("value", value, np.float32).reshape(-1),
                                  _float_array("phase", phase, np.float32).reshape(-1),
                                  out.reshape(-1))
    return out


def _transition(hi, g, i, j, advanced: bool) -> np.ndarray:
    hi, g, i, j = np.broadcast_arrays(np.asarray(hi), np.asarray(g), np.asarray(i),
                                      np.asarray(j))
    if hi.dtype.kind not in "ui" or i.dtype.kind not in "ui" or j.dtype.kind not in "ui":
        raise ValueError("hi, i and j must be integer arrays")
    out = np.array(hi, dtype=np.uint64, order="C")
    _reference.ref_state_transition(out.reshape(-1),
                                    _float_array("g", g, np.float32).reshape(-1),
                                    np.ascontiguousarray(i, np.int64).reshape(-1),
                                    np.ascontiguousarray(j, np.int64).reshape(-1), advanced)
    return out


def state_transition(hi: ArrayLike, g: ArrayLike, i: ArrayLike, j: ArrayLike) -> np.ndarray:
    """``apply_state_transition(g, i, j)`` ("Original state transitions") applied once to each
    ``hi`` word.

    The selector of class c = (31 i + j) & 3 swaps 0<->1, 2<->3 when g > 0.1 and 0<->3, 1<->2
    when g < -0.1 (strict thresholds; NaN changes nothing). Arguments broadcast.

    Returns
    -------
    ndarray of uint64: the new ``hi`` words.
    """
    return _transition(hi, g, i, j, False)


def advanced_transition(hi: ArrayLike, g: ArrayLike, i: ArrayLike, j: ArrayLike) -> np.ndarray:
    """``advanced_state_transition(g, i, j)`` ("Original state transitions") applied once to each
    ``hi`` word.

    It writes the unmasked word, so fields of classes h >= 2 land in theta_q ("Overlapping
    bit fields").
    """
    return _transition(hi, g, i, j, True)


def adam_update(p: float, m: float, v: float, g: float, lr: float,
                t: int) -> tuple[float, float, float]:
    """The original ``adam_update`` ("Training rules") in float32; ``t = 0`` divides by zero.

    Returns
    -------
    (p, m, v) : the updated parameter and moments, as Python floats.
    """
    return _reference.ref_adam(p, m, v, g, lr, int(t))


def _single_seed_args(target, pred, seed):
    target = _float_array("target", target, np.float32, ndim=2)
    pred = _float_array("pred", pred, np.float32)
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {pred.shape}, target {target.shape}")
    seed = _mutable_seeds(seed)
    if seed.size != 1:
        raise ValueError(f"expected exactly one seed, got {seed.size}")
    return target, pred, _seed_words(seed)[0]


def fused_backward(target: ArrayLike, pred: ArrayLike, seed: np.ndarray,
                   lr: float) -> tuple[float, float]:
    """math.rs ``fused_backward`` ("Training rules"): one sequential finite-difference SGD step.

    Visits the R x C elements in row-major order; each applies a state transition with its error
    e = pred - target to ``seed`` before its central differences (eps 1e-4, at the initial r,
    theta) are taken. The step uses the mean of e * dW (no factor 2); r is clamped to [0.1, 2].

    Parameters
    ----------
    target, pred : (R, C) arrays (converted to float32)
    seed : one seed (0-d or size-1 array of DTYPE), updated in place
    lr : float

    Returns
    -------
    (mse, rmse) of the input prediction.
    """
    target, pred, words = _single_seed_args(target, pred, seed)
    mse = _reference.ref_fused_backward(target.reshape(-1), pred.reshape(-1), words,
                                        target.shape[0], target.shape[1], lr, False)
    return mse, float(np.sqrt(np.float32(mse)))


def fused_backward_fast(target: ArrayLike, pred: ArrayLike, seed: np.ndarray,
                        lr: float) -> tuple[float, float]:
    """math.rs ``fused_backward_fast``: as :func:`fused_backward` with the analytic gradients
    of the current (post-transition) seed instead of finite differences."""
    target, pred, words = _single_seed_args(target, pred, seed)
    mse = _reference.ref_fused_backward(target.reshape(-1), pred.reshape(-1), words,
                                        target.shape[0], target.shape[1], lr, True)
    return mse, float(np.sqrt(np.float32(mse)))


def fused_backward_adam(target: ArrayLike, pred: ArrayLike, seed: np.ndarray, moments: np.ndarray,
                        epoch: int, lr: float) -> float:
    """math.rs ``fused_backward_adam``: summed (not averaged) gradients, one Adam step.

    Parameters
    ----------
    moments : float32 array of 4 ``[m_r, v_r, m_theta, v_theta]``, updated in place
    epoch : int
        Adam's step count t (0 divides by zero, as the original).

    Returns
    -------
    float: the RMSE of the input prediction.
    """
    target, pred, words = _single_seed_args(target, pred, seed)
    if not (isinstance(moments, np.ndarray) and moments.dtype == np.float32
            and moments.shape == (4,) and moments.flags.c_contiguous):
        raise ValueError("moments must be a contiguous float32 array of shape (4,)")
    return _reference.ref_fused_backward_adam(target.reshape(-1), pred.reshape(-1), words, moments,
                                              target.shape[0], target.shape[1], int(epoch), lr)


class FusedLayer:
    """The original ``FusedEncodedLayer`` ("Seed-block layer"): one seed per block of a weight
    matrix.

    Block (bi, bj) covers outputs bi*BH .. bi*BH + BH - 1 and inputs bj*BW .. bj*BW + BW - 1;
    its weights are ``fused_forward`` with block-local positions and the nominal (BH, BW).

    Parameters
    ----------
    seeds : (grid_rows, grid_cols) array of DTYPE
        Held (not copied when already C-contiguous); the backward passes update it in place.
    block : (BH, BW)
    shape : (M, N)
        Total outputs and inputs. The original panics when the grid's columns overrun N (any
        pass) or its rows overrun M (backward passes); here that raises ``ValueError``.
    """

    def __init__(self, seeds: ArrayLike, block: tuple[int, int], shape: tuple[int, int]):
        seeds = np.ascontiguousarray(check_seeds(seeds))
        if seeds.ndim != 2 or seeds.size == 0:
            raise ValueError(f"seeds must be a non-empty 2-D grid, got shape {seeds.shape}")
        self.block = positive_pair("block", block)
        self.shape = positive_pair("shape", shape)
        bw, n = self.block[1], self.shape[1]
        if seeds.shape[1] * bw > n:
            raise ValueError(f"{seeds.shape[1]} block columns of width {bw} overrun {n} inputs")
        self.seeds = seeds
        self.moments = np.zeros((4,) + seeds.shape, dtype=np.float32)

    def _words(self) -> np.ndarray:
        return _seed_words(self.seeds).reshape(self.seeds.shape + (2,))

    def _vector(self, name: str, v, length: int) -> np.ndarray:
        v = _float_array(name, v, np.float64, ndim=1)
        if v.shape[0] != length:
            raise ValueError(f"{name} must have length {length}, got {v.shape[0]}")
        return v

    def _check_rows(self) -> None:
        bh, m = self.block[0], self.shape[0]
        if self.seeds.shape[0] * bh > m:
            raise ValueError(f"{self.seeds.shape[0]} block rows of height {bh} overrun "
                             f"{m} outputs")

    def forward_precise(self, x: ArrayLike) -> np.ndarray:
        """``fused_forward_precise``: y = W x, weights in float32, float64 accumulation.

        Ragged block rows beyond M are skipped, as the original does.
        """
        x = self._vector("x", x, self.shape[1])
        y = np.empty(self.shape[0], dtype=np.float64)
        _reference.ref_layer_forward(self._words(), *self.block, x, y)
        return y

    def _backward_arrays(self, x, dy):
        """Checked x and dy, and the dx to fill (the backward passes need every row)."""
        self._check_rows()
        x = self._vector("x", x, self.shape[1])
        return x, self._vector("dy", dy, self.shape[0]), np.empty_like(x)

    def backward_precise(self, x: ArrayLike, dy: ArrayLike, lr: float) -> np.ndarray:
        """``fused_backward_precise``: per-element SGD on the seeds, in visiting order.

        For each weight (blocks row-major, then elements row-major): g = dy_i x_j in float32,
        state transition, eps 1e-5 central differences at the current seed, immediate update
        (r clamped to [0, 1]), then dx_j += dy_i W_ij with the updated seed.

        Returns
        -------
        dx : float64 array of length N
        """
        x, dy, dx = self._backward_arrays(x, dy)
        _reference.ref_layer_backward_precise(self._words(), *self.block, x, dy, lr, dx)
        return dx

    def backward_adam(self, x: ArrayLike, dy: ArrayLike, epoch: int, lr: float) -> np.ndarray:
        """``fused_backward_adam``: summed gradients per block, one Adam step per block.

        Uses and updates :attr:`moments` (planes m_r, v_r, m_theta, v_theta).

        Returns
        -------
        dx : float64 array of length N
        """
        x, dy, dx = self._backward_arrays(x, dy)
        _reference.ref_layer_backward_adam(self._words(), *self.block, x, dy, self.moments,
                                           int(epoch), lr, dx)
        return dx


# ---- NumPy float64 oracle (written from the description, not from the C code) ----------------

def coords_np(shape: tuple[int, int]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalised coordinates (x, y, rho, phi) of an R x C block, float64 ("Coordinates").

    A block with one row (column) gives NaN y (x), as the original's 0/0.
    """
    rows, cols = positive_pair("block shape", shape)
    i, j = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64),
                       indexing="ij")
    with np.errstate(invalid="ignore", divide="ignore"):
        x = j / (cols - 1) * 2 - 1
        y = i / (rows - 1) * 2 - 1
    return x, y, np.hypot(x, y), np.arctan2(y, x)


def _classes(shape, modulus: int) -> np.ndarray:
    rows, cols = positive_pair("block shape", shape)
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return ((j - i) % modulus).astype(np.uint64)


def _np_params(seeds, r=None, theta=None):
    """r, theta (float64) and state bits, each with two trailing axes for broadcasting.

    ``r`` and ``theta``, when given, replace the float32 values stored in the seeds.
    """
    seeds = check_seeds(seeds)
    stored = r_theta(seeds)
    r, theta = (np.asarray(v if v is not None else s, dtype=np.float64)[..., None, None]
                for v, s in zip((r, theta), stored))
    state = (seeds["hi"] & np.uint64(STATE_MASK))[..., None, None]
    return r, theta, state


def _field(state, shift, mask: int) -> np.ndarray:
    return ((state >> shift) & np.uint64(mask)).astype(np.int64)


def fused_forward_np(seeds: ArrayLike, shape: tuple[int, int], r: ArrayLike | None = None,
                     theta: ArrayLike | None = None) -> np.ndarray:
    """Float64 rendering of the 4-state ``fused_forward``; shape as :func:`generate`.

    ``r`` and ``theta`` (float64, broadcasting with ``seeds``) optionally replace the float32
    values stored in the seeds, e.g. for finite differences finer than float32 allows.
    """
    _, _, rho, phi = coords_np(shape)
    r, theta, state = _np_params(seeds, r, theta)
    base = np.clip(r * (1 - rho) + theta, 0, 1)
    sel = _field(state, 2 * _classes(shape, 4), 3)
    shaped = np.select([sel == 0, sel == 1, sel == 2],
                       [np.abs(np.sin(phi + theta)), np.abs(np.cos(phi + theta)),
                        np.tanh(rho * r + theta)],
                       1 - np.exp(rho * r) / 2)
    delta = 1 + 0.1 * (_field(state, 8, 0xFFF) / 4095 - 0.5)
    return np.clip(base * shaped * delta, 0, 1)


def gradients_np(seeds: ArrayLike, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Float64 rendering of the analytic gradients: (dW/dr, dW/dtheta).

    Zero where the clamp of the base or of the weight is saturated (open intervals).
    """
    _, _, rho, phi = coords_np(shape)
    r, theta, state = _np_params(seeds)
    u = r * (1 - rho) + theta
    inside = (u > 0) & (u < 1)
    base, gate = np.clip(u, 0, 1), inside.astype(np.float64)
    a = phi + theta
    t = np.tanh(rho * r + theta)
    e = np.exp(rho * r)
    sel = _field(state, 2 * _classes(shape, 4), 3)
    # Derivatives of |sin a| and |cos a| take the + branch at sin a = 0 and the - at cos a = 0.
    d_abs_sin = np.where(np.sin(a) >= 0, np.cos(a), -np.cos(a))
    d_abs_cos = np.where(np.cos(a) >= 0, -np.sin(a), np.sin(a))
    f = [np.abs(np.sin(a)), np.abs(np.cos(a)), t, 1 - e / 2]
    df_dr = [0.0, 0.0, (1 - t * t) * rho, -e * rho / 2]
    df_dt = [d_abs_sin, d_abs_cos, 1 - t * t, 0.0]
    cases = [sel == s for s in range(4)]
    shaped = np.select(cases, f)
    dm_dr = (1 - rho) * gate * shaped + base * np.select(cases, df_dr)
    dm_dt = gate * shaped + base * np.select(cases, df_dt)
    delta = 1 + 0.1 * (_field(state, 8, 0xFFF) / 4095 - 0.5)
    weight = base * shaped * delta
    live = (weight > 0) & (weight < 1)
    return np.where(live, dm_dr * delta, 0.0), np.where(live, dm_dt * delta, 0.0)


def state_function_np(state: ArrayLike, value: ArrayLike, phase: ArrayLike) -> np.ndarray:
    """Float64 rendering of ``compute_state_function``, broadcasting."""
    state = np.asarray(state)
    si = np.clip(np.asarray(value, dtype=np.float64), -10, 10)
    sp = np.clip(np.asarray(phase, dtype=np.float64), -10, 10)
    prod = si * sp
    with np.errstate(over="ignore", divide="ignore"):
        cases = [
            np.sin(si + sp),
            np.cos(si + sp),
            np.tanh(prod),
            1 / np.maximum(np.cosh(prod) ** 2, 1e-6),
            np.minimum(np.exp(prod * 0.1), 10),
            np.clip(np.log(np.abs(prod) + 1e-6), -10, 10),
            np.clip(1 / (prod + 1e-3), -100, 100),
            np.clip(prod + 0.1 * si * si, -10, 10),
        ]
    value = np.select([state == s for s in range(8)], cases, prod)
    return np.where(np.isfinite(value), np.clip(value, -1, 1), 0.0)


def fused_forward_advanced_np(seeds: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
    """Float64 rendering of ``fused_forward_advanced``."""
    _, _, rho, phi = coords_np(shape)
    r, theta, state = _np_params(seeds)
    base = np.clip(r * (1 - rho) + theta, 0, 1)
    h = _classes(shape, 8)
    primary = _field(state, 3 * h, 7)
    secondary = _field(state, 2 * (h + np.uint64(8)), 3)
    v = state_function_np(primary, phi + theta / 2, r)
    mod = np.select([secondary == 0, secondary == 1, secondary == 2],
                    [np.ones_like(rho), 0.8 + 0.4 * np.sin(rho * 3.14159), 1 - 0.3 * rho],
                    (1 + np.cos(2 * phi)) / 2)
    delta = 1 + 0.05 * (_field(state, 16, 0xF) / 15 - 0.5)
    return np.clip(base * np.abs(v) * mod * delta, 0, 1)


def packed64_np(hi: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
    """Float64 rendering of Packed64 ``compute_weight``; shape as :func:`packed64_weights`.
    """
    hi = np.asarray(hi, dtype=np.uint64)[..., None, None]
    _, _, rho, phi = coords_np(shape)
    r = (hi >> np.uint64(44)).astype(np.float64) / (2**20 - 1)
    theta = _field(hi, np.uint64(20), 0xFFFFFF) / (2**24 - 1) * 2 * float(PI32)
    x, y = r * np.cos(phi + theta), r * np.sin(phi + theta)
    for k in range(20):
        sigma = np.where(_field(hi, np.uint64(k), 1) == 1, 1.0, -1.0)
        x, y = x - sigma * y * 2.0**-k, y + sigma * x * 2.0**-k
        if k % 4 == 0:
            norm = np.hypot(x, y)
            scale = np.where(norm > 1e-9, np.tanh(norm), 1.0)  # tanh(rho), not tanh(rho)/rho
            x, y = x * scale, y * scale
    return x / 1.64676


# ---- target patterns of the original tests ("Test scenarios") ---------------------------------

def _unit_grid(shape, dtype=np.float64):
    """(i/(R-1), j/(C-1)) on the grid; NaN for a single row or column."""
    rows, cols = positive_pair("block shape", shape)
    i = np.arange(rows, dtype=dtype)[:, None]
    j = np.arange(cols, dtype=dtype)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.broadcast_arrays(i / dtype(rows - 1), j / dtype(cols - 1))


def _gravity(rows, cols):
    # float32 in the original's operation order: (2 j)/(C - 1) - 1.
    one, two = np.float32(1), np.float32(2)
    i = np.arange(rows, dtype=np.float32)[:, None]
    j = np.arange(cols, dtype=np.float32)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        x = two * j / np.float32(cols - 1) - one
        y = two * i / np.float32(rows - 1) - one
        rho = np.sqrt(x * x + y * y)
        field = one / np.where(rho < np.float32(1e-6), np.float32(1e-6), rho)
    top = field.max()
    return field / top if top > 0 else field


def _ramp(rows, cols):
    return _unit_grid((rows, cols), np.float32)[0]


def _c1(rows, cols):
    u, v = _unit_grid((rows, cols))
    x, y = v * 2 * np.pi, u * 2 * np.pi
    return (np.sin(x) * np.cos(y) + np.cos(2 * x) * np.sin(3 * y)
            + np.tanh(0.5 * x + 0.7 * y)) * 0.3 + 0.5


def _c2(rows, cols):
    _, _, rho, phi = coords_np((rows, cols))
    return np.clip(np.sin(3 * rho) * np.cos(5 * phi) + np.exp(1 - rho) * 0.3, 0, 1)


def _c3(rows, cols):
    x, y, _, _ = coords_np((rows, cols))
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    chess = np.where((i // 4 + j // 4) % 2 == 0, 0.8, 0.2)
    return np.clip(0.7 * chess + 0.3 * np.exp(-(x * x + y * y) * 2), 0, 1)


def _c4(rows, cols):
    u, v = _unit_grid((rows, cols))
    x, y = v * 4 - 2, u * 4 - 2
    return np.clip(np.tanh(np.abs(x) + np.abs(y)) + 0.5 * np.sin(x * y)
                   + 0.3 * np.exp(-0.5 * (x * x + y * y)), 0, 1)


PATTERNS = {"gravity": _gravity, "ramp": _ramp, "C1": _c1, "C2": _c2, "C3": _c3, "C4": _c4}


def pattern(name: str, rows: int, cols: int) -> np.ndarray:
    """A target matrix of the original tests ("Test scenarios"), float32, shape (rows, cols).

    ``gravity`` (normalised 1/rho field) and ``ramp`` (T(i, j) = i/(R-1)) are computed in
    float32 in the original's operation order; ``C1``..``C4`` in float64, rounded to float32.
    As in the original, a single row or column gives NaN coordinates.
    """
    if name not in PATTERNS:
        raise ValueError(f"unknown pattern {name!r}; choose one of {sorted(PATTERNS)}")
    rows, cols = positive_pair("(rows, cols)", (rows, cols))
    return np.ascontiguousarray(PATTERNS[name](rows, cols), dtype=np.float32)
