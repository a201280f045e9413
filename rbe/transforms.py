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

import dataclasses

import numpy as np
import pywt
import scipy.fft
from numpy.typing import DTypeLike

from ._cache import cached
from ._checks import positive_pair
from ._coordinates import axis_coordinates

TRANSFORMS = ("dct", "dwt")
TRANSFORM_IDS = {name: i for i, name in enumerate(TRANSFORMS)}
DEFAULT_WAVELET = "db2"
NUM_BASIS = 8

def _read_only(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


@dataclasses.dataclass(frozen=True)
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


def operator(n: int, kind: str, wavelet: str = DEFAULT_WAVELET,
             dtype: DTypeLike = np.float64) -> Operator1D:
    """The cached 1-D operator of ``kind`` ("dct" or "dwt") for axis length n, in ``dtype``."""
    if kind not in TRANSFORM_IDS:
        raise ValueError(f"unknown transform {kind!r}, expected one of {TRANSFORMS}")
    if n < 1:
        raise ValueError(f"axis length must be >= 1, got {n}")
    if kind == "dct":
        wavelet = ""
    else:
        check_wavelet(wavelet)
    dtype = np.dtype(dtype)
    if dtype != np.float64:
        exact = operator(n, kind, wavelet)
        return cached(("op", n, kind, wavelet, dtype), lambda: dataclasses.replace(
            exact, analysis=_read_only(exact.analysis.astype(dtype)),
            synthesis=_read_only(exact.synthesis.astype(dtype))))
    return cached(("op", n, kind, wavelet, dtype), lambda: _build_operator(n, kind, wavelet))


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


def _basis_functions(h, w):
    y, x = np.meshgrid(axis_coordinates(h), axis_coordinates(w), indexing="ij")
    rho2 = x * x + y * y
    funcs = [np.ones_like(x), np.sqrt(rho2), rho2, np.cos(np.pi * x), np.cos(np.pi * y),
             np.cos(2 * np.pi * x), np.cos(2 * np.pi * y), np.cos(np.pi * x) * np.cos(np.pi * y)]
    return np.stack(funcs)


def basis_norms(h: int, w: int) -> np.ndarray:
    """Frobenius norms of the 8 functions on an h x w block (1 for a function that is 0 there).

    ``basis`` divides by them; a coefficient c of the unnormalised function (format version 1)
    is c * norm of the normalised one.
    """
    def build():
        norms = np.linalg.norm(_basis_functions(h, w).reshape(NUM_BASIS, -1), axis=1)
        return _read_only(np.where(norms > 0, norms, 1.0))
    return cached(("basis norms", h, w), build)


def basis(h: int, w: int, dtype: DTypeLike = np.float64) -> np.ndarray:
    """The 8 smooth basis functions on an h x w block, each of unit norm, shape (8, h, w).

    Unit norm puts basis coefficients on the scale of orthonormal transform coefficients, so one
    learning rate fits both.
    """
    h, w = positive_pair("block shape", (h, w))
    dtype = np.dtype(dtype)
    if dtype != np.float64:
        return cached(("basis", h, w, dtype), lambda: _read_only(basis(h, w).astype(dtype)))
    return cached(("basis", h, w, dtype), lambda: _read_only(
        _basis_functions(h, w) / basis_norms(h, w)[:, None, None]))


def basis_pinv(h: int, w: int) -> np.ndarray:
    """Pseudo-inverse of the (h*w, 8) design matrix, shape (8, h*w).

    The cut-off is the one ``numpy.linalg.lstsq`` uses (eps * max(h*w, 8) relative), so the fit
    is the minimum-norm least-squares solution also on small, rank-deficient shapes.
    """
    def build():
        design = basis(h, w).reshape(NUM_BASIS, h * w).T
        rcond = np.finfo(np.float64).eps * max(design.shape)
        return _read_only(np.linalg.pinv(design, rcond=rcond))
    return cached(("pinv", h, w), build)


def basis_factors(h: int, w: int,
                  dtype: DTypeLike = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Low-rank factors of the basis: basis(h, w)[k] == left[:, k*r:(k+1)*r] @ right.

    Seven of the eight functions are sums of products f(y) g(x), so the stacked (8h, w) basis
    has a small numerical rank r (rho is the only non-separable one). Products then cost r per
    block column and 8r per block instead of 8h. The rank is the numerical rank at the
    precision of ``dtype``: for float64 numpy's ``matrix_rank`` cut-off (18 for 64 x 64), for
    float32 singular values below float32's epsilon of the largest are dropped (11 for
    64 x 64), so that the factors reproduce the basis to the rounding of ``dtype``.

    Returns
    -------
    left : (h, 8 * r) array, the 8 left factors side by side
    right : (r, w) array, shared by the 8 functions
    """
    def build():
        stacked = basis(h, w).reshape(NUM_BASIS * h, w)
        u, s, vt = np.linalg.svd(stacked, full_matrices=False)
        single = np.dtype(dtype) == np.float32
        cutoff = np.finfo(np.float32).eps if single else \
            max(stacked.shape) * np.finfo(np.float64).eps
        rank = max(1, int((s > s[0] * cutoff).sum()))
        left = (u[:, :rank] * s[:rank]).reshape(NUM_BASIS, h, rank).transpose(1, 0, 2)
        left = left.reshape(h, NUM_BASIS * rank)
        return _read_only(left.astype(dtype)), _read_only(vt[:rank].astype(dtype))
    return cached(("factors", h, w, np.dtype(dtype)), build)
