"""Argument checks shared by the layers, the encoder and the file reader: each raises
ValueError naming the argument and what is wrong with it. ``layer_input`` is the one input
contract of every layer kind; the forward plans (rbe._core) word their errors with the
builders here."""
from __future__ import annotations

import sys

import numpy as np
from numpy.typing import ArrayLike

#: Largest layer side: the kernels index rows and columns with C ints.
MAX_FEATURES = 2**31 - 1
#: Most blocks in one layer or matrix (256 MiB of seeds; per-block arrays are allocated
#: before any work, so the count is checked first).
MAX_BLOCKS = 1 << 24
#: Largest magnitude of an input value: every layer computes in float32 somewhere.
MAX_INPUT = float(np.finfo(np.float32).max)


def _is_integer(value) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(name: str, value: object, maximum: int | None = None) -> int:
    """value as an int, if it is a positive integer (bools are not), at most ``maximum``."""
    if not _is_integer(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value!r}")
    return int(value)


def int_in_range(name: str, value: object, low: int, high: int) -> int:
    """value as an int, if it is an integer (bools are not) in [low, high]."""
    if not _is_integer(value) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def positive_pair(name: str, value: object, max_side: int | None = None,
                  max_area: int | None = None, why: str = "") -> tuple[int, int]:
    """value as a pair of positive ints: Python or NumPy integers only (a float such as 2.7,
    a bool or a string is refused, never truncated), each side at most ``max_side`` and their
    product at most ``max_area``; ``why`` says where the limits come from."""
    try:
        a, b = value
    except (TypeError, ValueError):
        a = b = None
    if not (_is_integer(a) and _is_integer(b) and a >= 1 and b >= 1):
        raise ValueError(f"{name} must be a pair of positive integers, got {value!r}")
    a, b = int(a), int(b)
    if max_side is not None and max(a, b) > max_side:
        raise ValueError(f"{name} {(a, b)} has a side longer than {max_side}"
                         + (f" ({why})" if why else ""))
    if max_area is not None and a * b > max_area:
        raise ValueError(f"{name} {(a, b)} has more than {max_area} elements"
                         + (f" ({why})" if why else ""))
    return a, b


def nonnegative_number(name: str, value: object) -> float:
    """value as a float, if it is a finite real number >= 0 (not a string or a bool)."""
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not real or not abs(value) <= sys.float_info.max or value < 0:     # NaN fails too
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def block_count(shape: tuple, block: tuple) -> int:
    """Blocks of a (rows, cols) layer tiled by (h, w) blocks, at most MAX_BLOCKS."""
    (m, n), (h, w) = shape, block
    if max(m, n) > MAX_FEATURES:
        raise ValueError(f"layer shape {shape} exceeds the largest side, {MAX_FEATURES}")
    count = -(-m // h) * -(-n // w)
    if count > MAX_BLOCKS:
        raise ValueError(f"a {m} x {n} layer of {h} x {w} blocks has {count} blocks, more than "
                         f"the limit of {MAX_BLOCKS}")
    return count


def not_finite(name: str) -> ValueError:
    return ValueError(f"{name} must be finite (got NaN or inf)")


def beyond_float32(name: str) -> ValueError:
    return ValueError(f"{name} holds values beyond float32's range (|x| > {MAX_INPUT:.4g})")


def overflow(name: str) -> ValueError:
    return ValueError(f"{name} overflows: the result is not finite (inputs or parameters too "
                      "large)")


def layer_input(name: str, value: ArrayLike, width: int, values: bool = True) -> np.ndarray:
    """A layer's input or upstream gradient, as every layer kind takes it: an array-like of
    float32 or float64 of shape (width,) or (batch, width), batch >= 1, returned as a
    C-contiguous array (a copy only when it is not one). ``values`` also checks that every
    element is finite and within float32's range; the forward plans check that in their own
    C loop, so forward passes leave it to them (``values=False``)."""
    arr = np.asarray(value)
    if arr.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name} must be float32 or float64, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2) or arr.shape[-1] != width or arr.size == 0:
        raise ValueError(f"{name} must have shape ({width},) or (batch, {width}), "
                         f"got {arr.shape}")
    arr = np.ascontiguousarray(arr)
    if not values:
        return arr
    if not np.all(np.isfinite(arr)):
        raise not_finite(name)
    if arr.dtype == np.float64 and max(arr.max(), -arr.min()) > MAX_INPUT:
        raise beyond_float32(name)
    return arr


def finite_output(name: str, value: np.ndarray) -> np.ndarray:
    """A layer's result, if every element is finite (large inputs or parameters can overflow
    float32 even when they are finite)."""
    if not np.all(np.isfinite(value)):
        raise overflow(name)
    return value
