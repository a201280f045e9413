"""The training scenarios of the original's tests (docs/design.md, "Test scenarios"), with
its rule and with ours.

Each scenario fits one seed to a target pattern (one block covering the whole matrix):

- **original**: the sequential rule of :mod:`rbe.reference` (``fused_backward`` or
  ``fused_backward_fast``: per-element state transitions, a mean-gradient step, the original's
  4-state function and seed layout), at the scenario's learning rates; the best final RMSE is
  kept, which favours the original.
- **ours**: a :class:`rbe.FusedLinear` of one block fed the identity matrix, so its output is
  ``W_eff^T``; MSE loss, one fused backward per epoch (with the state transitions of
  docs/design.md) and :class:`rbe.optim.Adam`. It starts from the same seed (r, theta, states
  mapped 0,1,2,3 -> 0,1,2,4, detail rescaled to 8 bits). ``affine=False`` trains the seed
  alone (alpha = 1, beta = 0, as the original's model); ``affine=True`` trains the whole
  layer.

Run ``python -m rbe.scenarios`` to print the comparison table.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from . import optim, reference
from . import seeds as seeds_mod
from .fused import FusedLinear


class Scenario(NamedTuple):
    pattern: str
    size: int
    epochs: int             #: epochs of the original
    rates: tuple            #: the original's learning rates (the best is reported)
    analytic: bool          #: fused_backward_fast (analytic) instead of fused_backward
    r: float
    theta: float
    state_bits: int | None  #: the original's hi; None draws 20 random bits from the seed


SCENARIOS = {
    # test_simple_learning with the README's seed
    "ramp": Scenario("ramp", 8, 50, (0.1,), False, 0.5, 0.0, 0x0a93d9),
    # the 64 x 64 version of the large-matrix test that the README's RMSE 0.050 comes from
    "gravity": Scenario("gravity", 64, 25_000, (0.001,), False, 0.8, 0.1, None),
    # the convergence test's patterns, first initial point, its whole learning-rate grid
    **{name: Scenario(name, 32, 500, (0.001, 0.01, 0.05, 0.1), True, 0.5, 0.0, None)
       for name in ("C1", "C2", "C3", "C4")},
}


def rmse(prediction: ArrayLike, target: ArrayLike) -> float:
    """Root-mean-square difference, in float64."""
    return float(np.sqrt(np.mean((np.asarray(prediction, np.float64) - target) ** 2)))


def original_seed(sc: Scenario, seed: int = 0) -> np.ndarray:
    """The scenario's starting seed in the original layout."""
    bits = sc.state_bits
    if bits is None:
        bits = int(np.random.default_rng(seed).integers(0, 1 << 20))
    return reference.make_seed(sc.r, sc.theta, bits)


def to_ours(original: np.ndarray) -> np.ndarray:
    """The same starting point in our layout (docs/design.md, "Seed format"): r, theta,
    states, detail."""
    hi = int(original["hi"])
    r, theta = (float(v) for v in reference.r_theta(original))
    sel = [(0, 1, 2, 4)[(hi >> (2 * c)) & 3] for c in range(seeds_mod.N_CLASSES)]
    detail = round(((hi >> 8) & 0xFFF) / 4095 * 255)
    return seeds_mod.pack(r, theta, sel, detail)


def train_original(sc: Scenario, lr: float, seed: int = 0) -> list:
    """RMSE before every epoch of the original rule, then after the last one."""
    target = reference.pattern(sc.pattern, sc.size, sc.size)
    state = original_seed(sc, seed)
    step = reference.fused_backward_fast if sc.analytic else reference.fused_backward
    history = []
    for _ in range(sc.epochs):
        prediction = reference.generate(state, target.shape)
        history.append(rmse(prediction, target))
        step(target, prediction, state, lr)
    history.append(rmse(reference.generate(state, target.shape), target))
    return history


def train_fused(sc: Scenario, epochs: int, lr: float = 0.05, tau: float = 0.01,
                affine: bool = True, seed: int = 0) -> list:
    """RMSE before every epoch of ours (FusedLinear + Adam), then after the last one."""
    target = reference.pattern(sc.pattern, sc.size, sc.size).T   # forward(I) = W_eff^T
    # The original's model (W = alpha W_seed + beta, alpha = 1, beta = 0 to start) with the
    # state transitions decided every step.
    layer = FusedLinear(sc.size, sc.size, block=(sc.size, sc.size), bias=False, tau=tau,
                        center=False, block_scale=False, transition_every=1, max_moves=1.0)
    layer.seeds = to_ours(original_seed(sc, seed)).reshape(1, 1)
    layer.alpha, layer.beta = 1.0, 0.0
    adam = optim.Adam(layer, lr=lr)
    X = np.eye(sc.size, dtype=np.float32)
    history = []
    for _ in range(epochs):
        Y = layer.forward(X)
        history.append(rmse(Y, target))
        layer.backward(X, (2.0 / Y.size) * (Y - target))
        if not affine:                    # the seed alone: keep alpha = 1, beta = 0
            del layer.grads["alpha"], layer.grads["beta"]
        adam.step()
    history.append(rmse(layer.forward(X), target))
    return history


def first_epoch_reaching(history: list, level: float) -> int | None:
    """The first epoch whose RMSE is <= level (len(history) - 1 = after the last epoch)."""
    return next((e for e, v in enumerate(history) if v <= level), None)


def compare(name: str, fused_epochs: int | None = None, seed: int = 0) -> dict:
    """Both rules on one scenario: final RMSEs, epochs, and the all-zero predictor's RMSE."""
    sc = SCENARIOS[name]
    target = reference.pattern(sc.pattern, sc.size, sc.size)
    finals = {lr: train_original(sc, lr, seed)[-1] for lr in sc.rates}
    best_lr = min(finals, key=finals.get)
    epochs = fused_epochs or sc.epochs
    row = {"scenario": name, "size": sc.size, "original_epochs": sc.epochs,
           "original_lr": best_lr, "original": finals[best_lr], "fused_epochs": epochs,
           "zero": rmse(np.zeros_like(target), target)}
    for key, affine in (("fused", True), ("fused_seed_only", False)):
        history = train_fused(sc, epochs, affine=affine, seed=seed)
        row[key] = history[-1]
        row[key + "_reaches_original_at"] = first_epoch_reaching(history, row["original"])
    return row


#: Epochs of ours where it differs from the original's (at most the original's).
FUSED_EPOCHS = {"gravity": 2000}


def main() -> None:
    header = ("scenario", "size", "all-zero RMSE", "original RMSE (epochs, lr)", "ours (epochs)",
              "ours reaches original at epoch", "ours, seed only", "seed only reaches at")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in SCENARIOS:
        r = compare(name, FUSED_EPOCHS.get(name))
        print("| " + " | ".join([
            name, f"{r['size']}x{r['size']}", f"{r['zero']:.4f}",
            f"{r['original']:.4f} ({r['original_epochs']}, {r['original_lr']})",
            f"{r['fused']:.4f} ({r['fused_epochs']})", str(r["fused_reaches_original_at"]),
            f"{r['fused_seed_only']:.4f}", str(r["fused_seed_only_reaches_original_at"])]) + " |")


if __name__ == "__main__":
    main()
