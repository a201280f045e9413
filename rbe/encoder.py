"""Vectorised hybrid encoder: 8 smooth-basis coefficients + top-k residual transform coefficients.

Every block of one shape is processed at once: the basis fit is one product with the shape's
cached pseudo-inverse, the residual transforms are batched ``scipy.fft`` / PyWavelets calls, and
top-k uses ``argpartition`` over all blocks. A matrix has at most four block shapes (full blocks,
the ragged right column, the ragged bottom row and the corner), each encoded with its own shape.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, DTypeLike
from tqdm.auto import tqdm

from . import transforms as tf
from ._checks import block_count, int_in_range, positive_int, positive_pair

MODES = ("dct", "dwt", "adaptive")
PRECISIONS = ("float32", "float16")
MAX_BLOCK_ELEMENTS = 1 << 16           # flat indices are stored as uint16
MAX_BLOCK_SIDE = 1024                  # the layers' transforms are dense side x side matrices
#: Largest |w| encoded: the coefficients of larger values could overflow float32.
MAX_WEIGHT = 2.0**64
HEADER_BYTES = 6 * 8                   # rows, cols, block rows, block cols, k, format version
_CHUNK_ELEMENTS = 1 << 22              # blocks encoded together (bounds the temporary memory)
_CHECK_CHUNK_ELEMENTS = 1 << 18        # indices checked together (bounds the temporary memory)
_PROGRESS_MIN_BLOCKS = 1024


@dataclass(frozen=True)
class ShapeGroup:
    """Blocks of one shape (h, w): block rows [row0, row1) x block columns [col0, col1)."""

    h: int
    w: int
    row0: int
    row1: int
    col0: int
    col1: int


class BlockGrid:
    """Tiling of a (rows, cols) matrix into (bh, bw) blocks; edge blocks keep their own shape."""

    def __init__(self, shape: tuple[int, int], block: tuple[int, int]):
        self.shape = positive_pair("matrix shape", shape)
        self.block = positive_pair("block", block, MAX_BLOCK_SIDE, MAX_BLOCK_ELEMENTS,
                                   "dense transforms, uint16 flat indices")
        block_count(self.shape, self.block)
        (m, n), (bh, bw) = self.shape, self.block
        self.rows, self.cols = -(-m // bh), -(-n // bw)
        self.heights = np.minimum(bh, m - bh * np.arange(self.rows))
        self.widths = np.minimum(bw, n - bw * np.arange(self.cols))

    @property
    def nblocks(self) -> int:
        return self.rows * self.cols

    def groups(self) -> list[ShapeGroup]:
        """The (at most four) groups of equally shaped blocks."""
        (m, n), (bh, bw) = self.shape, self.block
        row_classes = _classes(m, bh)
        col_classes = _classes(n, bw)
        return [ShapeGroup(h, w, r0, r1, c0, c1)
                for h, r0, r1 in row_classes for w, c0, c1 in col_classes]

    def block_ids(self, group: ShapeGroup) -> np.ndarray:
        """Row-major ids of the blocks of ``group``."""
        rows = np.arange(group.row0, group.row1)[:, None]
        return (rows * self.cols + np.arange(group.col0, group.col1)).ravel()

    def block_sizes(self) -> np.ndarray:
        """h * w of every block, row-major."""
        return np.outer(self.heights, self.widths).ravel()

    def slices(self, group: ShapeGroup) -> tuple[slice, slice]:
        """Row and column slices of the matrix that the blocks of ``group`` cover."""
        (bh, bw) = self.block
        return (slice(group.row0 * bh, group.row0 * bh + (group.row1 - group.row0) * group.h),
                slice(group.col0 * bw, group.col0 * bw + (group.col1 - group.col0) * group.w))


def _classes(extent, size):
    """(length, first, end) for the full blocks and the ragged last block along one axis."""
    full, rest = divmod(extent, size)
    out = [(size, 0, full)] if full else []
    return out + [(rest, full, full + 1)] if rest else out


def split_blocks(sub: np.ndarray, h: int, w: int) -> np.ndarray:
    """(nr*h, nc*w) -> (nr*nc, h, w) stack of blocks, row-major."""
    nr, nc = sub.shape[0] // h, sub.shape[1] // w
    return sub.reshape(nr, h, nc, w).transpose(0, 2, 1, 3).reshape(nr * nc, h, w)


def join_blocks(blocks: np.ndarray, nr: int, nc: int) -> np.ndarray:
    """Inverse of ``split_blocks``."""
    _, h, w = blocks.shape
    return blocks.reshape(nr, nc, h, w).transpose(0, 2, 1, 3).reshape(nr * h, nc * w)


def top_k(magnitude: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ascending) and mask of the k largest entries of every row, ties to lower index.

    ``argpartition`` finds each row's k-th largest value t in linear time; every entry above t
    is kept, and entries equal to t are kept in index order until the row has k.
    """
    n, m = magnitude.shape
    pivot = np.argpartition(magnitude, m - k, axis=1)[:, m - k:m - k + 1]
    kth = np.take_along_axis(magnitude, pivot, axis=1)
    above = magnitude > kth
    tied = magnitude == kth
    room = k - above.sum(axis=1, keepdims=True)
    mask = above | (tied & (np.cumsum(tied, axis=1) <= room))
    return np.nonzero(mask)[1].reshape(n, k), mask


def fit_basis(blocks: np.ndarray) -> np.ndarray:
    """Least-squares basis coefficients of a (n, h, w) stack: one product with the
    pseudo-inverse."""
    n, h, w = blocks.shape
    return blocks.reshape(n, h * w) @ tf.basis_pinv(h, w).T


def basis_pattern(coef: np.ndarray, h: int, w: int) -> np.ndarray:
    """Smooth part sum_k coef[:, k] * basis_k of every block, shape (n, h, w), float64."""
    flat = coef.astype(np.float64) @ tf.basis(h, w).reshape(tf.NUM_BASIS, h * w)
    return flat.reshape(len(coef), h, w)


def _code_residual(residual, k, kind, wavelet):
    """Top-k coding of a (n, h, w) residual stack with one transform: (index, values, sq. error)."""
    n, h, w = residual.shape
    coefs = tf.analyze(residual, kind, wavelet).reshape(n, h * w)
    index, kept = top_k(np.abs(coefs), k)
    exact = np.take_along_axis(coefs, index, axis=1)
    values = exact.astype(np.float32)
    if _is_orthonormal(h, w, kind, wavelet):
        # Parseval: the error is the discarded energy plus the float32 rounding of kept values.
        error = (np.square(coefs) * ~kept).sum(axis=1) + np.square(exact - values).sum(axis=1)
    else:
        decoded = _synthesize_sparse(index, values, h, w, kind, wavelet)
        error = np.square(residual - decoded).reshape(n, -1).sum(axis=1)
    return index, values, error


def _is_orthonormal(h, w, kind, wavelet):
    return tf.operator(h, kind, wavelet).orthonormal and tf.operator(w, kind, wavelet).orthonormal


def _synthesize_sparse(index, values, h, w, kind, wavelet):
    coefs = np.zeros((len(index), h * w))
    np.put_along_axis(coefs, index.astype(np.intp), values.astype(np.float64), axis=1)
    return tf.synthesize(coefs.reshape(-1, h, w), kind, wavelet)


def _smooth_part(blocks, basis, precision):
    """Basis coefficients of a (n, h, w) stack in the stored precision ((n, 0) without a basis)
    and the residual they leave (the residual absorbs their rounding)."""
    n, h, w = blocks.shape
    if not basis:
        return np.zeros((n, 0), np.float32), blocks
    coef = rounded(fit_basis(blocks), precision)
    return coef, blocks - basis_pattern(coef, h, w)


def encode_blocks(blocks: np.ndarray, k: int, transform: str, wavelet: str,
                  basis: bool = True, precision: str = "float32"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Encode a (n, h, w) float64 stack of one shape with min(k, h*w) coefficients per block.

    Returns coef (n, 8) float32 ((n, 0) without ``basis``), transform ids (n,) uint8, index
    (n, min(k, h*w)) uint16 and values float32 of the same shape.
    """
    n, h, w = blocks.shape
    coef, residual = _smooth_part(blocks, basis, precision)
    kinds = tf.TRANSFORMS if transform == "adaptive" else (transform,)
    coded = [_code_residual(residual, min(k, h * w), kind, wavelet) for kind in kinds]
    # Adaptive: the lower reconstruction error wins, the DCT on ties (as the original).
    errors = np.stack([c[2] for c in coded])
    choice = np.argmin(errors, axis=0)
    index = np.stack([c[0] for c in coded])[choice, np.arange(n)]
    values = np.stack([c[1] for c in coded])[choice, np.arange(n)]
    ids = np.array([tf.TRANSFORM_IDS[kind] for kind in kinds], np.uint8)[choice]
    return coef, ids, index.astype(np.uint16), rounded(values, precision)


def check_matrix(W: ArrayLike, name: str = "W") -> np.ndarray:
    """W as a finite 2-D float64 array, or ValueError naming the problem."""
    W = np.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got {W.ndim} dimension(s)")
    if W.dtype.kind not in "fiu" or W.dtype == np.float16:
        raise ValueError(f"{name} must hold real numbers (float32/float64/int), got {W.dtype}")
    if W.size == 0:
        raise ValueError(f"{name} is empty: shape {W.shape}")
    W = W.astype(np.float64, copy=False)
    if not np.isfinite(W).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if max(W.max(), -W.min()) > MAX_WEIGHT:
        raise ValueError(f"{name} holds values too large to encode (|w| > 2**64): their "
                         "coefficients could overflow float32")
    return W


def _check_mode(transform, wavelet):
    if transform not in MODES:
        raise ValueError(f"unknown transform {transform!r}, expected one of {MODES}")
    tf.check_wavelet(wavelet)


def check_precision(precision: str) -> str:
    """precision, if it is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def rounded(a: ArrayLike, precision: str) -> np.ndarray:
    """a as float32 holding values representable in the stored precision."""
    return np.asarray(a, precision).astype(np.float32)


def _progress(total, progress):
    if progress is None:
        progress = total >= _PROGRESS_MIN_BLOCKS and sys.stderr.isatty()
    return tqdm(total=total, unit="block", desc="rbe.encode", disable=not progress)


def check_rank(rank: int, shape: tuple[int, int]) -> int:
    """rank as an int in [0, min(shape)], or ValueError naming it."""
    return int_in_range("rank", rank, 0, min(shape))


def low_rank_factors(W: np.ndarray, rank: int,
                     precision: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The best rank-r approximation of W as factor_out @ factor_in.T (balanced singular
    values), in the stored precision, or None for rank 0."""
    if rank == 0:
        return None
    u, s, vt = np.linalg.svd(W, full_matrices=False)
    root = np.sqrt(s[:rank])
    return rounded(u[:, :rank] * root, precision), rounded(vt[:rank].T * root, precision)


def encode(W: ArrayLike, block: tuple[int, int] = (64, 64), k: int | None = None,
           transform: str = "adaptive", wavelet: str = tf.DEFAULT_WAVELET,
           progress: bool | None = None, *, budget: int | None = None, basis: bool = True,
           rank: int = 0, precision: str = "float32") -> HybridMatrix:
    """Encode a dense matrix into hybrid blocks.

    Parameters
    ----------
    W : array_like, shape (rows, cols)
        Finite real matrix.
    block : (int, int)
        Block shape (h, w), h * w <= 65536. Edge blocks are smaller and use their own shape.
    k : int, optional
        Residual coefficients kept per block (min(k, h*w) for smaller blocks); 64 when neither
        k nor ``budget`` is given.
    transform : {"adaptive", "dct", "dwt"}
        Residual transform; ``adaptive`` picks per block the one with lower error.
    wavelet : str
        PyWavelets wavelet of the ``dwt`` transform (e.g. "db2", "haar", "bior3.1").
    progress : bool or None
        Show a progress bar; by default only on a terminal and for >= 1024 blocks.
    budget : int, optional
        Stored bytes (``nbytes``) not to exceed, instead of k: the coefficients of the whole
        matrix with the largest magnitudes are kept (least squared error for orthonormal
        transforms), so blocks keep different numbers of them.
    basis : bool
        Fit the 8 smooth basis functions per block (8 stored values per block).
    rank : int
        Rank of a low-rank term U Vᵀ fitted first (truncated SVD); the blocks code the rest.
    precision : {"float32", "float16"}
        Storage precision of the values, basis coefficients and low-rank factors.

    Returns
    -------
    HybridMatrix
    """
    W = check_matrix(W)
    _check_mode(transform, wavelet)
    check_precision(precision)
    grid = BlockGrid(W.shape, block)
    factors = low_rank_factors(W, check_rank(rank, W.shape), precision)
    if factors is not None:
        W = W - factors[0].astype(np.float64) @ factors[1].T
    options = {"wavelet": wavelet, "factors": factors, "precision": precision}
    if budget is not None:
        if k is not None:
            raise ValueError("give either k or budget, not both")
        return _encode_budget(W, grid, positive_int("budget", budget), transform, basis,
                              options)
    k = 64 if k is None else positive_int("k", k)
    coef = np.zeros((grid.nblocks, tf.NUM_BASIS if basis else 0), np.float32)
    ids = np.zeros(grid.nblocks, np.uint8)
    parts = []
    with _progress(grid.nblocks, progress) as bar:
        for _group, block_ids, chunk in _chunks(W, grid):
            c, t, i, v = encode_blocks(chunk, k, transform, wavelet, basis, precision)
            coef[block_ids], ids[block_ids] = c, t
            parts.append((block_ids, i, v))
            bar.update(len(block_ids))
    return HybridMatrix(W.shape, grid.block, coef, ids, *ragged_arrays(grid.nblocks, parts),
                        **options)


def _chunks(W, grid):
    """(group, block ids, (n, h, w) blocks) in pieces that bound the temporary memory."""
    for group in grid.groups():
        rows, cols = grid.slices(group)
        block_ids = grid.block_ids(group).reshape(group.row1 - group.row0, -1)
        step = max(1, _CHUNK_ELEMENTS // (group.h * W.shape[1]))
        for r in range(0, len(block_ids), step):
            sub = W[rows][r * group.h:(r + step) * group.h, cols]
            yield group, block_ids[r:r + step].ravel(), split_blocks(sub, group.h, group.w)


def ragged_arrays(nblocks: int, parts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """offsets, index, values of the blocks from (block ids, (n, m) index, (n, m) values) parts,
    entries of a block in the order given."""
    counts = np.zeros(nblocks, np.int64)
    for block_ids, index, _ in parts:
        counts[block_ids] = index.shape[1]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    index = np.zeros(offsets[-1], np.uint16)
    values = np.zeros(offsets[-1], np.float32)
    for block_ids, i, v in parts:
        at = (offsets[block_ids][:, None] + np.arange(i.shape[1])).ravel()
        index[at], values[at] = i.ravel(), v.ravel()
    return offsets, index, values


def _encode_budget(W, grid, budget, transform, basis, options):
    """Blocks keeping the matrix's largest coefficients, as many as ``budget`` bytes allow."""
    precision, wavelet = options["precision"], options["wavelet"]
    per_coef = index_bytes(grid) + np.dtype(precision).itemsize
    kinds = tf.TRANSFORMS if transform == "adaptive" else (transform,)
    coef = np.zeros((grid.nblocks, tf.NUM_BASIS if basis else 0), np.float32)
    ids = np.zeros(grid.nblocks, np.uint8)
    full = []
    for group, block_ids, chunk in _chunks(W, grid):
        c, residual = _smooth_part(chunk, basis, precision)
        # Adaptive: per block the transform with the lower error at the average count.
        k_mean = min(group.h * group.w, max(1, budget // (per_coef * grid.nblocks)))
        t = encode_blocks(residual, k_mean, transform, wavelet, basis=False)[1]
        coefs = np.stack([tf.analyze(residual, kind, wavelet).reshape(len(chunk), -1)
                          for kind in kinds])
        slot = np.searchsorted([tf.TRANSFORM_IDS[kind] for kind in kinds], t)
        coef[block_ids], ids[block_ids] = c, t
        full.append((block_ids, coefs[slot, np.arange(len(chunk))]))
    empty = HybridMatrix(W.shape, grid.block, coef, ids, np.zeros(grid.nblocks + 1, np.int64),
                         np.zeros(0, np.uint16), np.zeros(0, np.float32), **options)
    fixed = empty.nbytes + count_bytes(grid) * grid.nblocks
    keep = (budget - fixed) // per_coef
    if keep < 1:
        raise ValueError(f"budget {budget} bytes cannot hold a coefficient: the basis, "
                         f"low-rank factors and per-block counts take {fixed} bytes")
    return HybridMatrix(W.shape, grid.block, coef, ids, *_largest(grid, full, keep, precision),
                        **options)


def _largest(grid, full, keep, precision):
    """offsets, index, values of the ``keep`` largest coefficients over all blocks (ties to the
    earlier block and position), at most ``count_limit`` per block."""
    limit = count_limit(grid)
    magnitude = []
    for _, coefs in full:
        m = np.abs(coefs)
        if coefs.shape[1] > limit:      # rank within the block beyond the limit: never kept
            order = np.argsort(-m, axis=1, kind="stable")
            np.put_along_axis(m, order[:, limit:], -1.0, axis=1)
        magnitude.append(m.ravel())
    magnitude = np.concatenate(magnitude)
    keep = min(keep, int((magnitude >= 0).sum()))
    _, chosen = top_k(magnitude[None], keep)
    parts, start = [], 0
    for block_ids, coefs in full:
        mask = chosen[0, start:start + coefs.size].reshape(coefs.shape)
        start += coefs.size
        for n in np.unique(mask.sum(axis=1)):
            rows = np.flatnonzero(mask.sum(axis=1) == n)
            index = np.nonzero(mask[rows])[1].reshape(len(rows), n)
            parts.append((block_ids[rows], index.astype(np.uint16),
                          rounded(np.take_along_axis(coefs[rows], index, axis=1), precision)))
    return ragged_arrays(grid.nblocks, parts)


def index_bytes(grid: BlockGrid) -> int:
    """Bytes of one stored position: uint8 when every block has at most 256."""
    return 1 if grid.block[0] * grid.block[1] <= 256 else 2


def count_limit(grid: BlockGrid) -> int:
    """Most coefficients a block of a ragged matrix keeps (its count is stored in
    ``count_bytes``)."""
    return 255 if count_bytes(grid) == 1 else 65535


def count_bytes(grid: BlockGrid) -> int:
    """Bytes a budget reserves for one block's count: as wide as a position, so blocks of at
    most 256 positions keep at most 255 (uint8)."""
    return index_bytes(grid)


class HybridBlocks:
    """What a hybrid matrix and a hybrid layer (rbe.HybridLinear) read the same way from their
    ``grid``, ``offsets`` and ``factors``."""

    grid: BlockGrid
    offsets: np.ndarray
    factors: tuple[np.ndarray, np.ndarray] | None

    @property
    def block(self) -> tuple[int, int]:
        """Block shape (h, w); edge blocks are smaller."""
        return self.grid.block

    @property
    def counts(self) -> np.ndarray:
        """Transform coefficients of each block."""
        return np.diff(self.offsets)

    @property
    def rank(self) -> int:
        """Rank of the low-rank term (0 without one)."""
        return 0 if self.factors is None else self.factors[0].shape[1]


class HybridMatrix(HybridBlocks):
    """A matrix stored as hybrid blocks (row-major block order), plus an optional low-rank term.

    Per block: ``coef`` (8 basis coefficients, or none), ``transform`` (uint8 id: 0 DCT,
    1 DWT) and a ragged list of transform coefficients: entries ``offsets[b]`` to
    ``offsets[b + 1] - 1`` of ``index`` (flat row-major positions in the block's coefficient
    array) and ``values``. ``factors`` = (factor_out (rows, r), factor_in (cols, r)) adds
    factor_out @ factor_in.T. In memory everything is float32 (values representable in
    ``precision``); ``nbytes`` counts the compact stored form (see ``_state``).
    """

    def __init__(self, shape: tuple[int, int], block: tuple[int, int], coef: np.ndarray,
                 transform: np.ndarray, offsets: np.ndarray, index: np.ndarray,
                 values: np.ndarray, *, wavelet: str = tf.DEFAULT_WAVELET,
                 factors: tuple[np.ndarray, np.ndarray] | None = None,
                 precision: str = "float32"):
        self.grid = BlockGrid(shape, block)
        self.wavelet = wavelet
        tf.check_wavelet(wavelet)
        self.precision = check_precision(precision)
        nb = self.grid.nblocks
        self.coef = _check_array(coef, "coef", np.float32, None)
        if self.coef.shape not in ((nb, tf.NUM_BASIS), (nb, 0)):
            raise ValueError(f"coef must have shape ({nb}, {tf.NUM_BASIS}) or ({nb}, 0), "
                             f"got {self.coef.shape}")
        self.transform = _check_array(transform, "transform", np.uint8, (nb,))
        self.offsets = _check_array(offsets, "offsets", np.int64, (nb + 1,))
        self.index = _check_array(index, "index", np.uint16, None)
        if self.index.ndim != 1:
            raise ValueError(f"index must be 1-D, got shape {self.index.shape}")
        self.values = _check_array(values, "values", np.float32, self.index.shape)
        self.factors = None if factors is None else _check_factors(factors, self.grid.shape)
        if precision != "float32":
            self.coef = rounded(self.coef, precision)
            self.values = rounded(self.values, precision)
            if self.factors is not None:
                self.factors = tuple(rounded(f, precision) for f in self.factors)
        check_coding(self.grid, self.transform, self.offsets, self.index)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the matrix."""
        return self.grid.shape

    @property
    def nbytes(self) -> int:
        """Every stored byte: header, wavelet name and the arrays of ``_state``."""
        arrays = self._state()[1]
        return HEADER_BYTES + len(self.wavelet.encode()) + sum(a.nbytes for a in arrays.values())

    @property
    def compression_ratio(self) -> float:
        """Dense float32 bytes / stored bytes."""
        return 4 * self.shape[0] * self.shape[1] / self.nbytes

    def decode(self, dtype: DTypeLike = np.float32) -> np.ndarray:
        """The dense matrix the blocks (and the low-rank term) represent."""
        out = np.empty(self.shape, np.float64)
        for group in self.grid.groups():
            rows, cols = self.grid.slices(group)
            blocks = self._decode_group(self.grid.block_ids(group), group.h, group.w)
            out[rows, cols] = join_blocks(blocks, group.row1 - group.row0,
                                          group.col1 - group.col0)
        if self.factors is not None:
            out += self.factors[0].astype(np.float64) @ self.factors[1].T
        return out.astype(dtype)

    def _decode_group(self, ids, h, w):
        blocks = np.zeros((len(ids), h, w))
        if self.coef.shape[1]:
            blocks += basis_pattern(self.coef[ids], h, w)
        coefs = scatter_blocks(self.offsets, self.index, self.values, ids, h * w)
        for kind, tid in tf.TRANSFORM_IDS.items():
            sel = self.transform[ids] == tid
            if sel.any():
                blocks[sel] += tf.synthesize(coefs[sel].reshape(-1, h, w), kind, self.wavelet)
        return blocks

    def rmse(self, W: ArrayLike) -> float:
        """Root-mean-square error of the decoded matrix against W."""
        W = check_matrix(W)
        if W.shape != self.shape:
            raise ValueError(f"W has shape {W.shape}, the encoded matrix {self.shape}")
        return float(np.sqrt(np.mean(np.square(self.decode(np.float64) - W))))

    def _state(self) -> tuple[dict, dict]:
        """Config and the compact stored arrays (format version 2).

        Values, basis coefficients and factors in ``precision``; positions as uint8 when every
        block has at most 256; per-block transform ids only when blocks differ (else the
        config's "transform"), per-block counts only when they are not min(k, block size) for
        one k (else the config's "k").
        """
        def store(a):
            return a.astype(self.precision)

        config = {"shape": list(self.shape), "block": list(self.block),
                  "wavelet": self.wavelet, "precision": self.precision}
        arrays = {"coef": store(self.coef)} if self.coef.shape[1] else {}
        if (self.transform == self.transform[0]).all():
            config["transform"] = tf.TRANSFORMS[self.transform[0]]
        else:
            arrays["transform"] = self.transform
        counts, sizes = self.counts, self.grid.block_sizes()
        k = int(counts.max())
        if (counts == np.minimum(k, sizes)).all():
            config["k"] = k
        else:
            arrays["counts"] = counts.astype(np.uint8 if k <= 255 else np.uint16)
        arrays["index"] = self.index.astype(np.uint8 if index_bytes(self.grid) == 1
                                            else np.uint16)
        arrays["values"] = store(self.values)
        if self.factors is not None:
            arrays["factor_out"], arrays["factor_in"] = map(store, self.factors)
        return config, arrays

    @classmethod
    def _from_state(cls, config: dict, arrays: dict) -> HybridMatrix:
        """Inverse of ``_state``; validates like the constructor."""
        arrays = dict(arrays)
        grid = BlockGrid(config["shape"], config["block"])
        values = arrays.pop("values")
        precision = check_precision(config.get("precision", values.dtype.name))

        def as_float(a):
            return _check_float(a, precision)

        coef = as_float(arrays.pop("coef", np.zeros((grid.nblocks, 0), precision)))
        if "transform" in arrays:
            transform = arrays.pop("transform")
        else:
            transform = np.full(grid.nblocks, tf.TRANSFORM_IDS[config["transform"]], np.uint8)
        counts = arrays.pop("counts", None)
        if counts is None:
            k = config["k"]
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise ValueError(f"k must be a non-negative integer, got {k!r}")
            counts = np.minimum(k, grid.block_sizes())
        elif counts.dtype not in (np.uint8, np.uint16) or counts.shape != (grid.nblocks,):
            raise ValueError(f"counts must be uint8 or uint16 of shape ({grid.nblocks},)")
        index = arrays.pop("index")
        if index.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"index must be uint8 or uint16, got {index.dtype}")
        factors = None
        if "factor_out" in arrays:
            factors = (as_float(arrays.pop("factor_out")), as_float(arrays.pop("factor_in")))
        if arrays:
            raise ValueError(f"unexpected arrays {sorted(arrays)}")
        offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        return cls(grid.shape, grid.block, coef, transform, offsets, index.astype(np.uint16),
                   as_float(values), wavelet=config["wavelet"], factors=factors,
                   precision=precision)

    def __repr__(self):
        counts = np.bincount(self.transform, minlength=len(tf.TRANSFORMS))
        mix = ", ".join(f"{n}={c}" for n, c in zip(tf.TRANSFORMS, counts))
        return (f"HybridMatrix(shape={self.shape}, block={self.block}, "
                f"coefficients={len(self.values)}, rank={self.rank}, {mix}, "
                f"wavelet={self.wavelet!r}, ratio={self.compression_ratio:.1f})")


def upgrade_v1_state(config: dict, arrays: dict) -> tuple[dict, dict]:
    """A hybrid entry of format version 1 in the version-2 form ``_from_state`` reads.

    Version 1 stored k entries per block (zero padding in blocks smaller than k) and basis
    coefficients of the unnormalised functions.
    """
    arrays = dict(arrays)
    grid = BlockGrid(config["shape"], config["block"])
    index, values, coef = arrays.pop("index"), arrays.pop("values"), arrays.pop("coef")
    if index.ndim != 2 or index.shape != values.shape or coef.shape != (grid.nblocks, 8):
        raise ValueError("version-1 index, values and coef must be (blocks, k), (blocks, k) "
                         "and (blocks, 8)")
    coef = coef.astype(np.float64)
    for group in grid.groups():
        coef[grid.block_ids(group)] *= tf.basis_norms(group.h, group.w)
    used = np.arange(index.shape[1]) < grid.block_sizes()[:, None]
    arrays.update(coef=coef.astype(np.float32), index=index[used], values=values[used])
    return dict(config, k=index.shape[1]), arrays


def scatter_blocks(offsets: np.ndarray, index: np.ndarray, values: np.ndarray, ids: np.ndarray,
                   size: int) -> np.ndarray:
    """(len(ids), size) coefficient arrays of blocks ``ids`` (all of one size), float64."""
    counts = offsets[ids + 1] - offsets[ids]
    rows = np.repeat(np.arange(len(ids)), counts)
    entries = np.repeat(offsets[ids] - np.cumsum(counts) + counts, counts) + np.arange(len(rows))
    out = np.zeros((len(ids), size))
    out[rows, index[entries]] = values[entries]
    return out


def _check_float(a, precision):
    """A stored float array (in ``precision``, or float32 as a torch state holds it) as
    float32."""
    if not isinstance(a, np.ndarray) or a.dtype.name not in (precision, "float32"):
        raise ValueError(f"stored values must be {precision} or float32 arrays")
    return a.astype(np.float32)


def _check_factors(factors, shape):
    try:
        out, inp = factors
    except (TypeError, ValueError):
        raise ValueError("factors must be a pair (factor_out, factor_in)") from None
    out = _check_array(out, "factor_out", np.float32, None)
    inp = _check_array(inp, "factor_in", np.float32, None)
    if out.ndim != 2 or inp.ndim != 2 or out.shape[0] != shape[0] or inp.shape[0] != shape[1] \
            or out.shape[1] != inp.shape[1]:
        raise ValueError(f"factors must have shapes ({shape[0]}, r) and ({shape[1]}, r), "
                         f"got {out.shape} and {inp.shape}")
    return out, inp


def _check_array(a, name, dtype, shape):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(a)


def check_coding(grid: BlockGrid, transform: np.ndarray, offsets: np.ndarray,
                 index: np.ndarray) -> None:
    """Transform ids known; offsets run from 0 to len(index) and give every block at most its
    size; each block's positions distinct and inside it."""
    if (transform >= len(tf.TRANSFORMS)).any():
        raise ValueError(f"transform ids must be < {len(tf.TRANSFORMS)}")
    counts = np.diff(offsets)
    if offsets[0] != 0 or offsets[-1] != len(index) or (counts < 0).any():
        raise ValueError(f"offsets must rise from 0 to the number of entries {len(index)}")
    sizes = grid.block_sizes()
    if (counts > sizes).any():
        raise ValueError("a block has more entries than positions")
    # Blocks in chunks of about _CHECK_CHUNK_ELEMENTS entries: the int64 temporaries stay
    # small whatever the size of a loaded file.
    start = 0
    while start < grid.nblocks:
        stop = int(np.searchsorted(offsets, offsets[start] + _CHECK_CHUNK_ELEMENTS, "right")) - 1
        stop = min(grid.nblocks, max(stop, start + 1))
        _check_index(index[offsets[start]:offsets[stop]], counts[start:stop],
                     sizes[start:stop])
        start = stop


def _check_index(index: np.ndarray, counts: np.ndarray, sizes: np.ndarray) -> None:
    block_of = np.repeat(np.arange(len(counts)), counts)
    if (index >= sizes[block_of]).any():
        raise ValueError("index points outside its block")
    keys = np.sort(block_of * (1 << 16) + index)
    if (np.diff(keys) == 0).any():
        raise ValueError("index repeats a position within a block")
