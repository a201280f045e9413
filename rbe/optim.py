"""Optimisers for rbe layers.

They train any :class:`rbe.layer.Trainable`, which exposes three things:

- ``parameters()``: a dict name -> float array, updated in place by the optimiser;
- ``grads``: a dict with the same names and shapes, filled by ``backward``;
- ``after_step(loss=None)``: called after every update, to re-derive state that depends on
  the parameters (seed layers apply their state transitions and re-quantise ``hi`` there).
  ``loss`` is the closure given to :meth:`Optimizer.step`, or None: seed layers then keep
  their state transitions only if it does not increase; other layers ignore it.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Callable, Union

import numpy as np

from .layer import Trainable

#: An optimiser's ``layers`` argument: one trainable layer, or a list or tuple of them.
Layers = Union[Trainable, Sequence[Trainable]]
#: The key of a parameter in an optimiser's state: (layer position, parameter name).
_Key = tuple[int, str]


def _as_layers(layers: Layers) -> list[Trainable]:
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    for layer in layers:
        if not isinstance(layer, Trainable):
            raise ValueError(f"{type(layer).__name__} is not a trainable rbe layer "
                             "(rbe.layer.Trainable: parameters(), grads and after_step())")
    return layers


class Optimizer:
    """Base class: walks every (parameter, gradient) pair of the layers."""

    def __init__(self, layers: Layers, lr: float):
        if not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate must be a positive finite number, got {lr}")
        self.layers = _as_layers(layers)
        self.lr = float(lr)

    def _pairs(self) -> Iterator[tuple[_Key, np.ndarray, np.ndarray]]:
        for i, layer in enumerate(self.layers):
            params = layer.parameters()
            for name, p in params.items():
                g = layer.grads.get(name)
                if g is None:
                    continue
                if g.shape != p.shape:
                    raise ValueError(f"gradient {name!r} has shape {g.shape}, "
                                     f"parameter has {p.shape}")
                yield (i, name), p, g

    def step(self, closure: Callable[[], float] | None = None) -> None:
        """Update every parameter from its gradient, then run each layer's ``after_step``.

        closure : callable returning the loss on the current batch, optional
            Passed to ``after_step(loss=closure)`` (the exact check of seed layers' state
            transitions); it must not change gradients.
        """
        for key, p, g in self._pairs():
            self._update(key, p, g)
        for layer in self.layers:
            layer.after_step(loss=closure)

    def zero_grad(self) -> None:
        """Set every gradient array of the layers to 0 (in place)."""
        for layer in self.layers:
            for g in layer.grads.values():
                g[...] = 0

    def _update(self, key: _Key, p: np.ndarray, g: np.ndarray) -> None:
        """Update parameter ``p`` in place from its gradient ``g``."""
        raise NotImplementedError


class SGD(Optimizer):
    """Plain gradient descent, optionally with momentum."""

    def __init__(self, layers: Layers, lr: float = 0.01, momentum: float = 0.0):
        super().__init__(layers, lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self._velocity: dict[_Key, np.ndarray] = {}

    def _update(self, key: _Key, p: np.ndarray, g: np.ndarray) -> None:
        if self.momentum:
            v = self._velocity.setdefault(key, np.zeros(p.shape, np.float64))
            v *= self.momentum
            v += g
            g = v
        p -= (self.lr * g).astype(p.dtype, copy=False)


class Adam(Optimizer):
    """Bias-corrected Adam (beta1 0.9, beta2 0.999, eps 1e-8), in float64."""

    def __init__(self, layers: Layers, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(layers, lr)
        self.beta1, self.beta2 = map(float, betas)
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(f"Adam betas must be in [0, 1), got {betas}")
        if not (np.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive finite number, got {eps}")
        self.eps = float(eps)
        self.t = 0
        self._moments: dict[_Key, tuple[np.ndarray, np.ndarray]] = {}

    def step(self, closure: Callable[[], float] | None = None) -> None:
        """Count the step (for the bias correction), then :meth:`Optimizer.step`."""
        self.t += 1
        super().step(closure)

    def _update(self, key: _Key, p: np.ndarray, g: np.ndarray) -> None:
        m, v = self._moments.setdefault(key, (np.zeros(p.shape), np.zeros(p.shape)))
        m *= self.beta1
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * np.square(g)
        m_hat = m / (1.0 - self.beta1 ** self.t)
        v_hat = v / (1.0 - self.beta2 ** self.t)
        p -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(p.dtype, copy=False)
