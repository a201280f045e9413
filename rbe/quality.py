"""Accuracy per byte: rbe layers against the simplest alternatives at equal stored bytes.

Two classification tasks; an MLP whose two hidden layers are replaced by each variant (the
10-class head stays dense), trained with Adam, batch 64. The budget is the dense float32 bytes of
the two hidden layers (weights and biases) divided by a ratio, split between the layers in
proportion to their dense size. Bytes are ``nbytes`` for rbe layers and the stored parameters
for torch layers (4 per float32, 2 per float16, 1 per int8).

Every variant gets the same tuning: the learning rate is picked from a small sweep by accuracy
on a validation split (the last 20% of the training set, seed 0), then each seed trains on the
whole training set and is scored on the test set. Variants:

- ``dense``: the full-size MLP (budget 1/1);
- ``low-rank``: each hidden layer as Linear(in, r) -> Linear(r, out), float32;
- ``low-rank fp16``: the same with float16 factors (twice the rank for the bytes);
- ``narrower``: a dense MLP with fewer hidden units;
- ``int8``: dense layers with per-row int8 weights (straight-through rounding), ratio about 4;
- ``hybrid``: ``rbe`` hybrid layers trained from scratch (16 x 16 blocks, no basis, 3/4 of the
  bytes in a low-rank term, float16 storage, moving positions). The share was picked once from
  0.5 / 0.75 / 0.9 on the synthetic task's validation split (0.9 leaves no coefficient per
  block at 1/32);
- ``compressed``: the trained dense model compressed by ``rbe.torch.compress`` with the same
  settings, then fine-tuned;
- ``seed``: ``rbe`` seed-block layers with the smallest block that fits the budget.

Models with float16 storage are scored as stored (rbe layers after ``rbe.save``/``rbe.load``,
torch factors rounded to float16). Needs torch and scikit-learn.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from torch import nn

BLOCK = (16, 16)
LOW_RANK_SHARE = 0.75         # of a hybrid layer's bytes in its low-rank term
REGROW_EVERY = 100
REGROW_STOP = 0.75            # of the training steps: positions stop moving after it
BATCH = 64
VARIANTS = ("dense", "low-rank", "low-rank fp16", "narrower", "int8", "hybrid", "compressed",
            "seed")
PER_BUDGET = ("low-rank", "low-rank fp16", "narrower", "hybrid", "compressed", "seed")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    hidden: int
    epochs: int


TASKS = {"digits": Task("digits", 256, 40), "synthetic": Task("synthetic", 512, 20)}


def load_task(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, y_train, X_test, y_test) as float32 / int64 arrays."""
    if name == "digits":
        from .demo import load_data
        Xtr, ytr, Xte, yte = load_data(0)
    elif name == "synthetic":
        from sklearn.datasets import make_classification
        X, y = make_classification(n_samples=20000, n_features=256, n_informative=64,
                                   n_classes=10, n_clusters_per_class=2, random_state=0)
        cut = int(0.8 * len(X))
        mean, std = X[:cut].mean(axis=0), X[:cut].std(axis=0)
        X = (X - mean) / std
        Xtr, ytr, Xte, yte = X[:cut], y[:cut], X[cut:], y[cut:]
    else:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return (Xtr.astype(np.float32), ytr.astype(np.int64), Xte.astype(np.float32),
            yte.astype(np.int64))


# -- variants: the two hidden layers ----------------------------------------------------------

def _layer_budgets(sizes, ratio):
    """Bytes of each hidden layer (in, out) at dense float32 bytes / ratio."""
    return [int(4 * (i * o + o) / ratio) for i, o in sizes]


def _low_rank(sizes, ratio, bytes_per_value):
    """Linear(in, r) -> Linear(r, out) per layer, one rank r for both that fits their budget."""
    from torch import nn
    room = sum(_layer_budgets(sizes, ratio)) - 4 * sum(o for _, o in sizes)    # biases
    rank = room // (bytes_per_value * sum(i + o for i, o in sizes))
    if rank < 1:
        raise ValueError(f"ratio {ratio} leaves no rank for layers {sizes}")
    layers = [nn.Sequential(nn.Linear(i, rank, bias=False), nn.Linear(rank, o)) for i, o in sizes]
    for layer in layers:
        layer.stored_float16 = bytes_per_value == 2     # weights rounded in ``as_stored``
    return layers


def _hybrid_options(i, o, budget):
    """A hybrid layer (in i, out o) of ``budget`` bytes, LOW_RANK_SHARE of its weight bytes in
    float16 factors."""
    rank = int(LOW_RANK_SHARE * (budget - 4 * o)) // (2 * (i + o))
    return {"budget": budget, "basis": False, "rank": rank, "precision": "float16"}


def _int8_linear(i, o):
    """An nn.Linear whose forward uses its weight rounded to per-row int8 (straight-through)."""
    import torch
    from torch import nn

    class Int8Linear(nn.Linear):
        def forward(self, x):
            scale = self.weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
            rounded = torch.round(self.weight / scale) * scale
            weight = self.weight + (rounded - self.weight).detach()
            return nn.functional.linear(x, weight, self.bias)

    return Int8Linear(i, o)


def hidden_layers(variant: str, sizes: Sequence[tuple[int, int]], ratio: float, seed: int,
                  steps: int) -> list[nn.Module]:
    """The two hidden layers of ``variant`` for (in, out) ``sizes`` at dense bytes / ratio."""
    import torch
    from torch import nn

    from . import torch as rbe_torch
    torch.manual_seed(seed)
    if variant == "dense":
        return [nn.Linear(i, o) for i, o in sizes]
    if variant == "int8":
        return [_int8_linear(i, o) for i, o in sizes]
    if variant in ("low-rank", "low-rank fp16"):
        return _low_rank(sizes, ratio, 2 if variant.endswith("fp16") else 4)
    if variant == "hybrid":
        return [rbe_torch.RBELinear(i, o, block=BLOCK, transform="dct", seed=seed,
                                    regrow_every=REGROW_EVERY,
                                    regrow_stop=max(1, int(REGROW_STOP * steps)),
                                    **_hybrid_options(i, o, budget))
                for (i, o), budget in zip(sizes, _layer_budgets(sizes, ratio))]
    if variant == "seed":
        return [_seed_layer(i, o, budget, seed)
                for (i, o), budget in zip(sizes, _layer_budgets(sizes, ratio))]
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _seed_layer(i, o, budget, seed):
    from . import torch as rbe_torch
    for side in (8, 16, 32, 64):
        layer = rbe_torch.RBELinear(i, o, kind="fused", block=(side, side), seed=seed)
        if layer.layer.nbytes <= budget:
            return layer
    raise ValueError(f"no seed-block size fits {budget} bytes")


def narrower_width(n_in: int, hidden: int, ratio: float) -> int:
    """Largest width w whose two hidden layers fit the budget of the (n_in, hidden) pair."""
    budget = sum(_layer_budgets([(n_in, hidden), (hidden, hidden)], ratio))
    w = 1
    while 4 * (n_in * (w + 1) + (w + 1) + (w + 1) ** 2 + (w + 1)) <= budget:
        w += 1
    return w


def build_model(variant: str, task: Task, n_in: int, ratio: float, seed: int,
                steps: int) -> nn.Sequential:
    """The MLP of ``task`` with the hidden layers of ``variant``."""
    from torch import nn
    width = narrower_width(n_in, task.hidden, ratio) if variant == "narrower" else task.hidden
    sizes = [(n_in, width), (width, width)]
    hidden = hidden_layers("dense" if variant == "narrower" else variant, sizes, ratio, seed,
                           steps)
    return nn.Sequential(hidden[0], nn.ReLU(), hidden[1], nn.ReLU(), nn.Linear(width, 10))


def stored_bytes(layer: nn.Module) -> int:
    """Bytes of a hidden layer as stored."""
    from . import torch as rbe_torch
    if isinstance(layer, rbe_torch.RBELinear):
        return layer.layer.nbytes
    params = list(layer.parameters())
    if type(layer).__name__ == "Int8Linear":
        return layer.weight.numel() + 4 * layer.out_features + 4 * layer.bias.numel()
    per = 2 if getattr(layer, "stored_float16", False) else 4
    return sum(per * p.numel() if p.dim() == 2 else 4 * p.numel() for p in params)


# -- training ------------------------------------------------------------------------------------

def train(model: nn.Module, X: np.ndarray, y: np.ndarray, epochs: int, lr: float,
          seed: int) -> nn.Module:
    """Adam on cross-entropy, shuffled minibatches of BATCH."""
    import torch
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    X, y = torch.from_numpy(X), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=generator).split(BATCH):
            opt.zero_grad()
            loss_fn(model(X[idx]), y[idx]).backward()
            opt.step()
    return model


def as_stored(model: nn.Sequential) -> nn.Sequential:
    """The model as it would be stored: rbe layers through rbe.save / rbe.load, float16 torch
    factors rounded."""
    import torch

    from . import io
    from . import torch as rbe_torch
    with tempfile.TemporaryDirectory() as tmp:
        for name, module in list(model.named_modules()):
            if isinstance(module, rbe_torch.RBELinear):
                path = os.path.join(tmp, "layer.safetensors")
                io.save(path, module.layer)
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent), attr,
                        rbe_torch.RBELinear.from_layer(io.load(path)))
            elif getattr(module, "stored_float16", False):
                with torch.no_grad():
                    for p in module.parameters():
                        if p.dim() == 2:
                            p.copy_(p.half().float())
    return model


def accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    """Fraction of X whose predicted class is y."""
    import torch
    with torch.no_grad():
        return float((model(torch.from_numpy(X)).argmax(1).numpy() == y).mean())


@dataclasses.dataclass
class Result:
    task: str
    variant: str
    ratio: float
    lr: float
    accuracies: list[float]
    nbytes: int

    def cell(self) -> str:
        """Mean ± standard deviation of the accuracies, and the bytes."""
        acc = np.array(self.accuracies)
        return f"{acc.mean():.3f} ± {acc.std():.3f} ({self.nbytes} B)"


class Runner:
    """Runs variants on one task; dense models are trained once per (lr, seed) and reused by
    ``compressed``."""

    def __init__(self, task: Task, lrs: Iterable[float], seeds: Iterable[int]):
        self.task, self.lrs, self.seeds = task, tuple(lrs), tuple(seeds)
        self.data = load_task(task.name)
        cut = int(0.8 * len(self.data[0]))
        Xtr, ytr = self.data[:2]
        self.splits = {"validation": (Xtr[:cut], ytr[:cut], Xtr[cut:], ytr[cut:]),
                       "test": self.data}
        self._dense: dict = {}      # (seed, split) -> trained dense model
        self._lrs: dict = {}        # (variant, ratio) -> chosen learning rate

    def steps(self, n_train: int) -> int:
        """Optimiser steps of training on n_train examples."""
        return self.task.epochs * -(-n_train // BATCH)

    def _fit(self, variant, ratio, lr, seed, split):
        Xtr, ytr, Xte, yte = self.splits[split]
        steps = self.steps(len(Xtr))
        if variant == "compressed":
            model = self._compressed(ratio, seed, split)
        else:
            model = build_model(variant, self.task, Xtr.shape[1], ratio, seed, steps)
        train(model, Xtr, ytr, self.task.epochs, lr, seed)
        model = as_stored(model)
        return accuracy(model, Xte, yte), sum(stored_bytes(model[i]) for i in (0, 2))

    def _compressed(self, ratio, seed, split):
        import copy

        from . import torch as rbe_torch
        dense = copy.deepcopy(self._trained_dense(seed, split))
        for index in (0, 2):
            linear = dense[index]
            budget = _layer_budgets([(linear.in_features, linear.out_features)], ratio)[0]
            dense[index] = rbe_torch.compress(
                linear, block=BLOCK, transform="dct",
                **_hybrid_options(linear.in_features, linear.out_features, budget))
        return dense

    def _trained_dense(self, seed, split):
        if (seed, split) not in self._dense:
            Xtr, ytr = self.splits[split][:2]
            model = build_model("dense", self.task, Xtr.shape[1], 1.0, seed,
                                self.steps(len(Xtr)))
            lr = self.best_lr("dense", 1.0)
            self._dense[seed, split] = train(model, Xtr, ytr, self.task.epochs, lr, seed)
        return self._dense[seed, split]

    def best_lr(self, variant: str, ratio: float) -> float:
        """The learning rate of the sweep with the best validation accuracy (seed 0)."""
        if (variant, ratio) not in self._lrs:
            scores = [self._fit(variant, ratio, lr, self.seeds[0], "validation")[0]
                      for lr in self.lrs]
            self._lrs[variant, ratio] = self.lrs[int(np.argmax(scores))]
        return self._lrs[variant, ratio]

    def run(self, variant: str, ratio: float) -> Result:
        """Train and test ``variant`` at ``ratio`` with every seed, at its best learning rate."""
        lr = self.best_lr(variant, ratio)
        runs = [self._fit(variant, ratio, lr, seed, "test") for seed in self.seeds]
        return Result(self.task.name, variant, ratio, lr, [a for a, _ in runs], runs[0][1])


def run(tasks: Sequence[str] = ("digits", "synthetic"), ratios: Sequence[float] = (8, 32),
        seeds: Iterable[int] = (0, 1, 2), lrs: Iterable[float] = (1e-3, 3e-3, 1e-2),
        variants: Iterable[str] = VARIANTS, plot: str | None = None,
        log: Callable[[str], object] = print) -> list[Result]:
    """Run the benchmark; returns the Results and prints a table as it goes."""
    try:
        import sklearn  # noqa: F401
        import torch
    except ImportError:
        raise ImportError('the quality benchmark needs torch and scikit-learn: '
                          'pip install "rbe[torch,demo]"') from None
    from threadpoolctl import threadpool_limits
    results = []
    torch.set_num_threads(1)        # runs are small: one thread each, comparable timings
    with threadpool_limits(1):
        for name in tasks:
            runner = Runner(TASKS[name], lrs, seeds)
            for variant in variants:
                for ratio in (ratios if variant in PER_BUDGET else (1.0,)):
                    start = time.perf_counter()
                    try:
                        result = runner.run(variant, ratio)
                    except ValueError as exc:       # e.g. no seed-block size fits
                        log(f"{name:<10} {variant:<14} 1/{ratio:g}: skipped ({exc})")
                        continue
                    results.append(result)
                    log(f"{name:<10} {variant:<14} 1/{ratio:g}: {result.cell()}  "
                        f"lr {result.lr:g}  [{time.perf_counter() - start:.0f} s]")
    log("")
    log(table(results, tasks, ratios))
    if plot:
        _plot(results, plot)
    return results


def table(results: Sequence[Result], tasks: Iterable[str], ratios: Sequence[float]) -> str:
    """Markdown table: variants x (task, budget), accuracy mean ± std (bytes)."""
    columns = [(t, r) for t in tasks for r in ratios]
    lines = ["| variant | " + " | ".join(f"{t} 1/{r:g}" for t, r in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for variant in dict.fromkeys(r.variant for r in results):
        cells = []
        for task, ratio in columns:
            match = [r for r in results if r.variant == variant and r.task == task
                     and (r.ratio == ratio or r.variant not in PER_BUDGET)]
            cells.append(match[0].cell() if match else "—")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    tasks = list(dict.fromkeys(r.task for r in results))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for variant in dict.fromkeys(r.variant for r in results):
            points = sorted((r.nbytes, np.mean(r.accuracies), np.std(r.accuracies))
                            for r in results if r.task == task and r.variant == variant)
            if points:
                x, y, e = zip(*points)
                ax.errorbar(x, y, yerr=e, marker="o", label=variant)
        ax.set_xscale("log")
        ax.set_xlabel("bytes of the two hidden layers")
        ax.set_ylabel("test accuracy")
        ax.set_title(task)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
