"""Benchmark of rbe.torch.RBELinear against torch.nn.Linear: a 1024 x 1024 layer.

Run from the repository root after building in place (needs PyTorch):

    python benchmarks/bench_torch.py [--batch 32] [--rounds 15] [--threads N]

Every case runs once per round, in turn, and the median over rounds is reported (see
timing.py). "forward" runs under ``torch.no_grad()``; "module's own" is its time minus
the rbe layer's forward on the same input; "train step" is forward, backward of the sum and
nothing else. ``--threads`` sets both torch's and rbe's thread counts.
"""
from __future__ import annotations

import argparse

import torch

import rbe
import rbe.torch as rt
from rbe._tables import print_table
from timing import interleaved_medians

SIZE = 1024


def contenders() -> dict:
    """nn.Linear and the RBELinear kinds of the same size."""
    torch.manual_seed(0)
    return {"nn.Linear": torch.nn.Linear(SIZE, SIZE),
            "RBELinear hybrid (k=64, dct)": rt.RBELinear(SIZE, SIZE, kind="hybrid", seed=0),
            "RBELinear hybrid, compress()ed": rt.compress(torch.nn.Linear(SIZE, SIZE),
                                                          block=(64, 64), k=64, basis=True,
                                                          precision="float32"),
            "RBELinear fused (seed blocks)": rt.RBELinear(SIZE, SIZE, kind="fused", seed=0)}


def train_step(module, x):
    module(x).sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        rbe.set_num_threads(args.threads)
    modules = contenders()
    x = torch.randn(args.batch, SIZE)
    x_grad = x.clone().requires_grad_()
    layers = {n: m._layer for n, m in modules.items() if isinstance(m, rt.RBELinear)}
    cases = {n: (lambda m=m: m(x)) for n, m in modules.items()}
    # the rbe layer's own forward: the module adds the rest
    cases.update({(n, "layer"): (lambda layer=layer: layer.forward(x.numpy()))
                  for n, layer in layers.items()})
    with torch.no_grad():
        forward = interleaved_medians(cases, rounds=args.rounds)
    step = interleaved_medians({n: (lambda m=m: train_step(m, x_grad))
                                for n, m in modules.items()}, rounds=args.rounds)
    base_forward, base_step = forward["nn.Linear"], step["nn.Linear"]
    print(f"{SIZE} x {SIZE} layer, batch {args.batch}; threads: torch {torch.get_num_threads()}, "
          f"rbe {rbe.get_num_threads()}; median of {args.rounds} interleaved rounds")
    rows = []
    for name in modules:
        layer = layers.get(name)
        ratio = layer.compression_ratio if layer is not None else 1.0
        added = "" if layer is None else f"{(forward[name] - forward[name, 'layer']) * 1e6:.0f}"
        rows.append((name, f"{ratio:.0f}", f"{forward[name] * 1e3:.3f}",
                     f"{forward[name] / base_forward:.2f}", added, f"{step[name] * 1e3:.3f}",
                     f"{step[name] / base_step:.2f}"))
    print_table(("module", "compression", "forward ms", "vs nn.Linear",
                 "module's own us", "train step ms", "vs nn.Linear"), rows)


if __name__ == "__main__":
    main()
