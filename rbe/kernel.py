"""Generate the weights of seed blocks (docs/design.md, "Weight function").

``generate`` and ``generate_with_grad`` evaluate the weight function of every position of a
block for an array of Packed128 seeds. Two modes:

- ``"fast"`` (default): float32, per-shape tables (cached), no per-weight libm call. The
  transcendentals come from one of three approximation families (``"poly"``, ``"lut"``,
  ``"cordic"``); the SIMD path is chosen at run time from the CPU: ``"avx512_vnni"`` (the
  ``"avx2_vl"`` kernels, and code-block products with AVX-512 VNNI and VBMI2), ``"avx2_vl"``
  (the AVX2 code compiled for AVX-512VL's 32 vector registers: same results, fewer register
  spills; formerly named ``"avx512"``, which is still accepted), ``"avx2"`` or ``"scalar"``.
  Both can be overridden with the ``RBE_APPROX`` and ``RBE_SIMD`` environment variables (read at
  import) or :func:`use_approx` / :func:`use_simd` (and ``approx=`` here). The choice holds for
  every kernel with such variants: the weight generation here, and the layers' products.
- ``"precise"``: float64 with libm, straight from the formula; the oracle for everything else.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from numpy.typing import DTypeLike

from . import _core
from . import seeds as seeds_mod
from ._cache import cached
from ._checks import positive_pair
from ._coordinates import coordinates

MODES = ("fast", "precise")
APPROX_FAMILIES = tuple(_core.APPROX_FAMILIES)
#: The fastest family within the 1e-5 bound on this project's benchmark (bench_kernel.py).
DEFAULT_APPROX = "poly"
MAX_BLOCK_SIDE = 65535
MAX_BLOCK_SIZE = 1 << 24
_TABLE_CHUNK = 1 << 16          # weights whose tables are computed at once


def simd_paths() -> tuple[str, ...]:
    """SIMD paths this CPU can run, in order of preference (the default last)."""
    return _core.RUNNABLE_SIMD


#: Former names of SIMD paths, still accepted as arguments.
_SIMD_ALIASES = {"avx512": "avx2_vl"}


def _check_simd(name: str) -> str:
    name = _SIMD_ALIASES.get(name, name)
    if name not in _core.SIMD_PATHS:
        raise ValueError(f"unknown SIMD path {name!r}; choose from {sorted(_core.SIMD_PATHS)}")
    if name not in simd_paths():
        raise ValueError(f"SIMD path {name!r} is not supported by this CPU")
    return name


def _check_approx(name: str) -> str:
    if name not in APPROX_FAMILIES:
        raise ValueError(f"unknown approximation {name!r}; choose from {APPROX_FAMILIES}")
    return name


def _choose(simd: str, approx: str) -> None:
    """Make every kernel run a SIMD path and approximation family (rbe._core holds the choice,
    which the layers' plans read)."""
    _core.set_kernel_choice(_core.SIMD_PATHS[simd], _core.APPROX_FAMILIES[approx])


_choose(_check_simd(os.environ.get("RBE_SIMD", _core.BEST_SIMD)),
        _check_approx(os.environ.get("RBE_APPROX", DEFAULT_APPROX)))


def current_simd() -> str:
    """The SIMD path the fast kernels use now."""
    simd = _core.kernel_choice()[0]
    return next(name for name, k in _core.SIMD_PATHS.items() if k == simd)


def default_approx() -> str:
    """The approximation family used when ``approx=None``."""
    family = _core.kernel_choice()[1]
    return next(name for name, k in _core.APPROX_FAMILIES.items() if k == family)


@contextlib.contextmanager
def _chosen(simd: str, approx: str) -> Iterator[None]:
    previous = current_simd(), default_approx()
    _choose(simd, approx)
    try:
        yield
    finally:
        _choose(*previous)


def use_simd(name: str) -> contextlib.AbstractContextManager[None]:
    """Temporarily force a SIMD path (one of :func:`simd_paths`) for every kernel, e.g. in
    tests. The choice is process-wide, like the ``RBE_SIMD`` variable."""
    return _chosen(_check_simd(name), default_approx())


def use_approx(name: str) -> contextlib.AbstractContextManager[None]:
    """Temporarily choose the approximation family of every fast kernel, process-wide, like
    the ``RBE_APPROX`` variable."""
    return _chosen(current_simd(), _check_approx(name))


class ShapeTables(NamedTuple):
    """Per-shape tables in the class-grouped layout [h][4][g] (column j = 4q + p)."""

    rho: np.ndarray
    sin_phi: np.ndarray
    cos_phi: np.ndarray


def _build_tables(h: int, w: int) -> ShapeTables:
    g = -(-w // 32) * 8          # ceil(ceil(w / 4) / 8) * 8: whole vectors of 8 lanes
    x, y = coordinates((h, w))
    tables = np.zeros((3, h, 4, g), np.float32)
    # Chunks of rows keep the float64 temporaries small (a block has up to 2^24 weights).
    step = max(1, _TABLE_CHUNK // w)
    for top in range(0, h, step):
        rows = slice(top, top + step)
        xx, yy = np.meshgrid(x, y[rows])
        rho = np.hypot(xx, yy)
        safe = np.where(rho > 0, rho, 1.0)
        sin_phi = np.where(rho > 0, yy / safe, 0.0)     # phi = atan2(0, 0) = 0 at the centre
        cos_phi = np.where(rho > 0, xx / safe, 1.0)
        for p in range(min(4, w)):
            cols = slice(p, w, 4)
            n = len(range(p, w, 4))
            tables[:, rows, p, :n] = rho[:, cols], sin_phi[:, cols], cos_phi[:, cols]
    tables.flags.writeable = False                      # (and so every view of it)
    return ShapeTables(*tables)


def shape_tables(shape: tuple[int, int]) -> ShapeTables:
    """Cached tables for a block shape (built once, then read-only)."""
    h, w = check_block_shape(shape)
    return cached(("weight tables", h, w), lambda: _build_tables(h, w))


def check_block_shape(shape: tuple[int, int], name: str = "block shape") -> tuple[int, int]:
    """A block shape (h, w) within the kernels' limits, as a pair of ints (``name`` is the
    argument's name in the error)."""
    return positive_pair(name, shape, MAX_BLOCK_SIDE, MAX_BLOCK_SIZE,
                         "the kernels' index types")


def empty_aligned(shape: int | tuple[int, ...], dtype: DTypeLike = np.float32,
                  alignment: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``alignment``-byte boundary.

    Use it for ``generate(..., out=...)``: outputs larger than the caches are written with
    non-temporal stores, full width (32 bytes) only where the array is 32-byte aligned, which
    numpy's own allocations are not guaranteed to be.
    """
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.__array_interface__["data"][0] % alignment
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _outputs(out, count: int, shape: tuple, dtype) -> list:
    """Validate caller-provided output arrays, or allocate them."""
    if out is None:
        return [empty_aligned(shape, dtype) for _ in range(count)]
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if len(outs) != count:
        raise ValueError(f"out must hold {count} array(s), got {len(outs)}")
    for o in outs:
        if not isinstance(o, np.ndarray) or o.dtype != dtype or o.shape != shape:
            got = (o.dtype, o.shape) if isinstance(o, np.ndarray) else type(o).__name__
            raise ValueError(f"out arrays must be {np.dtype(dtype)} of shape {shape}, got {got}")
        if not (o.flags.c_contiguous and o.flags.writeable):
            raise ValueError("out arrays must be writeable and C-contiguous")
    return outs


def _run(seeds, shape, mode, approx, out, with_grad):
    seeds = seeds_mod.check(seeds, contiguous=True)
    shape = check_block_shape(shape)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    hi = seeds["hi"].reshape(-1)
    dtype = np.float32 if mode == "fast" else np.float64
    outs = _outputs(out, 3 if with_grad else 1, seeds.shape + shape, dtype)
    outs = [o.reshape((hi.size,) + shape) for o in outs]
    if mode == "fast":
        simd, family = _core.kernel_choice()
        if approx is not None:
            family = _core.APPROX_FAMILIES[_check_approx(approx)]
        tables = shape_tables(shape)
        _core.generate_fast(np.ascontiguousarray(hi), *tables, *outs, simd=simd, family=family)
    else:
        if approx is not None:
            raise ValueError("approx= applies to mode='fast' only")
        _core.generate_precise(np.ascontiguousarray(hi), *outs)
    return tuple(o.reshape(seeds.shape + shape) for o in outs)


def generate(seeds: np.ndarray, shape: tuple[int, int], mode: str = "fast",
             approx: str | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Weights of the blocks generated by ``seeds``.

    Parameters
    ----------
    seeds : ndarray of rbe.seeds.DTYPE
        Any shape, C-contiguous.
    shape : (h, w)
        Block shape.
    mode : {"fast", "precise"}
        float32 tables + approximations, or float64 libm.
    approx : {"poly", "lut", "cordic"}, optional
        Approximation family for ``mode="fast"`` (default :func:`default_approx`).
    out : ndarray, optional
        Array to write into (C-contiguous, the result's shape and dtype): reusing one
        avoids the page faults of a fresh allocation on every call; one from
        :func:`empty_aligned` also gets the fastest stores.

    Returns
    -------
    ndarray of shape ``seeds.shape + (h, w)``, float32 (fast) or float64 (precise).
    """
    return _run(seeds, shape, mode, approx, out, with_grad=False)[0]


def generate_with_grad(seeds: np.ndarray, shape: tuple[int, int], mode: str = "fast",
                       approx: str | None = None,
                       out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights and their derivatives ``(W, dW_dr, dW_dtheta)``, computed in one pass.

    The derivatives are exact for the formula (clamps contribute 0 outside their open
    interval, |v| contributes sign(v)). Arguments as for :func:`generate`; ``out`` is a
    tuple of three arrays.
    """
    return _run(seeds, shape, mode, approx, out, with_grad=True)


def kernel_info() -> dict[str, object]:
    """What the fast kernels run on: SIMD path, approximation, OpenMP and threads."""
    return {
        "simd": current_simd(),
        "simd_available": simd_paths(),
        "approx": default_approx(),
        "approx_available": APPROX_FAMILIES,
        "openmp": _core.openmp_enabled(),
        "threads": _core.get_num_threads(),
    }
