"""The contract of rbe's layers, as ``typing.Protocol`` classes.

- :class:`Trainable`: what :mod:`rbe.optim` updates (``parameters()``, ``grads``,
  ``after_step``).
- :class:`Stored`: what :mod:`rbe.io` writes and reads (``_state()`` / ``_from_state``) and
  what ``rbe info`` lists (``block``, ``nbytes``, ``compression_ratio``); ``HybridMatrix`` is
  one, as are the layers.
- :class:`Layer`: both, plus the product itself (``forward``, ``backward``, ``to_dense``) and
  the statistics its ``after_step`` decides from (``step_statistics``), as
  :class:`rbe.FusedLinear`, :class:`rbe.HybridLinear` and :mod:`rbe.torch` use it.

The classes are structural: any object with these members is one, without inheriting from
them. They are ``runtime_checkable``, so ``isinstance(obj, Trainable)`` checks that the members
exist (not their signatures); before Python 3.12 that check reads every member, so
``isinstance(obj, Stored)`` computes properties such as ``nbytes``.
"""
from __future__ import annotations

from typing import Callable, Protocol, TypeVar, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Trainable", "Stored", "Layer"]

S = TypeVar("S", bound="Stored")


@runtime_checkable
class Trainable(Protocol):
    """An object :mod:`rbe.optim` can train."""

    #: Gradients, filled by ``backward``: the names and shapes of ``parameters()``, or a subset.
    grads: dict[str, np.ndarray]

    def parameters(self) -> dict[str, np.ndarray]:
        """The trained arrays by name; optimisers update them in place."""

    def after_step(self, loss: Callable[[], float] | None = None) -> None:
        """Called after every optimiser update, to re-derive what depends on the parameters.

        ``loss`` is the optimiser's closure (the loss on the current batch) or None; seed
        layers keep their state transitions only if it does not increase, others ignore it.
        """


@runtime_checkable
class Stored(Protocol):
    """An object :func:`rbe.save` can write and :func:`rbe.load` rebuild."""

    @property
    def block(self) -> tuple[int, int]:
        """Block shape (rows, columns)."""

    @property
    def nbytes(self) -> int:
        """Bytes stored (every array of ``_state``, the bias included)."""

    @property
    def compression_ratio(self) -> float:
        """Bytes of the same weights as dense float32, over ``nbytes``."""

    def _state(self) -> tuple[dict, dict]:
        """(config, arrays): JSON-serialisable settings and the arrays to store."""

    @classmethod
    def _from_state(cls: type[S], config: dict, arrays: dict) -> S:
        """The object ``_state`` describes, validated like the constructor."""


@runtime_checkable
class Layer(Trainable, Stored, Protocol):
    """A linear layer ``Y = X W^T + bias`` computed from compressed blocks."""

    #: float32 (out_features,), or None
    bias: np.ndarray | None

    @property
    def in_features(self) -> int:
        """Input width."""

    @property
    def out_features(self) -> int:
        """Output width."""

    def forward(self, X: ArrayLike) -> np.ndarray:
        """Y for X of shape (in_features,) or (batch, in_features), float32 or float64: any
        array-like that ``rbe._checks.layer_input`` accepts (the contract of every kind)."""

    def backward(self, X: ArrayLike, dY: ArrayLike) -> np.ndarray:
        """dX for the forward input X and dL/dY; fills ``grads``."""

    def to_dense(self) -> np.ndarray:
        """The weight matrix W, (out_features, in_features)."""

    def step_statistics(self) -> list[np.ndarray]:
        """The arrays the next ``after_step`` decides from (state transitions, moved
        positions), if it decides; processes training copies of one model sum them in place
        before it (rbe.torch does, under torch.distributed)."""
