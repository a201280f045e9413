"""Seed blocks trained from scratch: test accuracy of an MLP whose hidden layers are default
``rbe.torch.RBELinear(kind="fused")`` layers, with the state transitions on and off, against
a low-rank layer of the same bytes.

    python benchmarks/bench_seed_learning.py                          # digits, 16 x 16 blocks
    python benchmarks/bench_seed_learning.py --tasks digits synthetic --blocks 8 16

Tasks: scikit-learn's digits (``rbe.demo.load_data(0)``, MLP 64-256-256-10, 40 epochs) and a
synthetic one (``make_classification``: 20000 samples, 256 features of which 64 informative,
10 classes, 2 clusters per class, 80/20 split, standardised; MLP 256-512-512-10, 20 epochs).
The 10-class head is a dense ``nn.Linear``; batch 64; bytes are those of the two hidden layers
(``layer.nbytes``; 4 per parameter for the low-rank ``U V^T + b`` layers).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

import rbe.torch
from rbe.quality import TASKS, load_task

WIDTHS = {"digits": (64, 256, 256, 10), "synthetic": (256, 512, 512, 10)}


class LowRank(nn.Module):
    """x -> U (V x) + b: a rank-r linear layer."""

    def __init__(self, n_in: int, n_out: int, rank: int):
        super().__init__()
        self.V = nn.Linear(n_in, rank, bias=False)
        self.U = nn.Linear(rank, n_out)

    def forward(self, x):
        return self.U(self.V(x))

    @property
    def nbytes(self) -> int:
        return 4 * sum(p.numel() for p in self.parameters())


def seed_layers(widths, block, transitions: bool, seed: int):
    layers = [rbe.torch.RBELinear(i, o, kind="fused", block=(block, block), seed=seed + n)
              for n, (i, o) in enumerate(zip(widths[:2], widths[1:3]))]
    if not transitions:
        for layer in layers:
            layer.layer.transition_every = 0
    return layers


def low_rank_layers(widths, nbytes: int):
    """The largest rank whose two layers fit in nbytes."""
    pairs = list(zip(widths[:2], widths[1:3]))
    rank = max(1, (nbytes // 4 - sum(o for _, o in pairs)) // sum(i + o for i, o in pairs))
    return [LowRank(i, o, rank) for i, o in pairs]


def train(data, widths, hidden, epochs: int, lr: float, optimizer: str, seed: int) -> float:
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(seed)
    model = nn.Sequential(hidden[0], nn.ReLU(), hidden[1], nn.ReLU(),
                          nn.Linear(widths[2], widths[3]))
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    X, y = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=order)
        for start in range(0, len(X), 64):
            idx = perm[start:start + 64]
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((model(torch.from_numpy(Xte)).argmax(1).numpy() == yte).mean())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["digits"], choices=sorted(TASKS))
    p.add_argument("--blocks", nargs="+", type=int, default=[16])
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-3, 1e-2])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam",
                   help="torch Adam, or SGD with momentum 0.9")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{'task':<10} {'variant':<34} {'lr':>7} {'accuracy per seed':<24} {'mean':>6} "
          f"{'bytes':>8}")
    for task in args.tasks:
        data, widths, epochs = load_task(task), WIDTHS[task], TASKS[task].epochs
        for block in args.blocks:
            for lr in args.lrs:
                nbytes = None
                for transitions in (True, False):
                    accs = []
                    for seed in args.seeds:
                        hidden = seed_layers(widths, block, transitions, 10 * seed)
                        nbytes = sum(m.layer.nbytes for m in hidden)
                        accs.append(train(data, widths, hidden, epochs, lr, args.optimizer,
                                          seed))
                    name = f"seed {block}x{block}, transitions {'on' if transitions else 'off'}"
                    _row(task, name, lr, accs, nbytes)
                accs = []
                for seed in args.seeds:
                    torch.manual_seed(seed)
                    hidden = low_rank_layers(widths, nbytes)
                    accs.append(train(data, widths, hidden, epochs, lr, args.optimizer, seed))
                _row(task, f"low-rank {hidden[0].V.out_features}, same bytes", lr, accs,
                     sum(m.nbytes for m in hidden))


def _row(task, name, lr, accs, nbytes) -> None:
    per_seed = " ".join(f"{a:.3f}" for a in accs)
    print(f"{task:<10} {name:<34} {lr:>7.0e} {per_seed:<24} {np.mean(accs):>6.3f} {nbytes:>8,d}",
          flush=True)


if __name__ == "__main__":
    main()
