"""FusedLinear speed: against dense BLAS and against the original algorithm.

One run; every comparison runs its contenders interleaved (round-robin) and reports medians,
so load from other processes hits all of them alike. Each sample is the mean of back-to-back
calls that follow untimed calls of the same case (steady state, as in a loop of calls; see
timing.py: otherwise a case pays for waking the cores and thread pools that the previous,
serial or BLAS, case left idle). Ratios are "times faster than the baseline" (baseline time /
FusedLinear time): above 1, FusedLinear is faster.

- forward GEMV (``W @ x``) and batch-64 forward (``X @ W.T``) against numpy on ``to_dense()``,
  plus the batch-64 backward against the dense layer's backward (``dY @ W`` and ``dY.T @ X``),
  at 4096^2 and 8192^2 with 64 x 64 blocks;
- forward and backward against the original algorithm (``rbe.reference.FusedLayer``: scalar C,
  one function call per weight) at 1024^2, 64 x 64 blocks: one vector, and per vector of a
  batch of 64 (the original has no batch form: it takes one vector per call);
- each with 1 and 2 threads (the kernels' OpenMP threads and numpy's BLAS threads alike);
- a profile of the GEMV inner loop: nanoseconds per weight with every class of every block in
  one state (1 thread, 4096^2), which shows where the time goes.

Usage (repository root, after the in-place build):
``PYTHONPATH=. python benchmarks/bench_fused.py [--repeats N] [--sizes 4096 8192]``
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import rbe
from rbe import optim, reference
from rbe.fused import FusedLinear
from rbe.seeds import with_states
from timing import interleaved_medians


def report(title: str, t: dict, pairs: list) -> None:
    """Print times and, for each (ours, baseline), the ratio baseline / ours."""
    print(f"  {title}")
    for ours, base in pairs:
        print(f"    {ours:<28} {t[ours] * 1e3:10.3f} ms   {base:<30} {t[base] * 1e3:10.3f} ms"
              f"   ratio {t[base] / t[ours]:8.2f}x")


def vs_dense(n: int, threads: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    layer = FusedLinear(n, n, seed=0, bias=False)
    W = layer.to_dense()
    x = rng.standard_normal(n, dtype=np.float32)
    X = rng.standard_normal((64, n), dtype=np.float32)
    dY = rng.standard_normal((64, n), dtype=np.float32)
    cases = {
        "fused GEMV": lambda: layer.forward(x),
        "dense W @ x": lambda: W @ x,
        "fused forward b64": lambda: layer.forward(X),
        "dense X @ W.T": lambda: X @ W.T,
        "fused backward b64": lambda: layer.backward(X, dY),
        "dense dY @ W, dY.T @ X": lambda: (dY @ W, dY.T @ X),
    }
    t = interleaved_medians(cases, repeats, steady=True)
    report(f"{n} x {n}, 64 x 64 blocks, {threads} thread(s)", t,
           [("fused GEMV", "dense W @ x"), ("fused forward b64", "dense X @ W.T"),
            ("fused backward b64", "dense dY @ W, dY.T @ X")])


def original_layer(n: int, rng) -> reference.FusedLayer:
    grid = (n // 64, n // 64)
    seeds = reference.make_seed(rng.uniform(0.2, 0.9, grid), rng.uniform(-0.1, 0.4, grid),
                                rng.integers(0, 1 << 20, grid))
    return reference.FusedLayer(seeds, (64, 64), (n, n))


def vs_original(n: int, threads: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    original = original_layer(n, rng)
    layer = FusedLinear(n, n, seed=0, bias=False)
    trained = FusedLinear(n, n, seed=0, bias=False)   # its states change: kept apart
    adam = optim.Adam(trained, lr=1e-3)
    x, dy = rng.standard_normal(n), rng.standard_normal(n)
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
    X = rng.standard_normal((64, n), dtype=np.float32)
    dY = rng.standard_normal((64, n), dtype=np.float32)

    def fused_step():
        trained.backward(x32, dy32)
        adam.step()

    cases = {
        "fused forward": lambda: layer.forward(x32),
        "original forward_precise": lambda: original.forward_precise(x),
        "fused backward": lambda: layer.backward(x32, dy32),
        "original backward_precise": lambda: original.backward_precise(x, dy, 1e-3),
        "fused backward + Adam step": fused_step,
        "original backward_adam": lambda: original.backward_adam(x, dy, 1, 1e-3),
        "fused forward b64": lambda: layer.forward(X),
        "fused backward b64": lambda: layer.backward(X, dY),
    }
    t = interleaved_medians(cases, repeats, steady=True)
    report(f"{n} x {n}, 64 x 64 blocks, one vector, {threads} thread(s)", t,
           [("fused forward", "original forward_precise"),
            ("fused backward", "original backward_precise"),
            ("fused backward + Adam step", "original backward_adam")])
    per_vector = {"fused forward, b64 / 64": t["fused forward b64"] / 64,
                  "fused backward, b64 / 64": t["fused backward b64"] / 64}
    report(f"{n} x {n}, per vector of a batch of 64, {threads} thread(s)", {**t, **per_vector},
           [("fused forward, b64 / 64", "original forward_precise"),
            ("fused backward, b64 / 64", "original backward_precise")])


def gemv_profile(n: int, repeats: int) -> None:
    """GEMV time per weight with all position classes in one state, for each state."""
    layer = FusedLinear(n, n, seed=0, bias=False)
    x = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    mixed = layer.seeds.copy()
    cases = {"random states": lambda: layer.forward(x)}

    def in_state(state):
        def run():
            layer.seeds["hi"] = with_states(mixed["hi"], np.full(mixed.shape + (4,), state))
            layer.forward(x)        # the first call after new states derives the block means
            start = time.perf_counter()
            layer.forward(x)
            elapsed = time.perf_counter() - start
            layer.seeds = mixed
            return elapsed
        return run

    t = interleaved_medians(cases, repeats)
    rows = [("random states", t["random states"])]
    for state in range(8):
        timed = in_state(state)
        rows.append((f"state {state}", float(np.median([timed() for _ in range(repeats)]))))
    print(f"\nGEMV inner loop, {n} x {n}, 1 thread: ns per weight (all classes in one state)")
    for name, seconds in rows:
        print(f"    {name:<16} {seconds / n**2 * 1e9:6.3f} ns/weight  ({seconds * 1e3:7.3f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--original-size", type=int, default=1024)
    args = parser.parse_args()
    info = rbe.kernel_info()
    print(f"rbe {rbe.__version__}: simd {info['simd']}, approx {info['approx']}, "
          f"OpenMP {info['openmp']}; medians of {args.repeats} interleaved repeats")
    for threads in (1, 2):
        rbe.set_num_threads(threads)
        with threadpool_limits(threads, user_api="blas"):
            print(f"\nFusedLinear vs dense numpy (float32), {threads} thread(s)")
            for n in args.sizes:
                vs_dense(n, threads, args.repeats)
            print(f"\nFusedLinear vs the original algorithm, {threads} thread(s)")
            vs_original(args.original_size, threads, args.repeats)
    rbe.set_num_threads(1)
    gemv_profile(args.sizes[0], args.repeats)


if __name__ == "__main__":
    main()
