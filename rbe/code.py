"""CodeLinear: a linear layer stored as trellis-coded tiles between randomised Hadamard
rotations, for the pretrained weights users already have (the code in rbe.trellis, the kernels
in rbe/include/rbe/code.h, the measurements in docs/code.md).

y = W x + b is computed as x' = H_in (s_in * pad(x)), y' = R x', y = (s_out * H_out^T y')[:m]
+ b: the rotations are fast Walsh-Hadamard transforms (O(n log n)), and the product with R
generates every weight from the stored bit streams inside the kernel, in registers, without
ever decoding the matrix. The codes are frozen; the row scales of R and the bias train.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from numpy.typing import ArrayLike

from . import _code
from . import trellis as tr
from ._checks import (
    MAX_FEATURES,
    finite_output,
    layer_input,
    nonnegative_number,
    positive_int,
)
from .encoder import check_matrix

#: Bytes of a code matrix's fixed header in ``nbytes``: shape, bits, state bits, seed, exponent.
HEADER_BYTES = 6 * 8
#: Floats of a decoded panel in ``backward`` and ``to_dense`` (bounds their temporary memory).
_PANEL_FLOATS = 1 << 20
#: Largest exponent of the stored scales (so that they stay within the file's bound, 2^60).
MAX_EXPONENT = 60


def stored_scale(scale: np.ndarray) -> tuple[np.ndarray, int]:
    """(float16 scale / 2^exponent, exponent): the stored form of float32 row scales, the
    exponent chosen so that the largest magnitude is in (0.5, 1]."""
    largest = float(np.max(np.abs(scale), initial=0.0))
    if not largest < 2.0**MAX_EXPONENT:
        raise ValueError(f"row scales must be finite and below 2**{MAX_EXPONENT}, got "
                         f"{largest:.3g}")
    exponent = int(np.frexp(largest)[1]) if largest > 0 else 0
    with np.errstate(over="ignore", under="ignore"):
        return np.ldexp(scale, -exponent).astype(np.float16), exponent


def _in_stored_precision(scale: np.ndarray) -> np.ndarray:
    """The float32 values of the stored form of ``scale`` (what a file keeps, what the products
    compute with)."""
    stored, exponent = stored_scale(scale)
    return np.ldexp(stored.astype(np.float32), exponent)


class CodeLinear:
    """y = W x + b with W (out_features x in_features) stored as trellis-coded tiles.

    Build one from a trained matrix with :meth:`from_dense` (or ``rbe.torch.compress(model,
    kind="code")``); the constructor makes random codes (weights of the variance of
    ``torch.nn.Linear``'s), for tests and for training the scales from scratch.

    Parameters
    ----------
    in_features, out_features : int
        Layer size.
    bits : {2, 3, 4}
        Stored bits per weight.
    state_bits : int, optional
        Bits of the trellis state, 8 .. 16 (``rbe.trellis.DEFAULT_STATE_BITS`` by default):
        more bits code more accurately and encode more slowly (docs/code.md); the products
        cost the same.
    bias : bool
        Add a trainable bias.
    seed : int
        Seed of the rotations' random signs (and, here, of the random codes).

    Attributes
    ----------
    scale : (out_padded,) float32
        Trainable row scales of the rotated matrix (stored as float16 times a power of two;
        the products compute with the stored values, gradients pass straight through).
    bias : (out_features,) float32 or None
    codes : (tile rows, tile columns, 32 bits) uint8, read-only
        Each 16 x 16 tile's circular bit stream.
    grads : dict
        Gradients of ``scale`` and ``bias``, overwritten by ``backward``.
    """

    def __init__(self, in_features: int, out_features: int, bits: int = 3,
                 state_bits: int | None = None, bias: bool = True, seed: int = 0):
        in_features = positive_int("in_features", in_features, MAX_FEATURES)
        out_features = positive_int("out_features", out_features, MAX_FEATURES)
        bits = tr.check_bits(bits)
        seed = tr.check_seed(seed)
        rng = np.random.default_rng(seed)
        rows, cols = tr.rotated_side(out_features), tr.rotated_side(in_features)
        codes = rng.integers(0, 256, (rows // tr.TILE, cols // tr.TILE, 32 * bits), np.uint8)
        # nn.Linear's weights have variance 1 / (3 in_features); the rotations keep the energy
        std = np.sqrt(out_features / (3.0 * rows * cols))
        bias = rng.uniform(-1, 1, out_features) / np.sqrt(in_features) if bias else None
        self._attach(in_features, out_features, bits, tr.check_state_bits(state_bits, bits),
                     seed, codes, np.full(rows, std), bias)

    @classmethod
    def from_dense(cls, W: ArrayLike, bias: ArrayLike | None = None, *, bits: int = 3,
                   state_bits: int | None = None, hessian: ArrayLike | None = None,
                   input_mean: ArrayLike | None = None, damping: float = tr.DEFAULT_DAMPING,
                   seed: int = 0, progress: bool | None = None) -> CodeLinear:
        """Code a dense (out_features, in_features) weight matrix.

        ``hessian``: the second moment E[x x^T] of the layer's inputs (in_features square,
        e.g. from ``rbe.torch.calibrate``); with it the encoder minimises the error of the
        outputs (LDLQ), without it the error of the weights. ``damping`` adds that fraction of
        the mean diagonal to the rotated moment's diagonal. ``input_mean``: E[x]; with a bias,
        the bias absorbs the mean error of the outputs, (W - W_coded) E[x]. ``progress``: a
        progress bar (by default on a terminal for large matrices).
        """
        W = check_matrix(W)
        bits = tr.check_bits(bits)
        state_bits = tr.check_state_bits(state_bits, bits)
        seed = tr.check_seed(seed)
        out_features, in_features = W.shape
        if hessian is not None:
            hessian = tr.check_hessian(hessian, in_features)
        damping = nonnegative_number("damping", damping)
        rows = tr.rotation(out_features, seed, tr.OUTPUTS)
        cols = tr.rotation(in_features, seed, tr.INPUTS)
        coded = tr.encode(W, bits, state_bits, rows, cols, hessian, damping, progress)
        layer = cls.__new__(cls)
        layer._attach(in_features, out_features, bits, state_bits, seed, coded.codes,
                      coded.scale, bias)
        if input_mean is not None and layer.bias is not None:
            mean = layer_input("input_mean", input_mean, in_features).astype(np.float64)
            if mean.ndim != 1:
                raise ValueError(f"input_mean must have shape ({in_features},)")
            layer.bias += ((W - layer.to_dense()) @ mean).astype(np.float32)
        return layer

    def _attach(self, in_features, out_features, bits, state_bits, seed, codes, scale, bias):
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.state_bits, self.seed = bits, state_bits, seed
        self._inputs = tr.rotation(in_features, seed, tr.INPUTS)
        self._outputs = tr.rotation(out_features, seed, tr.OUTPUTS)
        # a read-only view of writable memory, which rbe.torch shares with a buffer
        self.codes = (codes if codes.flags.writeable else codes.copy()).view()
        self.codes.flags.writeable = False
        self.scale = _in_stored_precision(np.asarray(scale, np.float32))
        self.bias = None if bias is None else self._check_bias(bias)
        self._plan = self._build_plan()
        self._factor = None
        self.grads = {name: np.zeros_like(p) for name, p in self.parameters().items()}

    def _check_bias(self, bias):
        b = np.array(bias, dtype=np.float32).reshape(-1)
        if b.shape != (self.out_features,):
            raise ValueError(f"bias must have {self.out_features} entries, got {b.shape[0]}")
        if not np.isfinite(b).all():
            raise ValueError("bias must be finite")
        return b

    # -- properties -----------------------------------------------------------------------------

    @property
    def block(self) -> tuple[int, int]:
        """The tile shape (16, 16): one stream per tile of the rotated matrix."""
        return (tr.TILE, tr.TILE)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """Shape of the rotated matrix R (rbe.trellis.rotated_side of each side)."""
        return (self._outputs.side, self._inputs.side)

    @property
    def weight_nbytes(self) -> int:
        """Stored bytes of the weight: the streams, the float16 row scales and the header."""
        return self.codes.nbytes + 2 * self.scale.size + HEADER_BYTES

    @property
    def bits_per_weight(self) -> float:
        """Stored bits of the weight per weight of the (unpadded) matrix."""
        return 8 * self.weight_nbytes / (self.in_features * self.out_features)

    @property
    def nbytes(self) -> int:
        """Every stored byte of the weight, plus the bias."""
        return self.weight_nbytes + (0 if self.bias is None else self.bias.nbytes)

    @property
    def compression_ratio(self) -> float:
        """Bytes of the dense float32 layer (weight and bias) / stored bytes."""
        dense = 4 * self.in_features * self.out_features
        return (dense + (0 if self.bias is None else self.bias.nbytes)) / self.nbytes

    # -- training ------------------------------------------------------------------------------

    def parameters(self) -> dict[str, np.ndarray]:
        """The trainable arrays: the row scales and the bias."""
        params = {"scale": self.scale}
        if self.bias is not None:
            params["bias"] = self.bias
        return params

    def after_step(self, loss: Callable[[], float] | None = None) -> None:
        """Re-derive the stored-precision scales the products use from ``scale``."""
        self._factor = None

    def step_statistics(self) -> list[np.ndarray]:
        """None: a code layer decides nothing after a step."""
        return []

    def _factors(self) -> np.ndarray:
        """The row factors of the products: scale in its stored precision / 147.8."""
        if self._factor is None:
            self._factor = (_in_stored_precision(self.scale)
                            / np.float32(tr.SPREAD)).astype(np.float32)
        return self._factor

    # -- products -------------------------------------------------------------------------------

    def forward(self, X: ArrayLike) -> np.ndarray:
        """Y = X W^T + b for X of shape (in_features,) or (batch, in_features), float32 or
        float64 (computed in float32, returned in X's type)."""
        X = layer_input("X", X, self.in_features, values=False)    # the plan checks elements
        return self._plan.forward(X, self._factors(), self.bias)

    def backward(self, X: ArrayLike, dY: ArrayLike) -> np.ndarray:
        """dX for upstream gradient dY; overwrites ``grads`` (scale and bias)."""
        X, dY = np.asarray(X), np.asarray(dY)
        X2 = layer_input("X", X, self.in_features).reshape(-1, self.in_features)
        dY2 = layer_input("dY", dY, self.out_features).reshape(-1, self.out_features)
        if dY.dtype != X.dtype or dY2.shape[0] != X2.shape[0]:
            raise ValueError(f"dY must have dtype {X.dtype} and shape "
                             f"{X.shape[:-1] + (self.out_features,)}, got {dY.dtype} {dY.shape}")
        xr = self._inputs.forward(X2)
        g = self._outputs.forward(dY2)
        raw = np.zeros_like(g)
        dxr = np.zeros_like(xr)
        weighted = g * self._factors()
        for rows, cols, panel in self._panels():
            raw[:, rows] += xr[:, cols] @ panel.T
            dxr[:, cols] += weighted[:, rows] @ panel
        self.grads["scale"][...] = np.einsum("bi,bi->i", g, raw) / tr.SPREAD
        if self.bias is not None:
            self.grads["bias"][...] = dY2.sum(axis=0)
        dX = self._inputs.backward(dxr)
        finite_output("backward", dX)
        return dX.reshape(X.shape).astype(X.dtype, copy=False)

    def _panels(self):
        """(rows, columns, values) of the rotated matrix's centred integers, decoded one panel
        at a time (at most _PANEL_FLOATS floats)."""
        plan, tile_cols = self._plan, self.codes.shape[1]
        step = max(1, _PANEL_FLOATS // (_code.GROUP * tr.TILE))
        for group in range(plan.groups):
            r0 = group * _code.GROUP
            r1 = min(r0 + _code.GROUP, plan.out_padded)
            for tj0 in range(0, tile_cols, step):
                tj1 = min(tj0 + step, tile_cols)
                panel = np.empty((r1 - r0, tr.TILE * (tj1 - tj0)), np.float32)
                plan.decode(group, tj0, tj1, panel)
                yield slice(r0, r1), slice(tr.TILE * tj0, tr.TILE * tj1), panel

    # -- dense view and storage -----------------------------------------------------------------

    def rotated(self) -> np.ndarray:
        """The rotated matrix R (padded_shape) the codes and scales give, float32."""
        R = np.empty(self.padded_shape, np.float32)
        for rows, cols, panel in self._panels():
            R[rows, cols] = panel
        return R * self._factors()[:, None]

    def to_dense(self) -> np.ndarray:
        """The dense float32 weight matrix (out_features, in_features)."""
        return tr.unrotate_matrix(self.rotated(), self._outputs, self._inputs)

    def _state(self) -> tuple[dict, dict]:
        """Config and arrays for rbe.save."""
        stored, exponent = stored_scale(self.scale)
        config = {"in_features": self.in_features, "out_features": self.out_features,
                  "bits": self.bits, "state_bits": self.state_bits, "seed": self.seed,
                  "exponent": exponent}
        arrays = {"codes": self.codes, "scale": stored}
        if self.bias is not None:
            arrays["bias"] = self.bias
        return config, arrays

    @classmethod
    def _from_state(cls, config: dict, arrays: dict) -> CodeLinear:
        """Inverse of ``_state``; validates like the constructor. The codes are used in place."""
        bits = tr.check_bits(config["bits"])
        state_bits = tr.check_state_bits(config["state_bits"], bits)
        in_features = positive_int("in_features", config["in_features"], MAX_FEATURES)
        out_features = positive_int("out_features", config["out_features"],
                                    MAX_FEATURES)
        shape = (tr.rotated_side(out_features) // tr.TILE,
                 tr.rotated_side(in_features) // tr.TILE, 32 * bits)
        codes, stored = arrays["codes"], arrays["scale"]
        if codes.dtype != np.uint8 or codes.shape != shape:
            raise ValueError(f"codes must be uint8 of shape {shape}, got {codes.dtype} "
                             f"{codes.shape}")
        if stored.dtype != np.float16 or stored.shape != (shape[0] * tr.TILE,):
            raise ValueError(f"scale must be float16 of shape ({shape[0] * tr.TILE},)")
        exponent = config["exponent"]
        layer = cls.__new__(cls)
        layer._attach(in_features, out_features, bits, state_bits, tr.check_seed(config["seed"]),
                      np.ascontiguousarray(codes),
                      np.ldexp(stored.astype(np.float32), exponent), arrays.get("bias"))
        return layer

    def __getstate__(self):
        # the plan holds C pointers; a copy (or an unpickled layer) builds its own
        state = self.__dict__.copy()
        del state["_plan"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._plan = self._build_plan()

    def _build_plan(self) -> _code.CodePlan:
        return _code.CodePlan(self.in_features, self.out_features, self.bits, self.state_bits,
                              self.codes, self._inputs.signs, self._outputs.signs,
                              self._inputs.odd_matrix, self._outputs.odd_matrix)

    def __repr__(self):
        return (f"CodeLinear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}, state_bits={self.state_bits}, "
                f"bias={self.bias is not None}, bits_per_weight={self.bits_per_weight:.3f})")

