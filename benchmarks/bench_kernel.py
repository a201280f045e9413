"""Weight-generation rate of the seed-block kernel against the original algorithm.

Generates the weights of N seeds of 64 x 64 (default 2048) with:
  - the original algorithm (rbe.reference.generate: scalar C, one call per weight, serial),
  - precise mode (float64, libm, all threads),
  - fast mode for every approximation family x SIMD path (all threads),
  - the default fast path on seeds with theta >= 0: random seeds have b = 0 (all-zero weights,
    skipped) on a quarter of their blocks and in parts of others, these on none,
timed in interleaved rounds (median), and prints G weights/s and the ratio to the original.

    python benchmarks/bench_kernel.py [--seeds 2048] [--rounds 7] [--threads N]
"""
from __future__ import annotations

import argparse

import numpy as np

import rbe
from rbe import kernel
from rbe._tables import print_table
from timing import interleaved_medians

SHAPE = (64, 64)


def fast_case(packed, out, simd, approx):
    def run():
        with kernel.use_simd(simd):
            rbe.generate(packed, SHAPE, approx=approx, out=out)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="0: OpenMP default")
    args = parser.parse_args()
    rbe.set_num_threads(args.threads)

    packed = rbe.seeds.random(args.seeds, rng=0)
    original = rbe.reference.from_packed128(packed)
    out = kernel.empty_aligned((args.seeds,) + SHAPE)
    cases = {
        "original (reference C, serial)": lambda: rbe.reference.generate(original, SHAPE),
        "precise (float64 libm)": lambda: rbe.generate(packed, SHAPE, mode="precise"),
    }
    for simd in kernel.simd_paths():
        for approx in kernel.APPROX_FAMILIES:
            cases[f"fast {simd} {approx}"] = fast_case(packed, out, simd, approx)
    f = rbe.seeds.unpack(packed)
    nonnegative = rbe.seeds.pack(f.r, np.abs(f.theta), f.sel, f.detail)
    default = f"fast {kernel.current_simd()} {kernel.default_approx()}"
    cases[default + ", theta >= 0"] = fast_case(nonnegative, out, kernel.current_simd(), None)
    medians = interleaved_medians(cases, rounds=args.rounds)

    weights = args.seeds * SHAPE[0] * SHAPE[1]
    base = medians["original (reference C, serial)"]
    info = rbe.kernel_info()
    print(f"{args.seeds} seeds of {SHAPE[0]}x{SHAPE[1]}, {info['threads']} thread(s), "
          f"OpenMP {info['openmp']}, default {info['simd']} {info['approx']}; "
          f"median of {args.rounds} interleaved rounds")
    rows = [(name, f"{t * 1e3:.2f}", f"{weights / t / 1e9:.3f}", f"{base / t:.1f}x")
            for name, t in medians.items()]
    print_table(("case", "ms", "G weights/s", "vs original"), rows)
    print(f"default ({default}) vs original: {base / medians[default]:.1f}x on random seeds, "
          f"{base / medians[default + ', theta >= 0']:.1f}x on seeds with theta >= 0")


if __name__ == "__main__":
    main()
