"""The rbe demo: a digits classifier built from dense, seed-block and hybrid-block layers.

On scikit-learn's bundled 8 x 8 digits (offline), the same MLP (64 -> 256 -> 256 -> 10, ReLU)
is trained four ways:

1. dense float32 layers (the baseline);
2. seed blocks (FusedLinear) trained from scratch;
3. hybrid blocks (HybridLinear, k lowest DCT frequencies) trained from scratch;
4. the dense MLP of (1) compressed with the hybrid encoder, then fine-tuned in compressed form.

It prints one table (test accuracy, bytes of the layers, compression ratio, forward time relative
to the dense MLP) and, when matplotlib is installed, saves a plot of accuracy against bytes.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

from . import optim
from .hybrid import HybridLinear
from .layer import Layer

HIDDEN = 256


class DenseLinear:
    """A plain float32 linear layer with the rbe layer protocol (the baseline)."""

    def __init__(self, in_features: int, out_features: int, rng: np.random.Generator):
        bound = 1.0 / np.sqrt(in_features)
        self.weight = rng.uniform(-bound, bound, (out_features, in_features)).astype(np.float32)
        self.bias = rng.uniform(-bound, bound, out_features).astype(np.float32)
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, X: np.ndarray) -> np.ndarray:
        return X @ self.weight.T + self.bias

    def backward(self, X: np.ndarray, dY: np.ndarray) -> np.ndarray:
        self.grads = {"weight": dY.T @ X, "bias": dY.sum(axis=0)}
        return dY @ self.weight

    def parameters(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}

    def after_step(self, loss: Callable[[], float] | None = None) -> None:
        pass

    def to_dense(self) -> np.ndarray:
        return self.weight

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes + self.bias.nbytes


#: A layer of the demo's models: an rbe layer or the dense baseline.
DemoLayer = Union[Layer, "DenseLinear"]


class MLP:
    """Linear layers with ReLU between them; softmax cross-entropy on the last."""

    def __init__(self, layers: Iterable[DemoLayer]):
        self.layers = list(layers)

    def forward(self, X: np.ndarray, keep: bool = False) -> np.ndarray:
        """The logits; with ``keep``, the layers' inputs are kept for :meth:`backward`."""
        inputs = []
        for n, layer in enumerate(self.layers):
            inputs.append(X)
            X = layer.forward(X)
            if n < len(self.layers) - 1:
                X = np.maximum(X, 0.0)
        if keep:
            self._inputs = inputs
        return X

    def backward(self, dlogits: np.ndarray) -> None:
        """Fill every layer's grads from dL/dlogits (after a forward with ``keep``)."""
        d = dlogits
        for n in reversed(range(len(self.layers))):
            d = self.layers[n].backward(self._inputs[n], d)
            if n > 0:
                d = d * (self._inputs[n] > 0)

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)


def load_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1], split 80/20 with a fixed permutation."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the demo uses scikit-learn's bundled digits: "
                          "pip install 'rbe[demo]'") from None
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(X))
    X, y = X[order], digits.target[order]
    cut = int(0.8 * len(X))
    return X[:cut], y[:cut], X[cut:], y[cut:]


def train(model: MLP, X: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int = 0,
          batch: int = 64) -> MLP:
    """Adam on softmax cross-entropy, shuffled minibatches."""
    opt = optim.Adam(model.layers, lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(X)), max(1, len(X) // batch)):
            logits = model.forward(X[idx], keep=True)
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1.0
            model.backward((p / len(idx)).astype(np.float32))
            opt.step()
    return model


def accuracy(model: MLP, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.forward(X).argmax(axis=1) == y))


def forward_time(model: MLP, X: np.ndarray, repeats: int = 20) -> float:
    """Median seconds of one forward over X."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.forward(X)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@dataclass
class Result:
    name: str
    accuracy: float
    nbytes: int
    seconds: float


def dense_mlp(rng: np.random.Generator) -> MLP:
    return MLP([DenseLinear(64, HIDDEN, rng), DenseLinear(HIDDEN, HIDDEN, rng),
                DenseLinear(HIDDEN, 10, rng)])


def fused_mlp(seed: int) -> MLP:
    from .fused import FusedLinear
    sizes = [(64, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 10)]
    return MLP([FusedLinear(i, o, block=(min(16, o), 16), seed=seed + n)
                for n, (i, o) in enumerate(sizes)])


def hybrid_mlp(seed: int) -> MLP:
    sizes = [(64, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 10)]
    return MLP([HybridLinear(i, o, block=(32, 32), k=48, transform="dct", seed=seed + n)
                for n, (i, o) in enumerate(sizes)])


def compressed_mlp(dense: MLP, k: int = 96) -> MLP:
    return MLP([HybridLinear.from_dense(layer.weight, bias=layer.bias, block=(32, 32), k=k)
                for layer in dense.layers])


def run(epochs: int = 30, seed: int = 0, plot: str | None = "rbe-demo.png") -> list[Result]:
    """Train the four variants and return their results (also printed)."""
    Xtr, ytr, Xte, yte = load_data(seed)
    rng = np.random.default_rng(seed)
    results, models = [], {}
    dense = train(dense_mlp(rng), Xtr, ytr, epochs, lr=2e-3, seed=seed)
    models["dense float32"] = dense
    models["seed blocks (FusedLinear), from scratch"] = train(
        fused_mlp(seed), Xtr, ytr, epochs, lr=1e-2, seed=seed)
    models["hybrid blocks (HybridLinear), from scratch"] = train(
        hybrid_mlp(seed), Xtr, ytr, epochs, lr=2e-3, seed=seed)
    compressed = compressed_mlp(dense)
    models["dense, hybrid-encoded (no fine-tuning)"] = compressed
    results_before = accuracy(compressed, Xte, yte)
    models["dense, hybrid-encoded + fine-tuned"] = train(
        compressed_mlp(dense), Xtr, ytr, max(1, epochs // 3), lr=5e-4, seed=seed)
    for name, model in models.items():
        acc = results_before if "no fine-tuning" in name else accuracy(model, Xte, yte)
        results.append(Result(name, acc, model.nbytes, forward_time(model, Xte)))
    _print_table(results, len(Xte))
    if plot:
        _plot(results, plot)
    return results


def _print_table(results: list[Result], n_test: int) -> None:
    base = results[0]
    print(f"digits, MLP 64-{HIDDEN}-{HIDDEN}-10, test set of {n_test} images")
    print(f"{'model':<44} {'accuracy':>8} {'bytes':>9} {'ratio':>7} {'forward vs dense':>17}")
    for r in results:
        print(f"{r.name:<44} {r.accuracy:>8.3f} {r.nbytes:>9,d} {base.nbytes / r.nbytes:>6.1f}x "
              f"{r.seconds / base.seconds:>16.1f}x")


def _plot(results: list[Result], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.scatter(r.nbytes, r.accuracy)
        ax.annotate(r.name, (r.nbytes, r.accuracy), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("bytes of the layers")
    ax.set_ylabel("test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {path}")
