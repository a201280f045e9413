"""Per-shape linear operators of hybrid blocks: the smooth basis and the residual transforms.

Residual transforms are separable: a block E (h x w) has coefficients C = F_h E F_w^T and is
rebuilt as E = G_h C G_w^T, where F_n (analysis) and G_n = F_n^-1 (synthesis) are n x n matrices
that depend only on the length n of one axis. Two kinds exist:

- ``"dct"``: the orthonormal DCT-II (``scipy.fft``), so G = F^T.
- ``"dwt"``: a PyWavelets multilevel 1-D DWT in periodization mode applied to every row, then to
  every column (the *standard* 2-D decomposition). Unlike ``pywt.wavedec2``, which recurses on the
  low/low quadrant only, this is exactly of the form F_h E F_w^T, which the transform-domain
  products need. The levels are limited to the factors of two of n (and to
  ``pywt.dwt_max_level``) so that every level sees an even length and F_n stays square and
  invertible; an axis of odd length is left untransformed. Orthogonal wavelets give G = F^T,
  biorthogonal ones (e.g. ``bior3.1``) do not.

Operators are built once per (length, kind, wavelet) and per block shape, cached behind a lock,
and returned read-only.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pywt
import scipy.fft

TRANSFORMS = ("dct", "dwt")
TRANSFORM_IDS = {name: i for i, name in enumerate(TRANSFORMS)}
DEFAULT_WAVELET = "db2"
NUM_BASIS = 8

_cache: dict = {}
_cache_lock = threading.Lock()


def _cached(key, build):
    """Return the cached value for key, building it once (thread-safe)."""
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    value = build()
    with _cache_lock:
        return _cache.setdefault(key, value)


def _read_only(a):
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class Operator1D:
    """Analysis F (coefficients = F @ x) and synthesis G = F^-1 for one axis length."""

    n: int
    kind: str
    wavelet: str
    level: int
    analysis: np.ndarray
    synthesis: np.ndarray
    orthonormal: bool


def check_wavelet(wavelet: str) -> pywt.Wavelet:
    """Return the PyWavelets discrete wavelet named ``wavelet`` or raise ValueError."""
    if wavelet not in pywt.wavelist(kind="discrete"):
        raise ValueError(f"unknown discrete wavelet {wavelet!r} "
                         "(see pywt.wavelist(kind='discrete'))")
    return pywt.Wavelet(wavelet)


def dwt_level(n: int, wavelet: str) -> int:
    """Levels used along an axis of length n: every level must see an even length."""
    twos = (n & -n).bit_length() - 1
    return max(0, min(twos, pywt.dwt_max_level(n, check_wavelet(wavelet).dec_len)))


def _dwt_along(x, wavelet, level, axis):
    if level == 0:
        return x
    parts = pywt.wavedec(x, wavelet, mode="periodization", level=level, axis=axis)
    return np.concatenate(parts, axis=axis)


def _idwt_along(c, wavelet, level, axis):
    if level == 0:
        return c
    n = c.shape[axis]
    sizes = [n >> level] + [n >> lv for lv in range(level, 0, -1)]
    parts = np.split(c, np.cumsum(sizes)[:-1], axis=axis)
    return pywt.waverec(parts, wavelet, mode="periodization", axis=axis)


def _build_operator(n, kind, wavelet):
    eye = np.eye(n)
    if kind == "dct":
        analysis = scipy.fft.dct(eye, type=2, norm="ortho", axis=0)
        level, synthesis = 0, analysis.T
    else:
        level = dwt_level(n, wavelet)
        analysis = _dwt_along(eye, wavelet, level, axis=0)
        synthesis = _idwt_along(eye, wavelet, level, axis=0)
    orthonormal = bool(np.allclose(analysis @ analysis.T, eye, atol=1e-8))
    return Operator1D(n, kind, wavelet if kind == "dwt" else "", level,
                      _read_only(analysis), _read_only(synthesis), orthonormal)


def operator(n: int, kind: str, wavelet: str = DEFAULT_WAVELET) -> Operator1D:
    """The cached 1-D operator of ``kind`` ("dct" or "dwt") for axis length n."""
    if kind not in TRANSFORM_IDS:
        raise ValueError(f"unknown transform {kind!r}, expected one of {TRANSFORMS}")
    if n < 1:
        raise ValueError(f"axis length must be >= 1, got {n}")
    if kind == "dct":
        wavelet = ""
    else:
        check_wavelet(wavelet)
    return _cached(("op", n, kind, wavelet), lambda: _build_operator(n, kind, wavelet))


def analyze(blocks: np.ndarray, kind: str, wavelet: str = DEFAULT_WAVELET) -> np.ndarray:
    """Coefficients F_h E F_w^T of every block of a (n, h, w) stack, batched over blocks."""
    if kind == "dct":
        return scipy.fft.dctn(blocks, type=2, norm="ortho", axes=(1, 2))
    _, h, w = blocks.shape
    rows = _dwt_along(blocks, wavelet, dwt_level(w, wavelet), axis=2)
    return _dwt_along(rows, wavelet, dwt_level(h, wavelet), axis=1)


def synthesize(coefs: np.ndarray, kind: str, wavelet: str = DEFAULT_WAVELET) -> np.ndarray:
    """Blocks G_h C G_w^T of a (n, h, w) coefficient stack (inverse of ``analyze``)."""
    if kind == "dct":
        return scipy.fft.idctn(coefs, type=2, norm="ortho", axes=(1, 2))
    _, h, w = coefs.shape
    cols = _idwt_along(coefs, wavelet, dwt_level(h, wavelet), axis=1)
    return _idwt_along(cols, wavelet, dwt_level(w, wavelet), axis=2)


def _coordinates(n):
    # DESIGN 3: x = 2j/(n-1) - 1, and 0 for a single row or column (the original divides by 0).
    return np.zeros(1) if n == 1 else 2.0 * np.arange(n) / (n - 1) - 1.0


def _build_basis(h, w):
    y, x = np.meshgrid(_coordinates(h), _coordinates(w), indexing="ij")
    rho2 = x * x + y * y
    funcs = [np.ones_like(x), np.sqrt(rho2), rho2, np.cos(np.pi * x), np.cos(np.pi * y),
             np.cos(2 * np.pi * x), np.cos(2 * np.pi * y), np.cos(np.pi * x) * np.cos(np.pi * y)]
    return _read_only(np.stack(funcs))


def basis(h: int, w: int) -> np.ndarray:
    """The 8 smooth basis functions on an h x w block, shape (8, h, w), float64."""
    if h < 1 or w < 1:
        raise ValueError(f"block shape must be positive, got {(h, w)}")
    return _cached(("basis", h, w), lambda: _build_basis(h, w))


def basis_pinv(h: int, w: int) -> np.ndarray:
    """Pseudo-inverse of the (h*w, 8) design matrix, shape (8, h*w).

    The cut-off is the one ``numpy.linalg.lstsq`` uses (eps * max(h*w, 8) relative), so the fit
    is the minimum-norm least-squares solution also on small, rank-deficient shapes.
    """
    def build():
        design = basis(h, w).reshape(NUM_BASIS, h * w).T
        rcond = np.finfo(np.float64).eps * max(design.shape)
        return _read_only(np.linalg.pinv(design, rcond=rcond))
    return _cached(("pinv", h, w), build)
