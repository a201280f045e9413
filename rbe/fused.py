"""FusedLinear: a linear layer whose weights are generated from one seed per block.

The layer stores one Packed128 seed (16 bytes) per block of its weight matrix, optionally a
float32 signed scale per block, a per-layer affine (alpha, beta) and an optional bias. Block
(bi, bj) of the effective weight matrix is::

    W_eff = alpha * s[bi, bj] * (W - c * mean(W)) + beta

with W the generated block, s its scale (1 without block scales) and c = 1 when the layer
centres its blocks (docs/fused.md, "Parameterisation"). It computes and trains without ever
storing the weight matrix:

- ``mode="fast"``: the C kernels of ``rbe/include/rbe/fused.h``. The forward product is one
  call of the layer's plan (``rbe._fused.ForwardPlan``): a matrix-vector product generates
  each weight group and dots it with the input in registers; a batch generates tiles of a
  block row's weights into a thread-local panel and multiplies them with BLAS sgemm. Inputs are
  permuted into the kernels' class-grouped column order, so no weight is moved.
- ``mode="precise"``: float64 with libm, one block row at a time in NumPy; the oracle.

The kernels compute with the generated W, each block times its scale; the centring and beta
terms are per-block offsets, added from the inputs' block sums. The block means (and the means
of W^2, dW/dr, dW/dtheta) come from per-block sums of the seeds (``rbe._fused.BlockSums``), kept
current block by block as ``hi`` changes.

Training: ``backward`` computes dX and the gradients of the trained parameters, and adds to
:attr:`FusedLinear.transition_stats` the linearised loss change of moving each position class
to its two candidate states. Every ``transition_every`` optimiser steps,
:meth:`FusedLinear.after_step` moves the classes whose accumulated change is below
``-tau`` times their accumulated sum |G W_eff|, at most ``max_moves`` of all classes (those with
the largest relative gain), and, given a loss function, keeps the moves only if the loss does
not increase.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Callable, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from threadpoolctl import ThreadpoolController

from . import _core, _fused, kernel
from . import seeds as seeds_mod
from ._checks import (
    MAX_FEATURES,
    block_count,
    finite_output,
    layer_input,
    nonnegative_number,
    positive_int,
)

STATS = _fused.FUSED_STATS
#: Defaults of the transition rule (measured in docs/fused.md, "State transitions").
TAU, TRANSITION_EVERY, MAX_MOVES = 1.0, 100, 0.02
SUMS = _fused.BLOCK_SUMS
_CLASS_SUMS = slice(SUMS["class"], SUMS["class"] + seeds_mod.N_CLASSES)
# transition_stats[..., c, k]: k = 0, 1 the linearised loss change of the pos / neg candidate
# (before the centring term), 2 sum |G W_eff|, 3 sum G over the block times its scale
_GAIN_POS, _GAIN_NEG, _ABS, _GSUM = range(4)


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


def _blas_guard(sgemm_work: int):
    """The BLAS limit, unless every sgemm call of the kernel (sgemm_work multiply-adds) stays
    on the calling thread anyway (which skips the limit's cost, noticeable on small calls)."""
    small = sgemm_work <= _core.SERIAL_BLAS_WORK
    return contextlib.nullcontext() if small else _single_threaded_blas


def _block_sums(A: np.ndarray, width: int) -> np.ndarray:
    """Sums of A's columns over each block of ``width`` columns (the last may be short)."""
    return np.add.reduceat(A, np.arange(0, A.shape[1], width), axis=1, dtype=np.float64)


def _padded(A: np.ndarray, width: int) -> np.ndarray:
    """A with zero columns appended up to ``width``."""
    return np.pad(A, ((0, 0), (0, width - A.shape[1])))


def _block_row(blocks: np.ndarray) -> np.ndarray:
    """(grid_cols, h, w) blocks of one block row as an (h, grid_cols * w) matrix."""
    return blocks.transpose(1, 0, 2).reshape(blocks.shape[1], -1)


class _BlockMoments(NamedTuple):
    """Per-block means over a layer's valid positions, derived from the seeds."""

    count: np.ndarray      #: positions of each block inside the layer
    mean: np.ndarray       #: mean W
    mean_sq: np.ndarray    #: mean W^2
    mean_dr: np.ndarray    #: mean dW/dr
    mean_dth: np.ndarray   #: mean dW/dtheta


class _BlockTerms(NamedTuple):
    """What the kernels and the offsets of W_eff use per block, in float64 and float32."""

    factor: np.ndarray
    offset: np.ndarray
    factor32: np.ndarray
    offset32: np.ndarray


class FusedLinear:
    """Linear layer ``y = x W_eff^T + bias`` whose weights are generated from one Packed128
    seed per block.

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
        detail, block scales of random sign; alpha and beta then give W_eff mean 0 and
        variance 1 / in_features.
    mode : {"fast", "precise"}
    center : bool
        Subtract each block's mean weight (derived from its seed, nothing stored): a block's
        weights then have mean 0 whatever r, theta and the states are.
    block_scale : bool
        Give each block a trained signed float32 scale (4 bytes per block).
    tau : float
        Threshold of the state transitions, >= 0 (relative to the class's sum |G W_eff|).
    transition_every : int
        Optimiser steps between transition decisions; 0 turns transitions off.
    max_moves : float
        Largest fraction of all position classes moved by one decision, in (0, 1].

    With ``center`` or ``block_scale``, alpha and beta are fixed by the initialisation and not
    trained (a per-layer offset moves every weight at once and can silence a whole layer);
    without both (the original parameterisation, and files written before it) they are
    trained.

    Attributes
    ----------
    seeds : ndarray of rbe.seeds.DTYPE, shape (block rows, block columns)
        Writable; ``hi`` is what the layer computes with, ``lo`` holds the r and theta master
        copies that the optimisers update.
    scale : ndarray of float32 shaped like ``seeds``, or None
        The block scales.
    grads : dict
        Filled (overwritten) by :meth:`backward`, one entry per trained parameter.
    transition_stats : ndarray of float64, shape seeds.shape + (4, 4), or None
        Sums over the backward passes since the last transition decision (they add up across
        micro-batches and across processes).
    """

    def __init__(self, in_features: int, out_features: int, block: tuple[int, int] = (64, 64),
                 bias: bool = True, seed: int | np.random.Generator | None = None,
                 mode: str = "fast", center: bool = True, block_scale: bool = True,
                 tau: float = TAU, transition_every: int = TRANSITION_EVERY,
                 max_moves: float = MAX_MOVES):
        self._configure(in_features, out_features, block, mode, center, block_scale, tau,
                        transition_every, max_moves)
        grid = self.grid
        rng = np.random.default_rng(seed)
        self._seeds = seeds_mod.pack(
            rng.uniform(0.2, 0.9, grid), rng.uniform(-0.1, 0.4, grid),
            rng.integers(0, seeds_mod.N_STATES, grid + (seeds_mod.N_CLASSES,)),
            rng.integers(0, 256, grid))
        self._r, self._theta = seeds_mod.masters(self._seeds)
        self._scale = (rng.choice(np.array([-1.0, 1.0], np.float32), grid)
                       if block_scale else None)
        self._alpha = np.ones((), np.float32)
        self._beta = np.zeros((), np.float32)
        self.bias = np.zeros(self.out_features, np.float32) if bias else None
        self._standardise()

    def _configure(self, in_features, out_features, block, mode, center, block_scale, tau,
                   transition_every, max_moves) -> None:
        """Check and set everything but the parameters."""
        self.in_features = positive_int("in_features", in_features, MAX_FEATURES)
        self.out_features = positive_int("out_features", out_features, MAX_FEATURES)
        self.block = kernel.check_block_shape(block, "block")
        if self.block[0] > self.out_features or self.block[1] > self.in_features:
            raise ValueError(f"block {self.block} is larger than the layer "
                             f"({self.out_features} x {self.in_features})")
        block_count((self.out_features, self.in_features), self.block)
        if mode not in kernel.MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {kernel.MODES}")
        for name, flag in (("center", center), ("block_scale", block_scale)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        tau = nonnegative_number("tau", tau)
        if transition_every != 0:
            positive_int("transition_every", transition_every)
        if not (isinstance(max_moves, (int, float, np.number)) and 0 < max_moves <= 1):
            raise ValueError(f"max_moves must be a number in (0, 1], got {max_moves!r}")
        self.mode, self.tau = mode, tau
        self.center, self.block_scale = bool(center), bool(block_scale)
        self.transition_every, self.max_moves = int(transition_every), float(max_moves)
        self.grid = (-(-self.out_features // self.block[0]), -(-self.in_features // self.block[1]))
        self.grads: dict[str, np.ndarray] = {}
        self.transition_stats = None
        self._steps = 0
        self._build_permutation()
        self._build_plan()

    def _standardise(self) -> None:
        """alpha and beta giving W_eff mean 0 and variance 1 / in_features."""
        m = self._moments(with_grad=False)
        s = self._signs()
        c = float(self.center)
        # per block: sum and sum of squares of s (W - c mean)
        total = np.sum(m.count * s * (1 - c) * m.mean)
        squares = np.sum(m.count * s * s * (m.mean_sq - c * (2 - c) * m.mean ** 2))
        n = m.count.sum()
        var = max(squares / n - (total / n) ** 2, 1e-12)
        alpha = 1.0 / math.sqrt(self.in_features * var)
        self._alpha[...] = alpha
        self._beta[...] = -alpha * total / n

    # ---- parameters ------------------------------------------------------------------------

    @property
    def seeds(self) -> np.ndarray:
        return self._seeds

    @seeds.setter
    def seeds(self, value: ArrayLike) -> None:
        value = seeds_mod.check(value)
        if value.shape != self._seeds.shape:
            raise ValueError(f"seeds must have shape {self._seeds.shape}, got {value.shape}")
        self._seeds[...] = value
        self.transition_stats = None

    @property
    def scale(self) -> np.ndarray | None:
        return self._scale

    @property
    def alpha(self) -> np.ndarray:
        return self._alpha

    @alpha.setter
    def alpha(self, value: ArrayLike) -> None:
        self._alpha[...] = value

    @property
    def beta(self) -> np.ndarray:
        return self._beta

    @beta.setter
    def beta(self, value: ArrayLike) -> None:
        self._beta[...] = value

    @property
    def trains_affine(self) -> bool:
        """Whether alpha and beta are trained (only in the original parameterisation)."""
        return not (self.center or self.block_scale)

    def parameters(self) -> dict[str, np.ndarray]:
        """Arrays the optimisers update in place: the r and theta masters, the block scales,
        alpha and beta when they are trained, and the bias."""
        params = {"r": self._r, "theta": self._theta}
        if self._scale is not None:
            params["scale"] = self._scale
        if self.trains_affine:
            params["alpha"], params["beta"] = self._alpha, self._beta
        if self.bias is not None:
            params["bias"] = self.bias
        return params

    def after_step(self, loss: Callable[[], float] | None = None) -> None:
        """Re-derive ``hi`` from the masters and, every ``transition_every`` calls, apply the
        state transitions chosen from :attr:`transition_stats`.

        Parameters
        ----------
        loss : callable returning the loss (a float) on a batch, optional
            The exact check: the transitions are kept only if they do not increase it.
        """
        self._check_parameters(masters=True)
        seeds_mod.requantize(self._seeds)
        self._steps += 1
        due = self.transition_every and self._steps % self.transition_every == 0
        if due and self.transition_stats is not None:
            self._transition(loss)

    def step_statistics(self) -> list[np.ndarray]:
        """The arrays the next :meth:`after_step` decides from, if it decides (else none).

        Processes training copies of one model sum them (an all-reduce, in place) before
        calling ``after_step``, so that every copy applies the same transitions; rbe.torch
        does this when torch.distributed is initialised.
        """
        if not self.transition_every or (self._steps + 1) % self.transition_every:
            return []
        if self.transition_stats is None:       # every process takes part in the sum
            self.transition_stats = np.zeros(self.grid + (4, 4))
        return [self.transition_stats]

    def _state(self) -> tuple[dict, dict]:
        """Config and arrays for rbe.save (seeds as their two uint64 words)."""
        config = {"in_features": self.in_features, "out_features": self.out_features,
                  "block": list(self.block), "mode": self.mode, "tau": self.tau,
                  "center": self.center, "block_scale": self.block_scale,
                  "transition_every": self.transition_every, "max_moves": self.max_moves}
        arrays = {"hi": self._seeds["hi"], "lo": self._seeds["lo"],
                  "alpha": self._alpha, "beta": self._beta}
        if self._scale is not None:
            arrays["scale"] = self._scale
        if self.bias is not None:
            arrays["bias"] = self.bias
        return config, arrays

    @classmethod
    def _from_state(cls, config: dict, arrays: dict) -> FusedLinear:
        """Inverse of ``_state``; validates like the constructor and the setters. Files
        written before block scales and centring (no such keys) load as the original
        parameterisation."""
        layer = cls.__new__(cls)
        layer._configure(config["in_features"], config["out_features"], tuple(config["block"]),
                         config["mode"], config.get("center", False),
                         config.get("block_scale", False), config["tau"],
                         config.get("transition_every", TRANSITION_EVERY),
                         config.get("max_moves", MAX_MOVES))
        expected = {"hi", "lo", "alpha", "beta"} | ({"scale"} if layer.block_scale else set())
        if not expected <= set(arrays):
            raise ValueError(f"missing arrays {sorted(expected - set(arrays))}")
        for name in ("hi", "lo") + (("scale",) if layer.block_scale else ()):
            if arrays[name].shape != layer.grid:
                raise ValueError(f"{name} of shape {arrays[name].shape} does not fit the "
                                 f"{layer.grid} block grid")
        layer._seeds = np.empty(layer.grid, seeds_mod.DTYPE)
        layer._seeds["hi"], layer._seeds["lo"] = arrays["hi"], arrays["lo"]
        layer._r, layer._theta = seeds_mod.masters(layer._seeds)
        layer._scale = (np.array(arrays["scale"], np.float32) if layer.block_scale else None)
        layer._alpha = np.array(arrays["alpha"], np.float32).reshape(())
        layer._beta = np.array(arrays["beta"], np.float32).reshape(())
        layer.bias = None
        if "bias" in arrays:
            layer.bias = np.array(arrays["bias"], np.float32)
            if layer.bias.shape != (layer.out_features,):
                raise ValueError(f"bias of shape {layer.bias.shape}, expected "
                                 f"({layer.out_features},)")
        layer._check_parameters(masters=True)
        return layer

    @property
    def nbytes(self) -> int:
        """Bytes stored: seeds, block scales, alpha, beta and bias."""
        return self._seeds.nbytes + sum(a.nbytes for a in (self._scale, self._alpha, self._beta,
                                                           self.bias) if a is not None)

    @property
    def compression_ratio(self) -> float:
        """Bytes of the same layer with a dense float32 matrix, over :attr:`nbytes`."""
        bias = self.bias.nbytes if self.bias is not None else 0
        return (4 * self.out_features * self.in_features + bias) / self.nbytes

    def to_dense(self) -> np.ndarray:
        """W_eff, (out_features, in_features): float32 (fast) or float64 (precise)."""
        h, w = self.block
        terms = self._block_terms()
        blocks = kernel.generate(self._seeds, self.block, self.mode)     # a fresh array
        blocks *= terms.factor.astype(blocks.dtype)[..., None, None]
        blocks += terms.offset.astype(blocks.dtype)[..., None, None]
        dense = blocks.transpose(0, 2, 1, 3).reshape(self.grid[0] * h, self.grid[1] * w)
        return np.ascontiguousarray(dense[:self.out_features, :self.in_features])

    # ---- the effective weights' per-block terms ----------------------------------------------

    def _signs(self) -> np.ndarray:
        """s: the block scales, or ones (float64)."""
        return self._scale.astype(np.float64) if self._scale is not None else np.ones(self.grid)

    def _block_terms(self) -> _BlockTerms:
        """Per block, the factor alpha s the kernels multiply W by and the offset
        beta - c alpha s mean(W), the constant part of W_eff."""
        factor = self._signs() * float(self._alpha)
        offset = np.full(self.grid, float(self._beta))
        if self.center:
            offset -= factor * self._sums.means(self._seeds["hi"])
        return _BlockTerms(factor, offset, np.ascontiguousarray(factor, np.float32),
                           np.ascontiguousarray(offset, np.float32))

    def _moments(self, with_grad: bool = True) -> _BlockMoments:
        """The per-block means of W, W^2, dW/dr, dW/dtheta over valid positions, for the
        current ``hi`` (those of the gradients 0 without ``with_grad``)."""
        hi = self._seeds["hi"]
        sums, count = self._sums.current(hi, with_grad), self._sums.count
        return _BlockMoments(count, self._sums.means(hi),
                             *(sums[..., SUMS[k]] / count for k in ("sq", "dr", "dtheta")))

    def _class_sums(self, seeds: np.ndarray) -> np.ndarray:
        """Sum of W over the valid positions of each position class: grid + (4,)."""
        sums = np.empty(self.grid + (SUMS["n"],))
        _fused.block_sums(np.ascontiguousarray(seeds["hi"]), *kernel.shape_tables(self.block),
                          self.block[1], self.out_features, self.in_features, sums,
                          precise=self.mode == "precise", with_grad=False)
        return sums[..., _CLASS_SUMS]


    # ---- forward and backward --------------------------------------------------------------

    def forward(self, X: ArrayLike) -> np.ndarray:
        """``X W_eff^T + bias`` for X of shape (in_features,) or (batch, in_features).

        float32 input gives float32, float64 gives float64 (fast mode computes in float32).
        """
        # the plan checks the elements in its C loop; precise mode computes in NumPy
        X = layer_input("X", X, self.in_features, values=self.mode == "precise")
        if self.mode == "precise":
            return self._forward_precise(X)
        # the batch's sgemm calls: (band x tile of grouped columns) times the batch
        batch = X.shape[0] if X.ndim == 2 else 0
        with _blas_guard(self.block[0] * self._source.size * batch):
            return self._plan.forward(X, self._seeds["hi"], self._scale, self._alpha,
                                      self._beta, self.bias)

    def backward(self, X: ArrayLike, dY: ArrayLike) -> np.ndarray:
        """dX = dY W_eff; fills :attr:`grads` and adds to :attr:`transition_stats`.

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
        terms = self._block_terms()
        offset = terms.offset
        if self.mode == "fast":
            dZ, stats = self._backward_fast(np.ascontiguousarray(X2, np.float32),
                                            np.ascontiguousarray(dY2, np.float32), terms)
        else:
            dZ, stats = self._backward_precise(X2.astype(np.float64, copy=False),
                                               dY2.astype(np.float64, copy=False),
                                               terms.factor, offset)
        Xs = _block_sums(X2, self.block[1])
        dYs = _block_sums(dY2, self.block[0])
        if offset.any():
            dZ += np.repeat(dYs @ offset, self.block[1], axis=1)[:, :self.in_features] \
                .astype(dZ.dtype)
        self._fill_grads(stats, dYs.T @ Xs, dY2, terms.factor)
        return finite_output("backward", dZ.astype(X.dtype, copy=False)).reshape(X.shape)

    __call__ = forward

    def _fill_grads(self, stats, gsum, dY2, factor) -> None:
        """Gradients from the kernels' sums of G = dY^T X and gsum, G summed per block."""
        m = self._moments()
        c = float(self.center)
        # dW_eff/dp = alpha s (dW/dp - c mean(dW/dp)) for p = r, theta, and
        # dL/d(alpha s) = sum G (W - c mean W)
        g_scaled = stats[..., STATS["gw"]] - c * m.mean * gsum
        self.grads = {
            "r": factor * (stats[..., STATS["dr"]] - c * m.mean_dr * gsum),
            "theta": factor * (stats[..., STATS["dtheta"]] - c * m.mean_dth * gsum),
        }
        if self._scale is not None:
            self.grads["scale"] = float(self._alpha) * g_scaled
        if self.trains_affine:
            self.grads["alpha"] = np.array((self._signs() * g_scaled).sum())
            self.grads["beta"] = np.array(gsum.sum())
        if self.bias is not None:
            self.grads["bias"] = dY2.sum(axis=0, dtype=np.float64)
        if self.transition_every:
            self._add_transition_stats(stats, factor, gsum)

    # ---- state transitions -----------------------------------------------------------------

    def _add_transition_stats(self, stats, factor, gsum) -> None:
        classes = stats[..., STATS["class"]:].reshape(self.grid + (4, 4))
        add = np.empty(self.grid + (4, 4))
        add[..., _GAIN_POS] = factor[..., None] * classes[..., STATS["pos"]]
        add[..., _GAIN_NEG] = factor[..., None] * classes[..., STATS["neg"]]
        add[..., _ABS] = classes[..., STATS["abs"]]
        add[..., _GSUM] = (factor * gsum)[..., None]
        if self.transition_stats is None:
            self.transition_stats = add
        else:
            self.transition_stats += add

    def candidate_states(self) -> tuple[np.ndarray, np.ndarray]:
        """The states the accumulated :attr:`transition_stats` choose, and which classes move.

        Each class's candidate is the one of its two (the seed's derivative map and its
        inverse) with the lower linearised loss change dL, including the shift of the block's
        mean when the layer centres its blocks. A class moves when dL < -tau sum |G W_eff|;
        if more than ``max_moves`` of all classes qualify, those with the most negative
        dL / sum |G W_eff| move (ties: lower flat index).
        """
        stats = self.transition_stats
        if stats is None:
            raise ValueError("no transition statistics: run backward (with transitions on) "
                             "first")
        sel = seeds_mod.states(self._seeds["hi"])
        candidates = seeds_mod.candidates(sel)
        gain = stats[..., [_GAIN_POS, _GAIN_NEG]].copy()
        if self.center:
            current = self._sums.current(self._seeds["hi"], with_grad=False)[..., _CLASS_SUMS]
            count = self._sums.count[..., None]
            for k in range(2):
                moved = self._seeds.copy()
                moved["hi"] = seeds_mod.with_states(moved["hi"], candidates[..., k])
                shift = (self._class_sums(moved) - current) / count
                gain[..., k] -= shift * stats[..., _GSUM]
        best = gain.argmin(axis=-1)
        delta = np.take_along_axis(gain, best[..., None], axis=-1)[..., 0]
        relative = delta / np.maximum(stats[..., _ABS], 1e-300)
        moves = delta < -self.tau * stats[..., _ABS]
        limit = max(1, int(self.max_moves * moves.size))
        if moves.sum() > limit:
            order = np.argsort(np.where(moves, relative, np.inf), axis=None, kind="stable")
            moves = np.zeros(moves.size, bool)
            moves[order[:limit]] = True
            moves = moves.reshape(sel.shape)
        new = np.take_along_axis(candidates, best[..., None], axis=-1)[..., 0]
        return np.where(moves, new, sel).astype(np.uint8), moves

    def _transition(self, loss) -> None:
        new, moves = self.candidate_states()
        self.transition_stats = None
        if not moves.any():
            return
        before_hi = self._seeds["hi"].copy()
        before = loss() if loss is not None else None
        self._seeds["hi"] = seeds_mod.with_states(before_hi, new)
        if loss is not None and not loss() <= before:
            self._seeds["hi"] = before_hi

    # ---- fast mode -------------------------------------------------------------------------

    def _build_permutation(self) -> None:
        """Grouped input order of the kernels: block column bj, group p, lane q holds input
        column bj*w + 4q + p (fused.h); padding lanes and columns past the layer hold -1."""
        w = self.block[1]
        g = kernel.shape_tables(self.block).rho.shape[2]
        grid_cols = self.grid[1]
        bj, p, q = np.meshgrid(np.arange(grid_cols), np.arange(4), np.arange(g), indexing="ij")
        column = (bj * w + 4 * q + p).reshape(-1)
        valid = (((4 * q + p) < w).reshape(-1)) & (column < self.in_features)
        self._source = np.where(valid, column, -1).astype(np.intp)

    def _build_plan(self) -> None:
        """The per-block sums of the seeds and, in fast mode, the forward product's plan (both
        follow ``hi`` and read the other parameters at each call: built once per layer)."""
        tables = kernel.shape_tables(self.block)
        self._sums = _fused.BlockSums(self.out_features, self.in_features, self.block, tables,
                                      self.mode == "precise")
        self._plan = None if self.mode == "precise" else _fused.ForwardPlan(
            self.in_features, self.out_features, self.block, tables, self._source, self.center,
            self._sums)

    def __getstate__(self):
        # the plan holds C pointers; a copy (or an unpickled layer) builds its own
        return {k: v for k, v in self.__dict__.items() if k not in ("_sums", "_plan")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._build_plan()

    def _grouped(self, X2: np.ndarray) -> np.ndarray:
        Xp = np.empty((X2.shape[0], self._source.size), np.float32)
        _fused.fused_group(X2, self._source, Xp)
        return Xp

    def _hi(self) -> np.ndarray:
        return np.ascontiguousarray(self._seeds["hi"])

    def _kernel_args(self) -> tuple:
        return (self._hi(), *kernel.shape_tables(self.block), self.block[1])

    def _kernel_select(self) -> dict:
        simd, family = _core.kernel_choice()
        return {"simd": simd, "family": family}

    def _backward_fast(self, X2: np.ndarray, dY2: np.ndarray, terms: _BlockTerms):
        Xp = self._grouped(X2)
        dXp = np.empty_like(Xp)
        stats = np.empty(self.grid + (STATS["n"],), np.float64)
        # sgemm calls per block (a batch; one vector needs none): (h x grouped block width)
        # times the batch
        with _blas_guard(self.block[0] * Xp.shape[1] // self.grid[1] * X2.shape[0]):
            _fused.fused_backward(*self._kernel_args(), Xp, dY2, dXp, stats, terms.factor32,
                                  terms.offset32, **self._kernel_select())
        dZ = np.empty(X2.shape, np.float32)
        _fused.fused_ungroup(dXp, self._source, dZ)
        return dZ, stats

    # ---- precise mode (float64, one block row at a time) -------------------------------------

    def _forward_precise(self, X: np.ndarray) -> np.ndarray:
        self._check_parameters()
        h, w = self.block
        X2 = X.reshape(-1, self.in_features)
        terms = self._block_terms()
        Xpad = _padded(X2.astype(np.float64, copy=False), self.grid[1] * w)
        Z = np.empty((X2.shape[0], self.out_features))
        for bi in range(self.grid[0]):
            n = min(h, self.out_features - bi * h)
            W = _block_row(kernel.generate(self._seeds[bi], self.block, "precise")
                           * terms.factor[bi][:, None, None])
            Z[:, bi * h:bi * h + n] = Xpad @ W[:n].T
        Xs = _block_sums(X2, w)
        Z += np.repeat(Xs @ terms.offset.T, h, axis=1)[:, :self.out_features]
        if self.bias is not None:
            Z += self.bias
        Y = Z.astype(X.dtype, copy=False)
        return finite_output("forward", Y).reshape(X.shape[:-1] + (self.out_features,))

    def _backward_precise(self, X2: np.ndarray, dY2: np.ndarray, factor, offset):
        h, w = self.block
        grid_rows, grid_cols = self.grid
        Xpad = _padded(X2, grid_cols * w)
        states = seeds_mod.candidates(seeds_mod.states(self._seeds["hi"]))
        candidates = [self._seeds.copy(), self._seeds.copy()]
        for k, cand in enumerate(candidates):
            cand["hi"] = seeds_mod.with_states(cand["hi"], states[..., k])
        dZ = np.zeros((X2.shape[0], grid_cols * w))
        stats = np.zeros(self.grid + (STATS["n"],))
        for bi in range(grid_rows):
            n = min(h, self.out_features - bi * h)
            dYb = dY2[:, bi * h:bi * h + n]
            G = (dYb.T @ Xpad).reshape(n, grid_cols, w).transpose(1, 0, 2)
            W, dr, dth = (a[:, :n] for a in kernel.generate_with_grad(
                self._seeds[bi], self.block, "precise"))
            moved = [kernel.generate(c[bi], self.block, "precise")[:, :n] - W
                     for c in candidates]
            dZ += dYb @ _block_row(W * factor[bi][:, None, None])
            W_eff = W * factor[bi][:, None, None] + offset[bi][:, None, None]
            _precise_block_stats(stats[bi], G, W, W_eff, dr, dth, moved)
        return dZ[:, :self.in_features], stats

    # ---- checks ----------------------------------------------------------------------------

    def _check_parameters(self, masters: bool = False) -> None:
        arrays = {"alpha": self._alpha, "beta": self._beta, **self.parameters()}
        for name, value in arrays.items():
            if name in ("r", "theta") and not masters:
                continue
            finite = math.isfinite(value) if value.ndim == 0 else np.isfinite(value).all()
            if not finite:
                raise ValueError(f"parameter {name!r} of the layer is not finite")


def _precise_block_stats(out, G, W, W_eff, dr, dth, moved) -> None:
    """The sums of fused.h's backward kernel for one block row, in float64."""
    i, j = np.meshgrid(np.arange(G.shape[1]), np.arange(G.shape[2]), indexing="ij")
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
