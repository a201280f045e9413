"""Vectorised hybrid encoder: 8 smooth-basis coefficients + top-k residual transform coefficients.

Every block of one shape is processed at once: the basis fit is one product with the shape's
cached pseudo-inverse, the residual transforms are batched ``scipy.fft`` / PyWavelets calls, and
top-k uses ``argpartition`` over all blocks. A matrix has at most four block shapes (full blocks,
the ragged right column, the ragged bottom row and the corner), each encoded with its own shape.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from . import transforms as tf
from ._checks import block_count, positive_int

MODES = ("dct", "dwt", "adaptive")
MAX_BLOCK_ELEMENTS = 1 << 16           # flat indices are stored as uint16
MAX_BLOCK_SIDE = 1024                  # the layers' transforms are dense side x side matrices
#: Largest |w| encoded: the coefficients of larger values could overflow float32.
MAX_WEIGHT = 2.0**64
HEADER_BYTES = 6 * 8                   # rows, cols, block rows, block cols, k, format version
FORMAT_VERSION = 1
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

    def __init__(self, shape, block):
        self.shape = _check_shape(shape, "matrix shape")
        self.block = _check_shape(block, "block")
        if self.block[0] * self.block[1] > MAX_BLOCK_ELEMENTS:
            raise ValueError(f"block {self.block} has more than {MAX_BLOCK_ELEMENTS} elements "
                             "(flat indices are uint16)")
        if max(self.block) > MAX_BLOCK_SIDE:
            raise ValueError(f"block {self.block} has a side longer than {MAX_BLOCK_SIDE}")
        block_count(self.shape, self.block)
        (m, n), (bh, bw) = self.shape, self.block
        self.rows, self.cols = -(-m // bh), -(-n // bw)
        self.heights = np.minimum(bh, m - bh * np.arange(self.rows))
        self.widths = np.minimum(bw, n - bw * np.arange(self.cols))

    @property
    def nblocks(self) -> int:
        return self.rows * self.cols

    def groups(self):
        """The (at most four) groups of equally shaped blocks."""
        (m, n), (bh, bw) = self.shape, self.block
        row_classes = _classes(m, bh)
        col_classes = _classes(n, bw)
        return [ShapeGroup(h, w, r0, r1, c0, c1)
                for h, r0, r1 in row_classes for w, c0, c1 in col_classes]

    def block_ids(self, group: ShapeGroup) -> np.ndarray:
        rows = np.arange(group.row0, group.row1)[:, None]
        return (rows * self.cols + np.arange(group.col0, group.col1)).ravel()

    def block_sizes(self) -> np.ndarray:
        """h * w of every block, row-major."""
        return np.outer(self.heights, self.widths).ravel()

    def slices(self, group: ShapeGroup):
        (bh, bw) = self.block
        return (slice(group.row0 * bh, group.row0 * bh + (group.row1 - group.row0) * group.h),
                slice(group.col0 * bw, group.col0 * bw + (group.col1 - group.col0) * group.w))


def _classes(extent, size):
    """(length, first, end) for the full blocks and the ragged last block along one axis."""
    full, rest = divmod(extent, size)
    out = [(size, 0, full)] if full else []
    return out + [(rest, full, full + 1)] if rest else out


def _check_shape(pair, what):
    try:
        a, b = (int(v) for v in pair)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{what} must be a pair of positive integers, got {pair!r}") from None
    if a < 1 or b < 1 or (a, b) != tuple(pair):
        raise ValueError(f"{what} must be a pair of positive integers, got {pair!r}")
    return a, b


def split_blocks(sub: np.ndarray, h: int, w: int) -> np.ndarray:
    """(nr*h, nc*w) -> (nr*nc, h, w) stack of blocks, row-major."""
    nr, nc = sub.shape[0] // h, sub.shape[1] // w
    return sub.reshape(nr, h, nc, w).transpose(0, 2, 1, 3).reshape(nr * nc, h, w)


def join_blocks(blocks: np.ndarray, nr: int, nc: int) -> np.ndarray:
    """Inverse of ``split_blocks``."""
    _, h, w = blocks.shape
    return blocks.reshape(nr, nc, h, w).transpose(0, 2, 1, 3).reshape(nr * h, nc * w)


def top_k(magnitude: np.ndarray, k: int):
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
    """Least-squares basis coefficients of a (n, h, w) stack: one product with the pseudo-inverse."""
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


def encode_blocks(blocks: np.ndarray, k: int, transform: str, wavelet: str):
    """Encode a (n, h, w) float64 stack of one shape.

    Returns coef (n, 8) float32, transform ids (n,) uint8, index (n, min(k, h*w)) uint16 and
    values float32 of the same shape.
    """
    n, h, w = blocks.shape
    # Round the fit first so that the residual absorbs the float32 rounding of the coefficients.
    coef = fit_basis(blocks).astype(np.float32)
    residual = blocks - basis_pattern(coef, h, w)
    kinds = tf.TRANSFORMS if transform == "adaptive" else (transform,)
    coded = [_code_residual(residual, min(k, h * w), kind, wavelet) for kind in kinds]
    # Adaptive: the lower reconstruction error wins, the DCT on ties (as the original).
    errors = np.stack([c[2] for c in coded])
    choice = np.argmin(errors, axis=0)
    index = np.stack([c[0] for c in coded])[choice, np.arange(n)]
    values = np.stack([c[1] for c in coded])[choice, np.arange(n)]
    ids = np.array([tf.TRANSFORM_IDS[kind] for kind in kinds], np.uint8)[choice]
    return coef, ids, index.astype(np.uint16), values


def check_matrix(W, name="W") -> np.ndarray:
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


def _progress(total, progress):
    if progress is None:
        progress = total >= _PROGRESS_MIN_BLOCKS and sys.stderr.isatty()
    return tqdm(total=total, unit="block", desc="rbe.encode", disable=not progress)


def encode(W, block=(64, 64), k=64, transform="adaptive", wavelet=tf.DEFAULT_WAVELET,
           progress=None) -> "HybridMatrix":
    """Encode a dense matrix into hybrid blocks.

    Parameters
    ----------
    W : array_like, shape (rows, cols)
        Finite real matrix.
    block : (int, int)
        Block shape (h, w), h * w <= 65536. Edge blocks are smaller and use their own shape.
    k : int
        Residual coefficients kept per block (min(k, h*w) for smaller blocks).
    transform : {"adaptive", "dct", "dwt"}
        Residual transform; ``adaptive`` picks per block the one with lower error.
    wavelet : str
        PyWavelets wavelet of the ``dwt`` transform (e.g. "db2", "haar", "bior3.1").
    progress : bool or None
        Show a progress bar; by default only on a terminal and for >= 1024 blocks.

    Returns
    -------
    HybridMatrix
    """
    W = check_matrix(W)
    k = positive_int("k", k)
    _check_mode(transform, wavelet)
    grid = BlockGrid(W.shape, block)
    k_stored = min(k, grid.block[0] * grid.block[1])
    coef = np.zeros((grid.nblocks, tf.NUM_BASIS), np.float32)
    ids = np.zeros(grid.nblocks, np.uint8)
    index = np.zeros((grid.nblocks, k_stored), np.uint16)
    values = np.zeros((grid.nblocks, k_stored), np.float32)
    with _progress(grid.nblocks, progress) as bar:
        for group in grid.groups():
            rows, cols = grid.slices(group)
            block_ids = grid.block_ids(group).reshape(group.row1 - group.row0, -1)
            step = max(1, _CHUNK_ELEMENTS // (group.h * W.shape[1]))
            for r in range(0, len(block_ids), step):
                sub = W[rows][r * group.h:(r + step) * group.h, cols]
                ids_chunk = block_ids[r:r + step].ravel()
                c, t, i, v = encode_blocks(split_blocks(sub, group.h, group.w), k, transform,
                                           wavelet)
                coef[ids_chunk], ids[ids_chunk] = c, t
                index[ids_chunk, :i.shape[1]], values[ids_chunk, :i.shape[1]] = i, v
                bar.update(len(ids_chunk))
    return HybridMatrix(W.shape, grid.block, coef, ids, index, values, wavelet)


class HybridMatrix:
    """A matrix stored as hybrid blocks (row-major block order).

    Per block: ``coef`` (8 float32 basis coefficients), ``transform`` (uint8 id: 0 DCT, 1 DWT),
    ``index`` (uint16 flat row-major positions in the block's coefficient array) and ``values``
    (float32). Blocks with fewer than k elements use their first h*w entries; the rest is zero
    padding.
    """

    def __init__(self, shape, block, coef, transform, index, values,
                 wavelet=tf.DEFAULT_WAVELET):
        self.grid = BlockGrid(shape, block)
        self.wavelet = wavelet
        tf.check_wavelet(wavelet)
        nb = self.grid.nblocks
        self.coef = _check_array(coef, "coef", np.float32, (nb, tf.NUM_BASIS))
        self.transform = _check_array(transform, "transform", np.uint8, (nb,))
        self.index = _check_array(index, "index", np.uint16, None)
        if self.index.ndim != 2 or len(self.index) != nb:
            raise ValueError(f"index must have shape ({nb}, k), got {self.index.shape}")
        self.values = _check_array(values, "values", np.float32, self.index.shape)
        check_coding(self.grid, self.transform, self.index)

    shape = property(lambda self: self.grid.shape)
    block = property(lambda self: self.grid.block)
    k = property(lambda self: self.index.shape[1])

    @property
    def nbytes(self) -> int:
        """Every stored byte: header, wavelet name, coefficients, ids, indices, values."""
        arrays = (self.coef, self.transform, self.index, self.values)
        return HEADER_BYTES + len(self.wavelet.encode()) + sum(a.nbytes for a in arrays)

    @property
    def compression_ratio(self) -> float:
        """Dense float32 bytes / stored bytes."""
        return 4 * self.shape[0] * self.shape[1] / self.nbytes

    def decode(self, dtype=np.float32) -> np.ndarray:
        """The dense matrix the blocks represent."""
        out = np.empty(self.shape, dtype)
        for group in self.grid.groups():
            rows, cols = self.grid.slices(group)
            blocks = self._decode_group(self.grid.block_ids(group), group.h, group.w)
            out[rows, cols] = join_blocks(blocks, group.row1 - group.row0,
                                          group.col1 - group.col0)
        return out

    def _decode_group(self, ids, h, w):
        kb = min(self.k, h * w)
        blocks = basis_pattern(self.coef[ids], h, w)
        for kind, tid in tf.TRANSFORM_IDS.items():
            sel = ids[self.transform[ids] == tid]
            if len(sel):
                blocks[self.transform[ids] == tid] += _synthesize_sparse(
                    self.index[sel, :kb], self.values[sel, :kb], h, w, kind, self.wavelet)
        return blocks

    def rmse(self, W) -> float:
        """Root-mean-square error of the decoded matrix against W."""
        W = check_matrix(W)
        if W.shape != self.shape:
            raise ValueError(f"W has shape {W.shape}, the encoded matrix {self.shape}")
        return float(np.sqrt(np.mean(np.square(self.decode(np.float64) - W))))

    def _state(self) -> tuple[dict, dict]:
        """Config and arrays for rbe.save."""
        config = {"shape": list(self.shape), "block": list(self.block), "wavelet": self.wavelet}
        return config, {"coef": self.coef, "transform": self.transform, "index": self.index,
                        "values": self.values}

    @classmethod
    def _from_state(cls, config: dict, arrays: dict) -> "HybridMatrix":
        """Inverse of ``_state``; validates like the constructor."""
        return cls(config["shape"], config["block"], arrays["coef"], arrays["transform"],
                   arrays["index"], arrays["values"], config["wavelet"])

    def __repr__(self):
        counts = np.bincount(self.transform, minlength=len(tf.TRANSFORMS))
        mix = ", ".join(f"{n}={c}" for n, c in zip(tf.TRANSFORMS, counts))
        return (f"HybridMatrix(shape={self.shape}, block={self.block}, k={self.k}, {mix}, "
                f"wavelet={self.wavelet!r}, ratio={self.compression_ratio:.1f})")


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


def check_coding(grid: BlockGrid, transform: np.ndarray, index: np.ndarray) -> None:
    """Transform ids known; each block's first min(k, h*w) indices distinct and inside it."""
    if (transform >= len(tf.TRANSFORMS)).any():
        raise ValueError(f"transform ids must be < {len(tf.TRANSFORMS)}")
    sizes = grid.block_sizes()
    # Blocks in chunks: the int64 temporaries stay small whatever the size of a loaded file.
    step = max(1, _CHECK_CHUNK_ELEMENTS // max(1, index.shape[1]))
    for start in range(0, len(index), step):
        _check_index(index[start:start + step], sizes[start:start + step])


def _check_index(index: np.ndarray, sizes: np.ndarray) -> None:
    k = index.shape[1]
    used = np.arange(k) < np.minimum(k, sizes)[:, None]
    if (index[used] >= np.repeat(sizes, used.sum(axis=1))).any():
        raise ValueError("index points outside its block")
    ordered = np.sort(np.where(used, index.astype(np.int64), -1 - np.arange(k)), axis=1)
    if (np.diff(ordered, axis=1) == 0).any():
        raise ValueError("index repeats a position within a block")
