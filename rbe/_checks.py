"""Argument checks shared by the layers and the encoder: each raises ValueError naming the
argument and what is wrong with it."""
from __future__ import annotations

import numpy as np


def positive_int(name: str, value) -> int:
    """value as an int, if it is a positive integer (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def layer_input(name: str, value, width: int) -> np.ndarray:
    """A layer's input or upstream gradient: float32/float64, shape (width,) or
    (batch, width) with batch >= 1, finite."""
    arr = np.asarray(value)
    if arr.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name} must be float32 or float64, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2) or arr.shape[-1] != width or arr.size == 0:
        raise ValueError(f"{name} must have shape ({width},) or (batch, {width}), "
                         f"got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (got NaN or inf)")
    return arr
