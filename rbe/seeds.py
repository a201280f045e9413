"""Packed128 seeds: the 16-byte state of one generated weight block.

Bit layout (docs/design.md, "Seed format")::

    hi[63:44]  r_q      u20   r = r_q * 2**-20              (Q0.20, [0, 1))
    hi[43:20]  theta_q  i24   theta = theta_q * 2**-23      (Q1.23, [-1, 1))
    hi[19:12]  detail   u8    delta = 1 + 0.1 * (detail/255 - 0.5)
    hi[11:0]   sel      4 x u3, class c at bits 3c..3c+2
    lo[63:32]  float32 bits of the r master copy (training)
    lo[31:0]   float32 bits of the theta master copy (training)

Inference reads ``hi`` only; training updates the float copies in ``lo`` and re-derives ``hi``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

DTYPE = np.dtype([("hi", "<u8"), ("lo", "<u8")])

R_BITS, THETA_BITS, DETAIL_BITS, SEL_BITS = 20, 24, 8, 3
R_SHIFT, THETA_SHIFT, DETAIL_SHIFT = 44, 20, 12
R_SCALE = float(1 << 20)
THETA_SCALE = float(1 << 23)
R_MAX = 1.0 - 2.0**-20
THETA_MIN, THETA_MAX = -1.0, 1.0 - 2.0**-23
N_CLASSES, N_STATES = 4, 8
#: The seed's derivative map and its inverse, indexed by state: the two candidate states a
#: position class can move to (docs/design.md, "State transitions").
POS_STATE = np.array([1, 0, 3, 2, 5, 6, 7, 4], dtype=np.uint8)
NEG_STATE = np.array([7, 6, 5, 4, 3, 2, 1, 0], dtype=np.uint8)

#: DTYPE with ``lo`` seen as its two float32 master copies (``lo`` is little-endian, so its
#: low half, theta, comes first on any host).
_MASTERS = np.dtype([("hi", "<u8"), ("theta", "<f4"), ("r", "<f4")])
_SEL_SHIFTS = np.arange(N_CLASSES, dtype=np.uint64) * np.uint64(SEL_BITS)
_SEL_MASK = np.uint64((1 << (SEL_BITS * N_CLASSES)) - 1)


class SeedFields(NamedTuple):
    """Decoded fields of an array of seeds (all arrays shaped like the seeds)."""

    r: np.ndarray             #: float64, from the Q0.20 field of ``hi``
    theta: np.ndarray         #: float64, from the Q1.23 field of ``hi``
    sel: np.ndarray           #: uint8, trailing axis of 4: state of each position class
    detail: np.ndarray        #: uint8
    r_master: np.ndarray      #: float32 master copy from ``lo``
    theta_master: np.ndarray  #: float32 master copy from ``lo``


def _finite(name: str, value: ArrayLike) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (got NaN or inf)")
    return arr


def _integer_field(name: str, value: ArrayLike, hi: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
        arr = np.rint(_finite(name, arr))
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return np.clip(arr, 0, hi).astype(np.uint64)


def pack(r: ArrayLike, theta: ArrayLike, sel: ArrayLike, detail: ArrayLike = 128) -> np.ndarray:
    """Pack parameters into seeds of :data:`DTYPE` (numpy broadcasting).

    ``r`` and ``theta`` are rounded to nearest and saturate to [0, 1 - 2**-20] and
    [-1, 1 - 2**-23]; ``sel`` (trailing axis of 4) saturates to 0..7 and ``detail`` to 0..255.
    The float32 master copies in ``lo`` hold the saturated values.
    """
    r = np.clip(_finite("r", r), 0.0, R_MAX)
    theta = np.clip(_finite("theta", theta), THETA_MIN, THETA_MAX)
    sel = _integer_field("sel", sel, N_STATES - 1)
    if sel.ndim == 0 or sel.shape[-1] != N_CLASSES:
        raise ValueError(f"sel must have a trailing axis of {N_CLASSES}, got shape {sel.shape}")
    detail = _integer_field("detail", detail, 255)
    sel_bits = _selector_bits(sel)

    fixed, detail, sel_bits, r, theta = np.broadcast_arrays(
        _fixed_point_bits(r, theta), detail, sel_bits, r, theta)
    out = np.empty(fixed.shape, dtype=DTYPE)
    out["hi"] = fixed | (detail << np.uint64(DETAIL_SHIFT)) | sel_bits
    out["lo"] = _master_bits(r, theta)
    return out


#: The bits of hi holding r_q and theta_q.
_FIXED_POINT_MASK = np.uint64((((1 << R_BITS) - 1) << R_SHIFT)
                              | (((1 << THETA_BITS) - 1) << THETA_SHIFT))


def _fixed_point_bits(r: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """r_q and theta_q in their places of hi, for r and theta already in range: rounded to
    nearest, saturating."""
    r_q = np.rint(r * R_SCALE).astype(np.int64).clip(0, (1 << R_BITS) - 1).astype(np.uint64)
    theta_q = np.rint(theta * THETA_SCALE).astype(np.int64).clip(-(1 << 23), (1 << 23) - 1)
    theta_u = (theta_q & ((1 << THETA_BITS) - 1)).astype(np.uint64)
    return (r_q << np.uint64(R_SHIFT)) | (theta_u << np.uint64(THETA_SHIFT))


def _master_bits(r: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """lo words holding r and theta as float32."""
    r_bits = r.astype(np.float32).view(np.uint32).astype(np.uint64)
    theta_bits = theta.astype(np.float32).view(np.uint32).astype(np.uint64)
    return (r_bits << np.uint64(32)) | theta_bits


def check(seeds: ArrayLike, *, contiguous: bool = False) -> np.ndarray:
    """``seeds`` as an array of :data:`DTYPE`, or ValueError; with ``contiguous``, it must also
    be C-contiguous (the kernels read it as a flat array)."""
    arr = np.asarray(seeds)
    if arr.dtype != DTYPE:
        raise ValueError(f"seeds must have dtype rbe.seeds.DTYPE {DTYPE}, got "
                         f"{arr.dtype if isinstance(seeds, np.ndarray) else type(seeds).__name__}")
    if contiguous and not arr.flags.c_contiguous:
        raise ValueError("seeds must be C-contiguous (use np.ascontiguousarray)")
    return arr


def masters(seeds: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The float32 r and theta master copies held in ``lo``, as views into ``seeds``
    (writable when ``seeds`` is, so an optimiser can update them in place)."""
    words = check(seeds).view(_MASTERS)
    return words["r"], words["theta"]


def _selector_bits(sel: np.ndarray) -> np.ndarray:
    """The selector field of ``hi`` (uint64) for states ``sel`` (trailing axis of 4)."""
    return np.bitwise_or.reduce(sel.astype(np.uint64) << _SEL_SHIFTS, axis=-1)


def states(hi: np.ndarray) -> np.ndarray:
    """The four state selectors of ``hi`` words, uint8 with a trailing axis of 4."""
    return ((hi[..., None] >> _SEL_SHIFTS) & np.uint64(N_STATES - 1)).astype(np.uint8)


def with_states(hi: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """``hi`` words with their four state selectors replaced by ``sel`` (trailing axis 4)."""
    return (hi & ~_SEL_MASK) | _selector_bits(sel)


def candidates(sel: np.ndarray) -> np.ndarray:
    """The two states each selector of ``sel`` may move to, ``POS_STATE[sel]`` and
    ``NEG_STATE[sel]``, on a new trailing axis of 2."""
    return np.stack([POS_STATE[sel], NEG_STATE[sel]], axis=-1)


def unpack(seeds: ArrayLike) -> SeedFields:
    """Decode seeds into their fields (see :class:`SeedFields`)."""
    seeds = check(seeds)
    hi = seeds["hi"]
    r_q = (hi >> np.uint64(R_SHIFT)) & np.uint64((1 << R_BITS) - 1)
    theta_u = ((hi >> np.uint64(THETA_SHIFT)) & np.uint64((1 << THETA_BITS) - 1)).astype(np.int64)
    theta_q = np.where(theta_u >= (1 << 23), theta_u - (1 << THETA_BITS), theta_u)
    detail = ((hi >> np.uint64(DETAIL_SHIFT)) & np.uint64(0xFF)).astype(np.uint8)
    r_master, theta_master = (m.copy() for m in masters(seeds))
    return SeedFields(r_q.astype(np.float64) / R_SCALE, theta_q.astype(np.float64) / THETA_SCALE,
                      states(hi), detail, r_master, theta_master)


def requantize(seeds: np.ndarray) -> np.ndarray:
    """Re-derive ``hi``'s r and theta fields from the float master copies in ``lo`` (in place).

    Used after an optimiser step: the masters are clamped to the representable ranges and
    rounded to nearest; ``sel`` and ``detail`` are kept.
    """
    seeds = check(seeds)
    r_master, theta_master = masters(seeds)
    r = np.clip(_finite("r", r_master), 0.0, R_MAX)
    theta = np.clip(_finite("theta", theta_master), THETA_MIN, THETA_MAX)
    seeds["hi"] = (seeds["hi"] & ~_FIXED_POINT_MASK) | _fixed_point_bits(r, theta)
    seeds["lo"] = _master_bits(r, theta)
    return seeds


def random(shape: int | tuple[int, ...],
           rng: int | np.random.Generator | None = None) -> np.ndarray:
    """Random seeds: r ~ U[0, 1), theta ~ U[-1, 1), uniform states and detail."""
    rng = np.random.default_rng(rng)
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    return pack(rng.uniform(0.0, 1.0, shape), rng.uniform(-1.0, 1.0, shape),
                rng.integers(0, N_STATES, shape + (N_CLASSES,)),
                rng.integers(0, 256, shape))
