"""Normalised positions inside a block, shared by the seed weight function (``kernel``) and
the hybrid basis (``transforms``): each side depends on this module, not on the other."""
from __future__ import annotations

import numpy as np


def axis_coordinates(n: int) -> np.ndarray:
    """Normalised coordinate 2j/(n-1) - 1 of each of n positions, 0 when n == 1.

    Written as (2j - (n-1)) / (n-1), which is exactly antisymmetric (x[n-1-j] == -x[j]); the
    fast kernel relies on that to copy point-symmetric positions.
    """
    return (2.0 * np.arange(n) - (n - 1)) / (n - 1) if n > 1 else np.zeros(1)


def coordinates(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates x (columns) and y (rows) of a block."""
    h, w = shape
    return axis_coordinates(w), axis_coordinates(h)
