"""FusedLinear: a linear layer whose weights are generated from one seed per block.

The layer stores one Packed128 seed (16 bytes) per block of its weight matrix, a per-layer
affine ``W_eff = alpha * W + beta`` and an optional bias (DESIGN section 6). It computes and
trains without ever storing the weight matrix (DESIGN sections 3, 4 and 7):

- ``mode="fast"``: the C kernels of ``rbe/include/rbe/fused.h``. A matrix-vector product
  generates each weight group and dots it with the input in registers; a batch generates one
  block row's weights at a time into a thread-local buffer and multiplies it with BLAS sgemm.
  Inputs are permuted once into the kernels' class-grouped column order, so no weight is moved.
- ``mode="precise"``: float64 with libm, one block row at a time in NumPy; the oracle.

Training follows DESIGN section 4: ``backward`` computes dX, the gradients of r, theta, alpha,
beta and bias, and for every block and position class the linearised loss change of moving the
class to its two candidate states; the best candidate is kept in :attr:`FusedLinear.pending_sel`
when it lowers the loss by more than ``tau`` times the class's share of sum |G W_eff|, and
applied by :meth:`FusedLinear.after_step` (called by the optimisers of :mod:`rbe.optim`).
"""
from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
from threadpoolctl import ThreadpoolController

from . import _core, kernel
from ._checks import (MAX_FEATURES, block_count, finite_output, layer_input,
                      nonnegative_number, positive_int)
from . import seeds as seeds_mod

STATS = _core.FUSED_STATS
#: The seed's derivative map and its inverse (DESIGN section 4), indexed by state.
POS_STATE = np.array([1, 0, 3, 2, 5, 6, 7, 4], dtype=np.uint8)
NEG_STATE = np.array([7, 6, 5, 4, 3, 2, 1, 0], dtype=np.uint8)
_SEL_MASK = np.uint64((1 << (seeds_mod.SEL_BITS * seeds_mod.N_CLASSES)) - 1)
_SEL_SHIFTS = np.arange(seeds_mod.N_CLASSES, dtype=np.uint64) * np.uint64(seeds_mod.SEL_BITS)


class _SingleThreadedBlas:
    """Limits BLAS to one thread while any fused kernel runs (re-entrant across threads).

    The kernels call sgemm from inside their own parallel loops; a multi-threaded BLAS there
    would start its threads on top of ours. The limit is process-wide (BLAS has no per-call
    setting), so it is set by the first caller and restored by the last.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._limiter = None
        self._controller = None

    def __enter__(self):
        with self._lock:
            if self._users == 0:
                if self._controller is None:      # inspects the loaded libraries: once
                    self._controller = ThreadpoolController()
                self._limiter = self._controller.limit(limits=1, user_api="blas")
            self._users += 1

    def __exit__(self, *exc):
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._limiter.restore_original_limits()
                self._limiter = None


_single_threaded_blas = _SingleThreadedBlas()

# OpenBLAS runs a product of up to 2^18 multiply-adds on the calling thread, so the kernels'
# sgemm calls need no limit when they are that small (which skips the limit's cost, noticeable
# on one-vector calls).
_SERIAL_BLAS_WORK = 1 << 18


def _blas_guard(sgemm_work: int):
    """The BLAS limit, unless every sgemm call of the kernel (sgemm_work multiply-adds) stays
    on the calling thread anyway."""
    small = sgemm_work <= _SERIAL_BLAS_WORK
    return contextlib.nullcontext() if small else _single_threaded_blas


def states_of(hi: np.ndarray) -> np.ndarray:
    """The four state selectors of ``hi`` words, uint8 with a trailing axis of 4."""
    return ((hi[..., None] >> _SEL_SHIFTS) & np.uint64(seeds_mod.N_STATES - 1)).astype(np.uint8)


def with_states(hi: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """``hi`` words with their four 3-bit state selectors replaced by ``sel`` (trailing axis 4)."""
    bits = np.bitwise_or.reduce(sel.astype(np.uint64) << _SEL_SHIFTS, axis=-1)
    return (hi & ~_SEL_MASK) | bits


def _padded(A: np.ndarray, width: int) -> np.ndarray:
    """A with zero columns appended up to ``width``."""
    return np.pad(A, ((0, 0), (0, width - A.shape[1])))


def _block_row(blocks: np.ndarray) -> np.ndarray:
    """(grid_cols, h, w) blocks of one block row as an (h, grid_cols * w) matrix."""
    return blocks.transpose(1, 0, 2).reshape(blocks.shape[1], -1)


class FusedLinear:
    """Linear layer ``y = x W_eff^T + bias`` with ``W_eff = alpha W + beta`` and W generated
    from one Packed128 seed per block.

    Parameters
    ----------
    in_features, out_features : int
        Layer size; neither may be smaller than the block.
    block : (h, w)
        Block shape (rows = outputs, columns = inputs). Edge blocks of a layer whose size is not
        a multiple of the block are the full block cropped.
    bias : bool
        Whether the layer has a bias (float32, initialised to zero).
    seed : int or numpy Generator, optional
        Random initialisation: r ~ U[0.2, 0.9), theta ~ U[-0.1, 0.4) (so that every block
        starts with weights and gradients that are not clamped to zero), uniform states and
        detail; alpha = 1, beta = 0.
    mode : {"fast", "precise"}
    tau : float
        Threshold of the state transitions (DESIGN section 4), >= 0.

    Attributes
    ----------
    seeds : ndarray of rbe.seeds.DTYPE, shape (block rows, block columns)
        Writable; ``hi`` is what the layer computes with, ``lo`` holds the r and theta master
        copies that the optimisers update.
    grads : dict
        Filled (overwritten) by :meth:`backward`: ``"r"`` and ``"theta"`` shaped like ``seeds``,
        ``"alpha"``, ``"beta"`` (0-d) and ``"bias"``.
    pending_sel : ndarray of uint8, shape seeds.shape + (4,), or None
        State of every position class after the transitions chosen by the last
        :meth:`backward`; applied by :meth:`after_step`.
    """

    def __init__(self, in_features: int, out_features: int, block=(64, 64), bias: bool = True,
                 seed=None, mode: str = "fast", tau: float = 0.01):
        self.in_features = positive_int("in_features", in_features, MAX_FEATURES)
        self.out_features = positive_int("out_features", out_features, MAX_FEATURES)
        self.block = kernel.check_block_shape(block)
        if self.block[0] > self.out_features or self.block[1] > self.in_features:
            raise ValueError(f"block {self.block} is larger than the layer "
                             f"({self.out_features} x {self.in_features})")
        block_count((self.out_features, self.in_features), self.block)
        if mode not in kernel.MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {kernel.MODES}")
        self.mode, self.tau = mode, nonnegative_number("tau", tau)
        grid = (-(-self.out_features // self.block[0]), -(-self.in_features // self.block[1]))
        rng = np.random.default_rng(seed)
        self._seeds = seeds_mod.pack(
            rng.uniform(0.2, 0.9, grid), rng.uniform(-0.1, 0.4, grid),
            rng.integers(0, seeds_mod.N_STATES, grid + (seeds_mod.N_CLASSES,)),
            rng.integers(0, 256, grid))
        # The master copies as strided float32 views into lo (DTYPE is little-endian, so
        # float 2 of a seed is theta and float 3 is r on any host).
        masters = self._seeds.view("<f4").reshape(grid + (4,))
        self._r, self._theta = masters[..., 3], masters[..., 2]
        self._alpha = np.ones((), np.float32)
        self._beta = np.zeros((), np.float32)
        self.bias = np.zeros(self.out_features, np.float32) if bias else None
        self.grads: dict = {}
        self.pending_sel = None
        self._build_permutation()

    # ---- parameters ------------------------------------------------------------------------

    @property
    def seeds(self) -> np.ndarray:
        return self._seeds

    @seeds.setter
    def seeds(self, value) -> None:
        value = np.asarray(value)
        if value.dtype != seeds_mod.DTYPE or value.shape != self._seeds.shape:
            raise ValueError(f"seeds must be an array of rbe.seeds.DTYPE with shape "
                             f"{self._seeds.shape}, got {value.dtype} {value.shape}")
        self._seeds[...] = value
        self.pending_sel = None

    @property
    def alpha(self) -> np.ndarray:
        return self._alpha

    @alpha.setter
    def alpha(self, value) -> None:
        self._alpha[...] = value

    @property
    def beta(self) -> np.ndarray:
        return self._beta

    @beta.setter
    def beta(self, value) -> None:
        self._beta[...] = value

    def parameters(self) -> dict:
        """Arrays the optimisers update in place: r and theta masters, alpha, beta, bias."""
        params = {"r": self._r, "theta": self._theta, "alpha": self._alpha, "beta": self._beta}
        if self.bias is not None:
            params["bias"] = self.bias
        return params

    def after_step(self) -> None:
        """Apply the pending state transitions and re-derive ``hi`` from the masters."""
        self._check_parameters(masters=True)
        if self.pending_sel is not None:
            self._seeds["hi"] = with_states(self._seeds["hi"], self.pending_sel)
            self.pending_sel = None
        seeds_mod.requantize(self._seeds)

    def _state(self) -> tuple[dict, dict]:
        """Config and arrays for rbe.save (seeds as their two uint64 words)."""
        config = {"in_features": self.in_features, "out_features": self.out_features,
                  "block": list(self.block), "mode": self.mode, "tau": self.tau}
        arrays = {"hi": self._seeds["hi"], "lo": self._seeds["lo"],
                  "alpha": self._alpha, "beta": self._beta}
        if self.bias is not None:
            arrays["bias"] = self.bias
        return config, arrays

    @classmethod
    def _from_state(cls, config: dict, arrays: dict) -> "FusedLinear":
        """Inverse of ``_state``; validates like the constructor and the setters."""
        layer = cls(config["in_features"], config["out_features"], tuple(config["block"]),
                    bias="bias" in arrays, mode=config["mode"], tau=config["tau"])
        if arrays["hi"].shape != layer.seeds.shape or arrays["lo"].shape != layer.seeds.shape:
            raise ValueError(f"seed words of shape {arrays['hi'].shape} do not fit the "
                             f"{layer.seeds.shape} block grid")
        seeds = np.empty(layer.seeds.shape, seeds_mod.DTYPE)
        seeds["hi"], seeds["lo"] = arrays["hi"], arrays["lo"]
        layer.seeds = seeds
        layer.alpha, layer.beta = arrays["alpha"], arrays["beta"]
        if layer.bias is not None:
            layer.bias[...] = arrays["bias"]
        layer._check_parameters(masters=True)
        return layer

    @property
    def nbytes(self) -> int:
        """Bytes stored: seeds, alpha, beta and bias."""
        bias = self.bias.nbytes if self.bias is not None else 0
        return self._seeds.nbytes + self._alpha.nbytes + self._beta.nbytes + bias

    @property
    def compression_ratio(self) -> float:
        """Bytes of the same layer with a dense float32 matrix, over :attr:`nbytes`."""
        bias = self.bias.nbytes if self.bias is not None else 0
        return (4 * self.out_features * self.in_features + bias) / self.nbytes

    def to_dense(self) -> np.ndarray:
        """W_eff = alpha W + beta, (out_features, in_features): float32 (fast) or float64."""
        h, w = self.block
        blocks = kernel.generate(self._seeds, self.block, self.mode)
        dense = blocks.transpose(0, 2, 1, 3).reshape(blocks.shape[0] * h, blocks.shape[1] * w)
        dense = dense[:self.out_features, :self.in_features]
        return (dense * dense.dtype.type(self._alpha) + dense.dtype.type(self._beta))

    # ---- forward and backward --------------------------------------------------------------

    def forward(self, X) -> np.ndarray:
        """``X W_eff^T + bias`` for X of shape (in_features,) or (batch, in_features).

        float32 input gives float32, float64 gives float64 (fast mode computes in float32).
        """
        X = layer_input("X", X, self.in_features)
        self._check_parameters()
        X2 = X.reshape(-1, self.in_features)
        if self.mode == "fast":
            Z = self._forward_fast(np.ascontiguousarray(X2, np.float32))
        else:
            Z = self._forward_precise(X2.astype(np.float64, copy=False))
        # the input's row sums are needed only for beta
        row_sums = X2.sum(axis=1, dtype=np.float64) if float(self._beta) != 0.0 else None
        Y = self._affine(Z, row_sums, self.bias).astype(X.dtype, copy=False)
        return finite_output("forward", Y).reshape(X.shape[:-1] + (self.out_features,))

    def backward(self, X, dY) -> np.ndarray:
        """dX = dY W_eff; fills :attr:`grads` and chooses the state transitions.

        Parameters
        ----------
        X : the forward input, (in_features,) or (batch, in_features)
        dY : dL/dY, shaped like the forward output

        Returns
        -------
        dX shaped and typed like X.
        """
        X = layer_input("X", X, self.in_features)
        dY = layer_input("dY", dY, self.out_features)
        if X.shape[:-1] != dY.shape[:-1]:
            raise ValueError(f"X {X.shape} and dY {dY.shape} have different batch shapes")
        self._check_parameters()
        X2, dY2 = X.reshape(-1, self.in_features), dY.reshape(-1, self.out_features)
        if self.mode == "fast":
            dZ, stats = self._backward_fast(np.ascontiguousarray(X2, np.float32),
                                            np.ascontiguousarray(dY2, np.float32))
        else:
            dZ, stats = self._backward_precise(X2.astype(np.float64, copy=False),
                                               dY2.astype(np.float64, copy=False))
        dY_sum = dY2.sum(axis=1, dtype=np.float64)
        self._fill_grads(stats, dY_sum, X2.sum(axis=1, dtype=np.float64), dY2)
        dX = self._affine(dZ, dY_sum, None).astype(X.dtype, copy=False)
        return finite_output("backward", dX).reshape(X.shape)

    __call__ = forward

    def _affine(self, Z, row_sums, bias):
        """alpha Z + beta row_sums (broadcast over columns) + bias, in place of Z (a fresh
        array of the kernels); the terms that alpha = 1, beta = 0, no bias make exact no-ops
        are skipped (row_sums may be None when beta = 0)."""
        alpha, beta = float(self._alpha), float(self._beta)
        if alpha != 1.0:
            Z *= Z.dtype.type(alpha)
        if beta != 0.0:
            Z += (beta * row_sums).astype(Z.dtype)[:, None]
        if bias is not None:
            Z += bias
        return Z

    def _fill_grads(self, stats, dY_sum, X_sum, dY2) -> None:
        alpha = float(self._alpha)
        self.grads = {
            "r": alpha * stats[..., STATS["dr"]],
            "theta": alpha * stats[..., STATS["dtheta"]],
            "alpha": np.array(stats[..., STATS["gw"]].sum()),
            "beta": np.array(np.dot(dY_sum, X_sum)),
        }
        if self.bias is not None:
            self.grads["bias"] = dY2.sum(axis=0, dtype=np.float64)
        self.pending_sel = self._choose_transitions(stats)

    def _choose_transitions(self, stats) -> np.ndarray:
        """New state per class: the candidate with the lowest linearised loss change dL, kept
        when dL < -tau * sum |G W_eff| over the class (DESIGN section 4)."""
        sel = np.empty(self._seeds.shape + (seeds_mod.N_CLASSES,), np.uint8)
        _core.fused_choose_transitions(np.ascontiguousarray(stats), self._hi(),
                                       float(self._alpha), self.tau, sel)
        return sel

    # ---- fast mode -------------------------------------------------------------------------

    def _build_permutation(self) -> None:
        """Grouped input order of the kernels: block column bj, group p, lane q holds input
        column bj*w + 4q + p (fused.h); padding lanes and columns past the layer hold -1."""
        w = self.block[1]
        g = kernel.shape_tables(self.block).rho.shape[2]
        grid_cols = self._seeds.shape[1]
        bj, p, q = np.meshgrid(np.arange(grid_cols), np.arange(4), np.arange(g), indexing="ij")
        column = (bj * w + 4 * q + p).reshape(-1)
        valid = (((4 * q + p) < w).reshape(-1)) & (column < self.in_features)
        self._source = np.where(valid, column, -1).astype(np.intp)

    def _grouped(self, X2: np.ndarray) -> np.ndarray:
        Xp = np.empty((X2.shape[0], self._source.size), np.float32)
        _core.fused_group(X2, self._source, Xp)
        return Xp

    def _hi(self) -> np.ndarray:
        return np.ascontiguousarray(self._seeds["hi"])

    def _kernel_args(self) -> tuple:
        return (self._hi(), *kernel.shape_tables(self.block), self.block[1])

    def _kernel_select(self) -> dict:
        return {"simd": _core.SIMD_PATHS[kernel.current_simd()],
                "family": _core.APPROX_FAMILIES[kernel.default_approx()]}

    def _forward_fast(self, X2: np.ndarray) -> np.ndarray:
        Xp = self._grouped(X2)
        Y = np.empty((X2.shape[0], self.out_features), np.float32)
        if X2.shape[0] == 1:
            _core.fused_gemv(*self._kernel_args(), Xp[0], Y[0], **self._kernel_select())
        else:
            # one sgemm per block row: (h x grouped width) times the batch
            with _blas_guard(self.block[0] * Xp.shape[1] * X2.shape[0]):
                _core.fused_forward_batch(*self._kernel_args(), Xp, Y, **self._kernel_select())
        return Y

    def _backward_fast(self, X2: np.ndarray, dY2: np.ndarray):
        Xp = self._grouped(X2)
        dXp = np.empty_like(Xp)
        stats = np.empty(self._seeds.shape + (STATS["n"],), np.float64)
        # sgemm calls per block (a batch; one vector needs none): (h x grouped block width)
        # times the batch
        with _blas_guard(self.block[0] * Xp.shape[1] // self._seeds.shape[1] * X2.shape[0]):
            _core.fused_backward(*self._kernel_args(), Xp, dY2, dXp, stats,
                                 float(self._alpha), float(self._beta), **self._kernel_select())
        dZ = np.empty(X2.shape, np.float32)
        _core.fused_ungroup(dXp, self._source, dZ)
        return dZ, stats

    # ---- precise mode (float64, one block row at a time) -------------------------------------

    def _forward_precise(self, X2: np.ndarray) -> np.ndarray:
        h, w = self.block
        Xpad = _padded(X2, self._seeds.shape[1] * w)
        Z = np.empty((X2.shape[0], self.out_features))
        for bi in range(self._seeds.shape[0]):
            n = min(h, self.out_features - bi * h)
            W = _block_row(kernel.generate(self._seeds[bi], self.block, "precise"))
            Z[:, bi * h:bi * h + n] = Xpad @ W[:n].T
        return Z

    def _backward_precise(self, X2: np.ndarray, dY2: np.ndarray):
        h, w = self.block
        grid_rows, grid_cols = self._seeds.shape
        Xpad = _padded(X2, grid_cols * w)
        sel = states_of(self._seeds["hi"])
        candidates = [self._seeds.copy(), self._seeds.copy()]
        for cand, states in zip(candidates, (POS_STATE[sel], NEG_STATE[sel])):
            cand["hi"] = with_states(cand["hi"], states)
        dZ = np.zeros((X2.shape[0], grid_cols * w))
        stats = np.zeros(self._seeds.shape + (STATS["n"],))
        for bi in range(grid_rows):
            n = min(h, self.out_features - bi * h)
            dYb = dY2[:, bi * h:bi * h + n]
            G = (dYb.T @ Xpad).reshape(n, grid_cols, w).transpose(1, 0, 2)
            W, dr, dth = (a[:, :n] for a in kernel.generate_with_grad(
                self._seeds[bi], self.block, "precise"))
            moved = [kernel.generate(c[bi], self.block, "precise")[:, :n] - W
                     for c in candidates]
            dZ += dYb @ _block_row(W)
            self._precise_block_stats(stats[bi], G, W, dr, dth, moved)
        return dZ[:, :self.in_features], stats

    def _precise_block_stats(self, out, G, W, dr, dth, moved) -> None:
        """The sums of fused.h's backward kernel for one block row, in float64."""
        i, j = np.meshgrid(np.arange(G.shape[1]), np.arange(G.shape[2]), indexing="ij")
        W_eff = float(self._alpha) * W + float(self._beta)
        out[:, STATS["dr"]] = np.einsum("kij,kij->k", G, dr)
        out[:, STATS["dtheta"]] = np.einsum("kij,kij->k", G, dth)
        out[:, STATS["gw"]] = np.einsum("kij,kij->k", G, W)
        for c in range(seeds_mod.N_CLASSES):
            m = ((j - i) % 4) == c
            base = STATS["class"] + 4 * c
            out[:, base + STATS["cur"]] = (G * W)[:, m].sum(axis=1)
            out[:, base + STATS["pos"]] = (G * moved[0])[:, m].sum(axis=1)
            out[:, base + STATS["neg"]] = (G * moved[1])[:, m].sum(axis=1)
            out[:, base + STATS["abs"]] = np.abs(G * W_eff)[:, m].sum(axis=1)

    # ---- checks ----------------------------------------------------------------------------

    def _check_parameters(self, masters: bool = False) -> None:
        for name, value in self.parameters().items():
            if name in ("r", "theta") and not masters:
                continue
            finite = math.isfinite(value) if value.ndim == 0 else np.isfinite(value).all()
            if not finite:
                raise ValueError(f"parameter {name!r} of the layer is not finite")
