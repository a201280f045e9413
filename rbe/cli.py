"""The ``rbe`` command line (also ``python -m rbe``)."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _best_time(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def demo(args: argparse.Namespace) -> int:
    """Generate seed blocks: accuracy of the fast kernel and its speed against the original."""
    import rbe

    info = rbe.kernel_info()
    print(f"rbe {rbe.__version__}: simd={info['simd']} approx={info['approx']} "
          f"openmp={info['openmp']} threads={info['threads']}")
    packed = rbe.seeds.random(args.seeds, rng=0)
    shape = (64, 64)
    precise = rbe.generate(packed, shape, mode="precise")
    print(f"{args.seeds} seeds of 64x64 = {packed.nbytes} bytes of seeds for "
          f"{precise.size * 4} bytes of float32 weights ({precise.size * 4 // packed.nbytes}x)")
    print("approximation  max |fast - precise|")
    for approx in rbe.kernel.APPROX_FAMILIES:
        err = np.abs(rbe.generate(packed, shape, approx=approx) - precise).max()
        print(f"{approx:<13}  {err:.2e}")
    out = np.empty_like(precise, dtype=np.float32)
    fast = _best_time(lambda: rbe.generate(packed, shape, out=out))
    sample = packed[: max(1, args.seeds // 8)]
    original = rbe.reference.from_packed128(sample)
    slow = _best_time(lambda: rbe.reference.generate(original, shape), repeats=2)
    slow *= len(packed) / len(sample)
    rate = precise.size / fast / 1e9
    print(f"fast kernel: {rate:.2f} G weights/s, {slow / fast:.0f}x the original algorithm")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rbe", description="Compressed weight blocks.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help=demo.__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2048, help="number of 64x64 blocks")
    p.set_defaults(run=demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as exc:
        print(f"rbe {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
