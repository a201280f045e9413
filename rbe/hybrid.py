"""HybridLinear: a linear layer stored as hybrid blocks that computes in the transform domain.

For a block (bi, bj) of shape (h, w), W_b = sum_k c_k B_k + G_h S G_w^T, where B_k are the 8
basis functions, S holds k nonzero coefficients and G are the synthesis matrices of the block's
transform. Then, for an input slice x_bj and output slice y_bi,

    y_bi = sum_bj sum_k c_bk (B_k x_bj) + sum_t G_h,t sum_{bj: t_b = t} S_b (G_w,t^T x_bj)

so no block is ever rebuilt: G_w^T x is computed once per block column and transform, the
sparse products S_b z cost O(k) per block (C core), G_h is applied once per block row and
transform. The basis part uses low-rank factors B_k = L_k R (``tf.basis_factors``): R x_bj is
shared down a block column and each block costs 8 * rank multiply-adds.
Backward uses the same identities with the roles of analysis and synthesis swapped.

Internally the layer works feature-major (features x batch) so that the sparse loops read and
write contiguous batch rows and the dense transforms are plain GEMMs.
"""
from __future__ import annotations

import numpy as np

from . import _core
from . import transforms as tf
from ._checks import finite_output, layer_input, positive_int
from .encoder import BlockGrid, HybridMatrix, encode

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_SERIAL_GEMM = 1 << 18      # OpenBLAS runs a GEMM of up to 2^18 multiply-adds on one thread
_SMALL_GEMM = 1 << 22       # larger products gain from the BLAS threads


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b; a small product runs as pieces of rows that BLAS keeps on the calling thread.

    The products of a batch-less forward are small and several per call; handing each to the
    BLAS thread pool makes them wait for its threads (milliseconds when the cores are busy).
    """
    m, k = a.shape
    size = m * k * b.shape[1]
    if size > _SMALL_GEMM or size <= _SERIAL_GEMM:
        return a @ b
    out = np.empty((m, b.shape[1]), np.result_type(a, b))
    step = max(1, _SERIAL_GEMM // (k * b.shape[1]))
    for start in range(0, m, step):
        np.matmul(a[start:start + step], b, out=out[start:start + step])
    return out


def _left(matrix: np.ndarray, stack: np.ndarray) -> np.ndarray:
    """matrix @ stack[i] for every i of a (n, p, batch) stack; one GEMM when batch == 1."""
    n, p, batch = stack.shape
    if batch == 1:
        return _matmul(stack.reshape(n, p), matrix.T).reshape(n, -1, 1)
    return np.matmul(matrix, stack)


def _low_frequency_positions(h: int, w: int, k: int) -> np.ndarray:
    """The k flat positions with the lowest r + c (then lowest r), ascending."""
    r, c = np.divmod(np.arange(h * w), w)
    return np.sort(np.lexsort((r, r + c))[:k])


class HybridLinear:
    """y = W x + b with W (out_features x in_features) stored as hybrid blocks.

    Parameters
    ----------
    in_features, out_features : int
        Layer size.
    block : (int, int)
        Block shape (h, w); edge blocks are smaller.
    k : int
        Residual coefficients per block. A layer built here (for training from scratch) uses the
        k lowest-frequency positions of its transform; ``from_dense`` picks them by magnitude.
    transform : {"dct", "dwt"}
        Residual transform of every block.
    bias : bool
        Add a trainable bias.
    wavelet : str
        PyWavelets wavelet of the "dwt" transform.
    seed : int or None
        Seed of the random initialisation (residual values with the variance of
        ``torch.nn.Linear``'s uniform weights; basis coefficients 0).

    Attributes
    ----------
    coef : (nblocks, 8) float32, values : (nblocks, k) float32, bias : (out_features,) float32
        Trainable parameters, updated in place by ``rbe.optim``.
    grads : dict
        Gradients with the same names and shapes, overwritten by ``backward``.
    transform, index : read-only arrays
        Per-block transform ids and the uint16 flat positions of the values.
    """

    def __init__(self, in_features, out_features, block=(64, 64), k=64, transform="dct",
                 bias=True, wavelet=tf.DEFAULT_WAVELET, seed=None):
        if transform not in tf.TRANSFORMS:
            raise ValueError(f"a layer trained from scratch needs one transform, "
                             f"{tf.TRANSFORMS}, got {transform!r}")
        grid = BlockGrid((out_features, in_features), block)
        tf.check_wavelet(wavelet)
        k = positive_int("k", k)
        rng = np.random.default_rng(seed)
        k = min(int(k), grid.block[0] * grid.block[1])
        index = np.zeros((grid.nblocks, k), np.uint16)
        values = np.zeros((grid.nblocks, k), np.float32)
        for group in grid.groups():
            ids = grid.block_ids(group)
            positions = _low_frequency_positions(group.h, group.w, k)
            # Orthonormal transforms keep the energy: per-weight variance 1 / (3 in_features).
            std = np.sqrt(group.h * group.w / (3.0 * in_features * len(positions)))
            index[ids, :len(positions)] = positions
            values[ids, :len(positions)] = rng.normal(0.0, std, (len(ids), len(positions)))
        ids = np.full(grid.nblocks, tf.TRANSFORM_IDS[transform], np.uint8)
        coef = np.zeros((grid.nblocks, tf.NUM_BASIS), np.float32)
        matrix = HybridMatrix(grid.shape, grid.block, coef, ids, index, values, wavelet)
        bound = 1.0 / np.sqrt(in_features)
        self._attach(matrix, rng.uniform(-bound, bound, out_features) if bias else None)

    @classmethod
    def from_dense(cls, W, bias=None, block=(64, 64), k=64, transform="adaptive",
                   wavelet=tf.DEFAULT_WAVELET, progress=None) -> "HybridLinear":
        """Encode a dense (out_features, in_features) weight matrix (see ``rbe.encode``)."""
        return cls.from_matrix(encode(W, block, k, transform, wavelet, progress), bias)

    @classmethod
    def from_matrix(cls, matrix: HybridMatrix, bias=None) -> "HybridLinear":
        """A layer computing with an encoded matrix (its arrays are copied)."""
        if not isinstance(matrix, HybridMatrix):
            raise ValueError(f"expected a HybridMatrix, got {type(matrix).__name__}")
        layer = cls.__new__(cls)
        layer._attach(matrix, bias)
        return layer

    def _attach(self, matrix, bias):
        self.grid = matrix.grid
        self.wavelet = matrix.wavelet
        self.transform = _frozen(matrix.transform)
        self.index = _frozen(matrix.index)
        self.coef = matrix.coef.copy()
        self.values = matrix.values.copy()
        self.bias = None if bias is None else self._check_bias(bias)
        self._padding = np.arange(self.index.shape[1]) >= self.grid.block_sizes()[:, None]
        # Transforms in use, numbered 0.. as "slots" of the transform-domain arrays.
        kinds = [kind for kind, t in tf.TRANSFORM_IDS.items() if (self.transform == t).any()]
        slot_of = np.zeros(len(tf.TRANSFORMS), np.uint8)
        slot_of[[tf.TRANSFORM_IDS[kind] for kind in kinds]] = np.arange(len(kinds))
        self._slots = _frozen(slot_of[self.transform])
        self._nslots = len(kinds)
        self._groups = []
        for g in self.grid.groups():
            ids = self.grid.block_ids(g)
            contiguous = ids[-1] - ids[0] + 1 == len(ids)
            self._groups.append((g, slice(ids[0], ids[-1] + 1) if contiguous else ids,
                                 *self.grid.slices(g)))
        # (length, element slice) of the full and the ragged block rows / block columns.
        self._row_classes = list({rows.start: (g.h, rows) for g, _, rows, _ in self._groups}
                                 .values())
        self._col_classes = list({cols.start: (g.w, cols) for g, _, _, cols in self._groups}
                                 .values())
        self._operators = {dtype: self._stacked_operators(kinds, dtype) for dtype in _FLOATS}
        self.grads = {name: np.zeros_like(p) for name, p in self.parameters().items()}

    def _stacked_operators(self, kinds, dtype):
        """Per axis length n: the synthesis matrices of all transforms in use, side by side.

        ``inputs[n]`` (n * nslots, n) maps a slice x to z[c, t] = (G_t^T x)[c];
        ``outputs[n]`` (n, n * nslots) maps u[r, t] back to sum_t G_t u[:, t].
        """
        synthesis = lambda n: [tf.operator(n, kind, self.wavelet, dtype).synthesis
                               for kind in kinds]
        inputs = {w: _frozen(np.stack([g.T for g in synthesis(w)], axis=1).reshape(-1, w))
                  for w, _ in self._col_classes}
        outputs = {h: _frozen(np.stack(synthesis(h), axis=2).reshape(h, -1))
                   for h, _ in self._row_classes}
        return inputs, outputs

    def _check_bias(self, bias):
        bias = np.asarray(bias)
        if bias.shape != (self.out_features,) or bias.dtype.kind not in "fiu":
            raise ValueError(f"bias must be a real vector of shape ({self.out_features},), "
                             f"got {bias.dtype} {bias.shape}")
        with np.errstate(over="ignore"):        # finite in float64 may overflow float32
            bias = bias.astype(np.float32)
        if not np.isfinite(bias).all():
            raise ValueError("bias contains NaN or infinite values (or values beyond float32)")
        return bias

    in_features = property(lambda self: self.grid.shape[1])
    out_features = property(lambda self: self.grid.shape[0])
    k = property(lambda self: self.index.shape[1])

    # -- optimiser protocol -------------------------------------------------------------------

    def parameters(self) -> dict:
        """Trainable arrays, updated in place by ``rbe.optim``."""
        params = {"coef": self.coef, "values": self.values}
        if self.bias is not None:
            params["bias"] = self.bias
        return params

    def after_step(self) -> None:
        """Keep the padding entries of blocks smaller than k at zero."""
        self.values[self._padding] = 0.0

    # -- products -------------------------------------------------------------------------------

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Y = X W^T + b for X of shape (in_features,) or (batch, in_features)."""
        xt = self._features_major(X, self.in_features, "X")
        inputs, outputs = self._operators[xt.dtype]
        z = self._apply(inputs, self._col_classes, xt, self._nslots)
        u = np.zeros((self.out_features, self._nslots, xt.shape[1]), xt.dtype)
        _core.hybrid_rows_forward(*self._kernel_args(), z, u)
        yt = self._basis_forward(xt)
        yt += self._apply(outputs, self._row_classes, u, 1).reshape(yt.shape)
        if self.bias is not None:
            yt += self.bias[:, None]
        finite_output("forward", yt)
        return np.ascontiguousarray(yt.T).reshape(X.shape[:-1] + (self.out_features,))

    def backward(self, X: np.ndarray, dY: np.ndarray) -> np.ndarray:
        """dX for upstream gradient dY; overwrites ``grads`` with the parameter gradients."""
        xt = self._features_major(X, self.in_features, "X")
        dyt = self._features_major(dY, self.out_features, "dY")
        if dY.dtype != X.dtype or dY.shape[:-1] != X.shape[:-1]:
            raise ValueError(f"dY must have dtype {X.dtype} and shape "
                             f"{X.shape[:-1] + (self.out_features,)}, got {dY.dtype} {dY.shape}")
        inputs, outputs = self._operators[xt.dtype]
        z = self._apply(inputs, self._col_classes, xt, self._nslots)
        a = self._apply({h: m.T for h, m in outputs.items()}, self._row_classes, dyt,
                        self._nslots)
        dz = np.zeros_like(z)
        _core.hybrid_cols_backward(*self._kernel_args(), a, dz)
        value_grads = np.empty(self.values.shape, xt.dtype)
        _core.hybrid_value_grads(*self._kernel_args(), a, z, value_grads)
        self.grads["values"][...] = value_grads
        dxt = self._basis_backward(xt, dyt)
        dxt += self._apply({w: m.T for w, m in inputs.items()}, self._col_classes, dz,
                           1).reshape(dxt.shape)
        if self.bias is not None:
            self.grads["bias"][...] = dyt.sum(axis=1)
        finite_output("backward", dxt)
        return np.ascontiguousarray(dxt.T).reshape(X.shape)

    def _kernel_args(self):
        return self.grid.shape, self.grid.block, self._slots, self.index, self.values

    @staticmethod
    def _apply(matrices, classes, source, slots_out):
        """Apply matrices[n] to every length-n slice (block row or column) of ``source``.

        ``source`` is (features, ..., batch) with n * (its middle size) rows per slice; the
        result is (features, slots_out, batch).
        """
        batch = source.shape[-1]
        out = np.empty((sum(p.stop - p.start for _, p in classes), slots_out, batch),
                       source.dtype)
        for n, part in classes:
            matrix = matrices[n]
            stack = source[part].reshape(-1, matrix.shape[1], batch)
            out[part] = _left(matrix, stack).reshape(-1, slots_out, batch)
        return out

    def _basis_forward(self, xt):
        """sum_bj sum_k c_bk B_k x_bj for every block row, (out, batch).

        With B_k = L_k R (``tf.basis_factors``): p_bj = R x_bj per block column, then
        s_bik = sum_bj c_bk p_bj and y_bi = sum_k L_k s_bik, all as GEMMs.
        """
        batch = xt.shape[1]
        yt = np.zeros((self.out_features, batch), xt.dtype)
        for group, sel, rows, cols in self._groups:
            nr, nc = group.row1 - group.row0, group.col1 - group.col0
            left, right = tf.basis_factors(group.h, group.w, xt.dtype)
            p = _left(right, xt[cols].reshape(nc, group.w, batch))
            coef = self._coef_rows(sel, nr, nc, xt.dtype)
            s = _matmul(coef, p.reshape(nc, -1))
            yt[rows] += _left(left, s.reshape(nr, left.shape[1], batch)).reshape(-1, batch)
        return yt

    def _basis_backward(self, xt, dyt):
        """dX of the basis part, (in, batch); fills grads["coef"]."""
        batch = xt.shape[1]
        dxt = np.zeros((self.in_features, batch), xt.dtype)
        for group, sel, rows, cols in self._groups:
            nr, nc = group.row1 - group.row0, group.col1 - group.col0
            left, right = tf.basis_factors(group.h, group.w, xt.dtype)
            p = _left(right, xt[cols].reshape(nc, group.w, batch)).reshape(nc, -1)
            g = _left(left.T, dyt[rows].reshape(nr, group.h, batch))     # L_k^T dy_bi
            g = g.reshape(nr * tf.NUM_BASIS, -1)
            grad = (g @ p.T).reshape(nr, tf.NUM_BASIS, nc).transpose(0, 2, 1)
            self.grads["coef"][sel] = grad.reshape(-1, tf.NUM_BASIS)
            coef_t = self._coef_rows(sel, nr, nc, xt.dtype, transpose=True)
            t = (coef_t @ g).reshape(nc, right.shape[0], batch)
            dxt[cols] += _left(right.T, t).reshape(-1, batch)
        return dxt

    def _coef_rows(self, sel, nr, nc, dtype, transpose=False):
        """Coefficients of a group as (nr*8, nc): row bi*8 + k, column bj (or its transpose
        arrangement (nc, nr*8) with ``transpose``)."""
        coef = self.coef[sel].reshape(nr, nc, tf.NUM_BASIS)
        if transpose:
            return coef.transpose(1, 0, 2).reshape(nc, -1).astype(dtype)
        return coef.transpose(0, 2, 1).reshape(-1, nc).astype(dtype)

    @staticmethod
    def _features_major(X, features, name):
        """Validate X (features,) or (batch, features); return it as (features, batch)."""
        if not isinstance(X, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(X).__name__}")
        if not X.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
        X = layer_input(name, X, features)
        return np.ascontiguousarray(X.reshape(-1, features).T)

    # -- dense view and storage -----------------------------------------------------------------

    @property
    def matrix(self) -> HybridMatrix:
        """The weight as a HybridMatrix (copies of the current parameters)."""
        return HybridMatrix(self.grid.shape, self.grid.block, self.coef.copy(), self.transform,
                            self.index, self.values.copy(), self.wavelet)

    def to_dense(self) -> np.ndarray:
        """The dense float32 weight matrix (out_features, in_features)."""
        return self.matrix.decode(np.float32)

    @property
    def nbytes(self) -> int:
        """Every stored byte of the weight, plus the bias."""
        return self.matrix.nbytes + (0 if self.bias is None else self.bias.nbytes)

    @property
    def compression_ratio(self) -> float:
        """Bytes of the dense float32 layer (weight and bias) / stored bytes."""
        dense = 4 * self.in_features * self.out_features
        return (dense + (0 if self.bias is None else self.bias.nbytes)) / self.nbytes

    def _state(self) -> tuple[dict, dict]:
        """Config and arrays for rbe.save."""
        config, arrays = self.matrix._state()
        if self.bias is not None:
            arrays["bias"] = self.bias
        return config, arrays

    @classmethod
    def _from_state(cls, config: dict, arrays: dict) -> "HybridLinear":
        """Inverse of ``_state``; validates like the constructor."""
        arrays = dict(arrays)
        bias = arrays.pop("bias", None)
        return cls.from_matrix(HybridMatrix._from_state(config, arrays), bias)

    def __repr__(self):
        return (f"HybridLinear(in_features={self.in_features}, "
                f"out_features={self.out_features}, block={self.grid.block}, k={self.k}, "
                f"bias={self.bias is not None}, ratio={self.compression_ratio:.1f})")


def _frozen(a):
    a = a.copy()
    a.flags.writeable = False
    return a
