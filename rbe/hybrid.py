"""HybridLinear: a linear layer stored as hybrid blocks that computes in the transform domain.

For a block (bi, bj) of shape (h, w), W_b = sum_k c_k B_k + G_h S G_w^T, where B_k are the 8
basis functions (optional), S holds the block's nonzero coefficients (a ragged number per
block) and G are the synthesis matrices of the block's transform. Then, for an input slice x_bj
and output slice y_bi,

    y_bi = sum_bj sum_k c_bk (B_k x_bj) + sum_t G_h,t sum_{bj: t_b = t} S_b (G_w,t^T x_bj)

so no block is ever rebuilt: G_w^T x is computed once per block column and transform, the
sparse products S_b z cost O(k) per block (C core), G_h is applied once per block row and
transform. The basis part uses low-rank factors B_k = L_k R (``tf.basis_factors``): R x_bj is
shared down a block column and each block costs 8 * rank multiply-adds.
Backward uses the same identities with the roles of analysis and synthesis swapped. An optional
layer-level low-rank term U V^T adds two thin GEMMs.

Internally the layer works feature-major (features x batch) so that the sparse loops read and
write contiguous batch rows and the dense transforms are plain GEMMs.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from numpy.typing import ArrayLike

from . import _core, _hybrid
from . import transforms as tf
from ._checks import finite_output, layer_input, positive_int
from .encoder import (
    BlockGrid,
    HybridBlocks,
    HybridMatrix,
    check_matrix,
    check_rank,
    encode,
    index_bytes,
    ragged_arrays,
    rounded,
)

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_SMALL_GEMM = 1 << 22       # larger products gain from the BLAS threads


def _matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a @ b (into ``out``); a small product runs as pieces of rows that BLAS keeps on the
    calling thread.

    The products of a batch-less forward are small and several per call; handing each to the
    BLAS thread pool makes them wait for its threads (milliseconds when the cores are busy).
    """
    m, k = a.shape
    size = m * k * b.shape[1]
    if size > _SMALL_GEMM or size <= _core.SERIAL_BLAS_WORK:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((m, b.shape[1]), np.result_type(a, b))
    step = max(1, _core.SERIAL_BLAS_WORK // (k * b.shape[1]))
    for start in range(0, m, step):
        np.matmul(a[start:start + step], b, out=out[start:start + step])
    return out


def _left(matrix: np.ndarray, stack: np.ndarray) -> np.ndarray:
    """matrix @ stack[i] for every i of a (n, p, batch) stack; one GEMM when batch == 1."""
    n, p, batch = stack.shape
    if batch == 1:
        return _matmul(stack.reshape(n, p), matrix.T).reshape(n, -1, 1)
    return np.matmul(matrix, stack)


def _random_positions(rng, n_blocks, size, count):
    """``count`` distinct positions out of ``size`` for each of ``n_blocks`` blocks, ascending."""
    return np.sort(rng.random((n_blocks, size)).argsort(axis=1)[:, :count], axis=1)


class HybridLinear(HybridBlocks):
    """y = W x + b with W (out_features x in_features) stored as hybrid blocks.

    Parameters
    ----------
    in_features, out_features : int
        Layer size.
    block : (int, int)
        Block shape (h, w); edge blocks are smaller.
    k : int, optional
        Transform coefficients per block (64 when neither k, ``budget`` nor ``ratio`` is
        given). A layer built here (for training from scratch) starts them at random
        positions; ``from_dense`` picks them by magnitude.
    transform : {"dct", "dwt"}
        Residual transform of every block.
    bias : bool
        Add a trainable bias.
    wavelet : str
        PyWavelets wavelet of the "dwt" transform.
    seed : int or None
        Seed of the random initialisation (positions; values with the variance of
        ``torch.nn.Linear``'s uniform weights, shared with the low-rank term; basis
        coefficients 0).
    budget, ratio : optional
        Instead of k: the layer's stored bytes (``nbytes``, bias included) must not exceed
        ``budget``, or dense float32 bytes / ``ratio``; k is the largest that fits.
    basis : bool
        Keep the 8 smooth basis coefficients per block (8 stored values per block).
    rank : int
        Rank of a layer-level low-rank term factor_out @ factor_in.T added to the blocks.
    precision : {"float32", "float16"}
        Storage precision of values, basis coefficients and factors. Training updates float32
        copies; the products compute with them rounded to ``precision``, as a file stores them
        (gradients pass straight through the rounding).
    regrow_every, regrow_fraction, regrow_stop :
        Moving positions (see ``set_regrow``); on by default for a layer built here.

    Attributes
    ----------
    coef : (nblocks, 8) float32, values : (entries,) float32, bias : (out_features,) float32,
    factor_out : (out_features, rank), factor_in : (in_features, rank) float32
        Trainable parameters, updated in place by ``rbe.optim``.
    grads : dict
        Gradients with the same names and shapes, overwritten by ``backward``.
    transform, offsets, index : read-only arrays
        Per-block transform ids; block b's values are ``values[offsets[b]:offsets[b + 1]]`` at
        the flat positions ``index[offsets[b]:offsets[b + 1]]`` of its coefficient array.
    grow_grads : (out_features, in_features) float32 or None
        While positions move: the transform-domain gradient of every block's coefficients,
        present or not (block (bi, bj)'s position r * w + c at [bi * h + r, bj * w + c]),
        summed over the backward passes before a step that moves positions.
    """

    # Stored arrays (``_state``) that depend on the contents, not on the layer's shape.
    OPTIONAL_STATE = ("transform", "counts")

    def __init__(self, in_features: int, out_features: int, block: tuple[int, int] = (64, 64),
                 k: int | None = None, transform: str = "dct", bias: bool = True,
                 wavelet: str = tf.DEFAULT_WAVELET,
                 seed: int | np.random.Generator | None = None, *, budget: int | None = None,
                 ratio: float | None = None, basis: bool = True, rank: int = 0,
                 precision: str = "float32", regrow_every: int | None = 100,
                 regrow_fraction: float = 0.3, regrow_stop: int | None = None):
        if transform not in tf.TRANSFORMS:
            raise ValueError(f"a layer trained from scratch needs one transform, "
                             f"{tf.TRANSFORMS}, got {transform!r}")
        grid = BlockGrid((out_features, in_features), block)
        tf.check_wavelet(wavelet)
        rank = check_rank(rank, grid.shape)
        rng = np.random.default_rng(seed)
        bias = rng.uniform(-1, 1, out_features) / np.sqrt(in_features) if bias else None
        factors = self._initial_factors(rng, grid.shape, rank, precision)
        ids = np.full(grid.nblocks, tf.TRANSFORM_IDS[transform], np.uint8)
        coef = np.zeros((grid.nblocks, tf.NUM_BASIS if basis else 0), np.float32)
        options = {"wavelet": wavelet, "factors": factors, "precision": precision}
        budget = matrix_budget(budget, ratio, grid.shape, bias is not None)
        if budget is None:
            k = 64 if k is None else positive_int("k", k)
        elif k is not None:
            raise ValueError("give either k or a budget (budget, ratio), not both")
        else:
            k = _largest_k(HybridMatrix(grid.shape, grid.block, coef, ids,
                                        np.zeros(grid.nblocks + 1, np.int64),
                                        np.zeros(0, np.uint16), np.zeros(0, np.float32),
                                        **options), budget)
        parts = []
        for group in grid.groups():
            block_ids = grid.block_ids(group)
            size = group.h * group.w
            count = min(k, size)
            # Orthonormal transforms keep the energy: per-weight variance 1 / (3 in_features),
            # half of it in the low-rank term when there is one.
            share = 0.5 if rank else 1.0
            std = np.sqrt(share * size / (3.0 * in_features * count))
            parts.append((block_ids, _random_positions(rng, len(block_ids), size, count),
                          rng.normal(0.0, std, (len(block_ids), count)).astype(np.float32)))
        matrix = HybridMatrix(grid.shape, grid.block, coef, ids,
                              *ragged_arrays(grid.nblocks, parts), **options)
        self._attach(matrix, bias)
        self.set_regrow(regrow_every, regrow_fraction, regrow_stop)

    @staticmethod
    def _initial_factors(rng, shape, rank, precision):
        """factor_out @ factor_in.T with half the variance of nn.Linear's weights."""
        if rank == 0:
            return None
        out_features, in_features = shape
        factor_out = rng.normal(0.0, np.sqrt(1.0 / (6.0 * rank)), (out_features, rank))
        factor_in = rng.normal(0.0, np.sqrt(1.0 / in_features), (in_features, rank))
        return factor_out.astype(np.float32), factor_in.astype(np.float32)

    @classmethod
    def from_dense(cls, W: ArrayLike, bias: ArrayLike | None = None,
                   block: tuple[int, int] = (64, 64), k: int | None = None,
                   transform: str = "adaptive", wavelet: str = tf.DEFAULT_WAVELET,
                   progress: bool | None = None, *, budget: int | None = None,
                   ratio: float | None = None, basis: bool = True, rank: int = 0,
                   precision: str = "float32") -> HybridLinear:
        """Encode a dense (out_features, in_features) weight matrix (see ``rbe.encode``).

        ``budget`` and ``ratio`` bound the layer's bytes (bias included) as in the
        constructor; positions do not move (``set_regrow`` turns that on).
        """
        W = check_matrix(W)
        budget = matrix_budget(budget, ratio, W.shape, bias is not None)
        return cls.from_matrix(encode(W, block, k, transform, wavelet, progress, budget=budget,
                                      basis=basis, rank=rank, precision=precision), bias)

    @classmethod
    def from_matrix(cls, matrix: HybridMatrix, bias: ArrayLike | None = None) -> HybridLinear:
        """A layer computing with an encoded matrix (its arrays are copied)."""
        if not isinstance(matrix, HybridMatrix):
            raise ValueError(f"expected a HybridMatrix, got {type(matrix).__name__}")
        layer = cls.__new__(cls)
        layer._attach(matrix, bias)
        layer.set_regrow(None)
        return layer

    def _attach(self, matrix, bias):
        self.grid = matrix.grid
        self.wavelet = matrix.wavelet
        self.precision = matrix.precision
        self.transform = _frozen(matrix.transform)
        self.offsets = _frozen(matrix.offsets)
        self.index = _frozen(matrix.index)
        self.coef = matrix.coef.copy()
        self.values = matrix.values.copy()
        self._factors = None if matrix.factors is None else tuple(f.copy() for f in matrix.factors)
        self.bias = None if bias is None else self._check_bias(bias)
        self._round_parameters()
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
        self._kinds = kinds
        self._operators = {dtype: self._stacked_operators(kinds, dtype) for dtype in _FLOATS}
        self._plans = None
        self.grads = {name: np.zeros_like(p) for name, p in self.parameters().items()}
        self.steps = 0

    def _stacked_operators(self, kinds, dtype):
        """Per axis length n: the synthesis matrices of all transforms in use, side by side.

        ``inputs[n]`` (n * nslots, n) maps a slice x to z[c, t] = (G_t^T x)[c];
        ``outputs[n]`` (n, n * nslots) maps u[r, t] back to sum_t G_t u[:, t].
        """
        def synthesis(n):
            return self._synthesis(n, kinds, dtype)

        inputs = {w: _frozen(np.stack([g.T for g in synthesis(w)], axis=1).reshape(-1, w))
                  for w, _ in self._col_classes}
        outputs = {h: _frozen(np.stack(synthesis(h), axis=2).reshape(h, -1))
                   for h, _ in self._row_classes}
        return inputs, outputs

    def _synthesis(self, n, kinds, dtype):
        """The synthesis matrices G (n x n) of the transforms in use, in slot order."""
        return [tf.operator(n, kind, self.wavelet, dtype).synthesis for kind in kinds]

    def _forward_plans(self) -> dict[np.dtype, _hybrid.ForwardPlan]:
        """The forward product's plans for float32 and float64 inputs, built on first use and
        again after positions move (``regrow``)."""
        if self._plans is None:
            self._plans = {dtype: _hybrid.ForwardPlan(self.in_features, self.out_features, dtype,
                                                      **self._plan_arrays(dtype))
                           for dtype in _FLOATS}
        return self._plans

    def _plan_arrays(self, dtype):
        """Operators, layout and sparse rows of ``_hybrid.ForwardPlan`` (rbe/hybrid.h).

        Per class of block columns one matrix gives a block column's transform-domain values
        (rows t * w + c for the transforms t in use) and its basis projections R x_bj; per
        class of block rows one matrix maps the sparse sums (rows t * h + r) and the basis
        sums (rows k * rank + j, in the order of the left factors' columns) to outputs.
        """
        def synthesis(n):
            return self._synthesis(n, self._kinds, dtype)

        cols = sorted(self._col_classes, key=lambda c: c[1].start)
        rows = sorted(self._row_classes, key=lambda c: c[1].start)
        col_of = {features.start: k for k, (_, features) in enumerate(cols)}
        row_of = {features.start: k for k, (_, features) in enumerate(rows)}
        ins = [[g.T for g in synthesis(w)] for w, _ in cols]
        outs = [synthesis(h) for h, _ in rows]
        terms = []
        for group, _, row_features, col_features in self._groups if self.has_basis else ():
            left, right = tf.basis_factors(group.h, group.w, dtype)
            c, r = col_of[col_features.start], row_of[row_features.start]
            terms.append((group, sum(m.shape[0] for m in ins[c]),
                          sum(m.shape[1] for m in outs[r]), right.shape[0]))
            ins[c].append(right)
            outs[r].append(left)
        col_matrices = [np.vstack(m) for m in ins]
        row_matrices = [np.hstack(m) for m in outs]
        col_x0, col_z0, col_class, col_runs = _axis_layout(cols, [m.shape[0] for m in col_matrices])
        row_y0, row_u0, row_class, row_runs = _axis_layout(rows, [m.shape[1] for m in row_matrices])
        arrays = dict(col_x0=col_x0, col_z0=col_z0, col_class=col_class, col_runs=col_runs,
                      col_matrices=col_matrices, row_y0=row_y0, row_u0=row_u0,
                      row_class=row_class, row_runs=row_runs, row_matrices=row_matrices,
                      row_sparse=[h * self._nslots for h, _ in rows],
                      n_values=len(self.values), n_coef=self.coef.size)
        u_rows = int(row_u0[-1] + row_matrices[row_class[-1]].shape[1])
        arrays.update(self._sparse_rows(col_z0, row_u0, u_rows))
        arrays.update(self._basis_terms(terms))
        return arrays

    def _sparse_rows(self, col_z0, row_u0, u_rows):
        """Entries sorted by the row of u they add to: rowptr, src (entry) and zrow."""
        counts = np.diff(self.offsets)
        block = np.repeat(np.arange(self.grid.nblocks), counts)
        bi, bj = np.divmod(block, self.grid.cols)
        h, w = self.grid.heights[bi], self.grid.widths[bj]
        r, c = np.divmod(self.index.astype(np.int64), w)
        slot = self._slots[block].astype(np.int64)
        inside = np.flatnonzero(r < h)          # an entry outside its block adds nothing
        u_row = (row_u0[bi] + slot * h + r)[inside]
        order = np.argsort(u_row, kind="stable")
        rowptr = np.zeros(u_rows + 1, np.int64)
        np.cumsum(np.bincount(u_row, minlength=u_rows), out=rowptr[1:])
        return {"rowptr": rowptr, "src": inside[order],
                "zrow": (col_z0[bj] + slot * w + c)[inside][order]}

    def _basis_terms(self, terms):
        """Per block row its basis terms: first block column, columns, where its projections
        and sums sit among the block column's and block row's work rows, and the rank."""
        per_row = [[] for _ in range(self.grid.rows)]
        for group, proj, sums, rank in terms:
            for bi in range(group.row0, group.row1):
                per_row[bi].append((group.col0, group.col1 - group.col0, proj, rank, sums))
        flat = [term for row in per_row for term in row]
        columns = np.array(flat, np.int64).reshape(-1, 5).T
        return {"row_terms": np.cumsum([0] + [len(row) for row in per_row]),
                **dict(zip(("term_col", "term_count", "term_proj", "term_rank", "term_sums"),
                           columns))}

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

    @property
    def in_features(self) -> int:
        return self.grid.shape[1]

    @property
    def out_features(self) -> int:
        return self.grid.shape[0]

    @property
    def has_basis(self) -> bool:
        """Whether blocks keep the 8 smooth basis coefficients."""
        return self.coef.shape[1] > 0

    @property
    def factors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(factor_out, factor_in) of the low-rank term, or None."""
        return self._factors

    @property
    def _computed_factors(self) -> tuple[np.ndarray, np.ndarray]:
        return self._computed["factor_out"], self._computed["factor_in"]

    # -- optimiser protocol -------------------------------------------------------------------

    def parameters(self) -> dict[str, np.ndarray]:
        """Trainable arrays, updated in place by ``rbe.optim``."""
        params = {"coef": self.coef} if self.has_basis else {}
        params["values"] = self.values
        if self.factors is not None:
            params["factor_out"], params["factor_in"] = self.factors
        if self.bias is not None:
            params["bias"] = self.bias
        return params

    def _round_parameters(self) -> None:
        """Refresh ``_computed``: the parameters as the products use them, rounded to
        ``precision``.

        A float16 layer computes with its parameters as a file stores them, so that what is
        measured before saving is what loads (no output bit changes); training updates the
        float32 arrays, and gradients pass straight through the rounding. The copies are
        refreshed where the parameters change in a step (``after_step``, ``regrow``). Arrays
        that hold their rounded values already (a float32 layer's, an encoded or loaded
        layer's) are used themselves, so an inference model keeps no copy.
        """
        self._computed = {name: p for name, p in self.parameters().items() if name != "bias"}
        if self.precision != "float32":
            for name, p in self._computed.items():
                stored = rounded(p, self.precision)
                if not np.array_equal(stored, p):
                    self._computed[name] = stored

    def after_step(self, loss: Callable[[], float] | None = None) -> None:
        """Count the optimiser step; on a regrow step, move positions (``regrow``) and clear
        ``grow_grads``. ``loss`` (the optimisers' closure) is not used by hybrid layers."""
        self.steps += 1
        fraction = self._regrow_fraction_at(self.steps)
        if fraction > 0:
            self.regrow(fraction)
            self.grow_grads[...] = 0
        self._round_parameters()

    def step_statistics(self) -> list[np.ndarray]:
        """The arrays the next ``after_step`` decides from, if it moves positions (else none).

        Processes training copies of one model sum them (an all-reduce, in place) before
        calling ``after_step``, so that every copy moves the same positions; rbe.torch does
        this when torch.distributed is initialised.
        """
        return [self.grow_grads] if self._regrow_fraction_at(self.steps + 1) > 0 else []

    # -- moving positions ---------------------------------------------------------------------

    def set_regrow(self, every: int | None, fraction: float = 0.3,
                   stop: int | None = None) -> None:
        """Move positions while training, by transform-domain prune-and-grow.

        After every ``every``-th optimiser step (``after_step``), each block swaps up to
        ``fraction`` of its coefficients (see ``regrow``), the fraction decaying as a half
        cosine to 0 at step ``stop`` (constant without ``stop``; no moves after it). The
        backward passes just before such a step sum the gradient of every position into
        ``grow_grads``. ``every=None`` stops moving positions.
        """
        if every is not None:
            every = positive_int("regrow_every", every)
        if not (isinstance(fraction, (int, float, np.floating)) and 0 < fraction <= 1):
            raise ValueError(f"regrow_fraction must be in (0, 1], got {fraction!r}")
        if stop is not None:
            stop = positive_int("regrow_stop", stop)
        self.regrow_every, self.regrow_fraction, self.regrow_stop = every, float(fraction), stop
        self._grow_grads = None

    @property
    def grow_grads(self) -> np.ndarray | None:
        # Allocated on first use, not by set_regrow: loading a file that keeps a regrow
        # schedule must not allocate a dense (out, in) array.
        if self._grow_grads is None and self.regrow_every is not None:
            self._grow_grads = np.zeros(self.grid.shape, np.float32)
        return self._grow_grads

    def _regrow_fraction_at(self, step: int) -> float:
        """The fraction of each block that may move after optimiser step ``step`` (0: none)."""
        every, stop = self.regrow_every, self.regrow_stop
        if every is None or step % every or (stop is not None and step >= stop):
            return 0.0
        decay = 1.0 if stop is None else 0.5 * (1.0 + np.cos(np.pi * step / stop))
        return self.regrow_fraction * decay

    def regrow(self, fraction: float) -> int:
        """Swap weak present coefficients for strong absent ones, per block, from ``grow_grads``.

        In every block with n coefficients, the floor(fraction * n) present ones of smallest
        |value| are paired, in order, with the absent positions of largest |gradient|; a pair
        swaps when the absent position's |gradient| exceeds the present one's, so a gradient
        step on the new positions lowers the linearised loss at least as much as on the old
        ones. Grown values start at 0; the number of coefficients does not change. Ties go to
        the lower entry and position, so the result depends only on the gradients and values.
        Returns the number of swaps.
        """
        scores = np.abs(self.grow_grads)
        index = self.index.copy()
        (bh, bw), swaps = self.grid.block, 0
        for b, (lo, hi) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
            m = int(fraction * (hi - lo))
            if m == 0:
                continue
            bi, bj = divmod(b, self.grid.cols)
            grad = scores[bi * bh:(bi + 1) * bh, bj * bw:(bj + 1) * bw].ravel()
            prune = lo + np.argsort(np.abs(self.values[lo:hi]), kind="stable")[:m]
            absent = np.ones(grad.size, bool)
            absent[index[lo:hi]] = False
            candidates = np.flatnonzero(absent)
            grow = candidates[np.argsort(-grad[candidates], kind="stable")[:m]]
            prune = prune[:len(grow)]
            better = grad[grow] > grad[index[prune]]
            index[prune[better]] = grow[better]
            self.values[prune[better]] = 0.0
            swaps += int(better.sum())
        _overwrite(self.index, index)     # in place: the array may be shared (rbe.torch)
        self._plans = None
        self._round_parameters()
        return swaps

    def _accumulate_grow_grads(self, a, z):
        """grow_grads += a_t z_t^T of each block's transform t: its coefficients' gradient."""
        grads = self.grow_grads
        for t in range(self._nslots):
            full = a[:, t, :] @ z[:, t, :].T
            if self._nslots > 1:
                per_block = (self._slots == t).reshape(self.grid.rows, self.grid.cols)
                full *= np.repeat(np.repeat(per_block, self.grid.heights, axis=0),
                                  self.grid.widths, axis=1)
            grads += full

    # -- products -------------------------------------------------------------------------------

    def forward(self, X: ArrayLike) -> np.ndarray:
        """Y = X W^T + b for X of shape (in_features,) or (batch, in_features), float32 or
        float64 (computed in that type, with the parameters as ``_round_parameters`` keeps
        them)."""
        X = layer_input("X", X, self.in_features, values=False)    # the plan checks elements
        plan = self._forward_plans()[X.dtype]
        return plan.forward(X, self._computed["values"], self._computed.get("coef", self.coef),
                            self.bias, None if self.factors is None else self._computed_factors)

    def backward(self, X: ArrayLike, dY: ArrayLike) -> np.ndarray:
        """dX for upstream gradient dY; overwrites ``grads`` with the parameter gradients (and
        adds to ``grow_grads`` before a step that moves positions)."""
        X, dY = layer_input("X", X, self.in_features), layer_input("dY", dY, self.out_features)
        if dY.dtype != X.dtype or dY.shape[:-1] != X.shape[:-1]:
            raise ValueError(f"dY must have dtype {X.dtype} and shape "
                             f"{X.shape[:-1] + (self.out_features,)}, got {dY.dtype} {dY.shape}")
        xt = np.ascontiguousarray(X.reshape(-1, self.in_features).T)
        dyt = np.ascontiguousarray(dY.reshape(-1, self.out_features).T)
        inputs, outputs = self._operators[xt.dtype]
        z = self._apply(inputs, self._col_classes, xt, self._nslots)
        a = self._apply({h: m.T for h, m in outputs.items()}, self._row_classes, dyt,
                        self._nslots)
        dz = np.zeros_like(z)
        _hybrid.hybrid_cols_backward(*self._kernel_args(), a, dz)
        value_grads = np.empty(self.values.shape, xt.dtype)
        _hybrid.hybrid_value_grads(*self._kernel_args(), a, z, value_grads)
        self.grads["values"][...] = value_grads
        if self._regrow_fraction_at(self.steps + 1) > 0:
            self._accumulate_grow_grads(a, z)
        dxt = self._apply({w: m.T for w, m in inputs.items()}, self._col_classes, dz,
                          1).reshape(self.in_features, -1)
        if self.has_basis:
            dxt += self._basis_backward(xt, dyt)
        if self.factors is not None:
            dxt += self._low_rank_backward(xt, dyt)
        if self.bias is not None:
            self.grads["bias"][...] = dyt.sum(axis=1)
        finite_output("backward", dxt)
        return np.ascontiguousarray(dxt.T).reshape(X.shape)

    def _low_rank_backward(self, xt, dyt):
        """dX of the low-rank term, (in, batch); fills the factors' gradients."""
        factor_out, factor_in = (f.astype(xt.dtype) for f in self._computed_factors)
        projected_x = factor_in.T @ xt              # (rank, batch)
        projected_dy = factor_out.T @ dyt
        self.grads["factor_out"][...] = dyt @ projected_x.T
        self.grads["factor_in"][...] = xt @ projected_dy.T
        return factor_in @ projected_dy

    def _kernel_args(self):
        return (self.grid.shape, self.grid.block, self._slots, self.offsets, self.index,
                self._computed["values"])

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
            coef_t = self._coef_columns(sel, nr, nc, xt.dtype)
            t = (coef_t @ g).reshape(nc, right.shape[0], batch)
            dxt[cols] += _left(right.T, t).reshape(-1, batch)
        return dxt

    def _coef_columns(self, sel, nr, nc, dtype):
        """Coefficients of a group as (nc, nr*8): row bj, column bi*8 + k."""
        coef = self._computed["coef"][sel].reshape(nr, nc, tf.NUM_BASIS)
        return np.ascontiguousarray(coef.transpose(1, 0, 2), dtype).reshape(nc, -1)

    # -- dense view and storage -----------------------------------------------------------------

    @property
    def matrix(self) -> HybridMatrix:
        """The weight as a HybridMatrix (copies of the current parameters and positions, which
        change in place, in ``precision``)."""
        factors = None if self.factors is None else tuple(f.copy() for f in self.factors)
        return HybridMatrix(self.grid.shape, self.grid.block, self.coef.copy(),
                            self.transform.copy(), self.offsets, self.index.copy(),
                            self.values.copy(), wavelet=self.wavelet, factors=factors,
                            precision=self.precision)

    def to_dense(self) -> np.ndarray:
        """The dense float32 weight matrix (out_features, in_features), as stored and as the
        products compute with it (values rounded to ``precision``)."""
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
        """Config and arrays for rbe.save (with the step count and the regrow schedule)."""
        config, arrays = self.matrix._state()
        if self.bias is not None:
            arrays["bias"] = self.bias
        config["steps"] = self.steps
        config["regrow"] = [self.regrow_every, self.regrow_fraction, self.regrow_stop]
        return config, arrays

    @classmethod
    def _from_state(cls, config: dict, arrays: dict) -> HybridLinear:
        """Inverse of ``_state``; validates like the constructor."""
        arrays = dict(arrays)
        bias = arrays.pop("bias", None)
        layer = cls.from_matrix(HybridMatrix._from_state(config, arrays), bias)
        if "regrow" in config:
            layer.set_regrow(*config["regrow"])
        steps = config.get("steps", 0)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        layer.steps = steps
        return layer

    def __getstate__(self):
        # forward plans hold C pointers; a copy (or an unpickled layer) builds its own
        return {**self.__dict__, "_plans": None}

    def __repr__(self):
        return (f"HybridLinear(in_features={self.in_features}, "
                f"out_features={self.out_features}, block={self.grid.block}, "
                f"coefficients={len(self.values)}, basis={self.has_basis}, rank={self.rank}, "
                f"bias={self.bias is not None}, ratio={self.compression_ratio:.1f})")


def matrix_budget(budget: int | None, ratio: float | None, shape: tuple[int, int],
                  has_bias: bool) -> int | None:
    """Bytes left for the weight of a layer of ``shape`` whose stored bytes (bias included)
    may not exceed ``budget``, or dense float32 bytes / ``ratio``; None when neither is given."""
    if budget is None and ratio is None:
        return None
    if budget is not None and ratio is not None:
        raise ValueError("give either budget or ratio, not both")
    bias_bytes = 4 * shape[0] if has_bias else 0
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.number)) \
                or not (np.isfinite(ratio) and ratio >= 1):
            raise ValueError(f"ratio must be a finite number >= 1, got {ratio!r}")
        budget = int((4 * shape[0] * shape[1] + bias_bytes) / ratio)
    budget = positive_int("budget", budget)
    if budget <= bias_bytes:
        raise ValueError(f"budget of {budget} bytes does not hold the bias ({bias_bytes} bytes)")
    return budget - bias_bytes


def _largest_k(empty: HybridMatrix, budget: int) -> int:
    """The largest k for which ``empty`` with min(k, block size) coefficients per block fits in
    ``budget`` bytes."""
    per_coef = index_bytes(empty.grid) + np.dtype(empty.precision).itemsize
    room = (budget - empty.nbytes) // per_coef
    sizes = empty.grid.block_sizes()
    low, high = 0, int(sizes.max())
    while low < high:       # the largest k with sum(min(k, sizes)) <= room
        mid = (low + high + 1) // 2
        low, high = (mid, high) if np.minimum(mid, sizes).sum() <= room else (low, mid - 1)
    if low == 0:
        raise ValueError(f"budget of {budget} bytes (weight part) cannot hold one coefficient "
                         f"per block: the fixed part (header, basis, low-rank factors) takes "
                         f"{empty.nbytes} bytes, a coefficient {per_coef}")
    return low


def _axis_layout(classes, rows_per_block):
    """First feature, first work row and class of every block column (row) of the classes
    ((length, features) in feature order, each block ``rows_per_block[class]`` work rows),
    and runs of consecutive blocks of one class for one vector: at most 8 per class."""
    first, work, cls, runs = [], [], [], [0]
    row = 0
    for k, ((n, features), rows) in enumerate(zip(classes, rows_per_block)):
        count, start = (features.stop - features.start) // n, runs[-1]
        first.append(features.start + n * np.arange(count))
        work.append(row + rows * np.arange(count))
        cls.append(np.full(count, k))
        runs.extend(range(start + -(-count // 8), start + count, -(-count // 8)))
        runs.append(start + count)
        row += rows * count
    return np.concatenate(first), np.concatenate(work), np.concatenate(cls), np.array(runs)


def _frozen(a):
    """A read-only view of a private copy of ``a``; its base stays writable, so that
    ``_overwrite`` (and rbe.torch, which shares the memory) can change it in place."""
    view = np.array(a).view()
    view.flags.writeable = False
    return view


def _overwrite(frozen: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` into a ``_frozen`` array in place."""
    frozen.flags.writeable = True
    try:
        frozen[...] = values
    finally:
        frozen.flags.writeable = False
