"""Serving speed of rbe layers against torch float32 and int8 dynamic quantisation.

Run with rbe importable (installed, or built in place and run from the repository root); needs
torch:

    python benchmarks/bench_serving.py [--quick] [--threads N] [--rounds N]

The same as ``rbe bench --serving``; what is measured and how is described in ``rbe.serving``
(every contender in its own process; single layers at 4096^2 and 8192^2, one vector and a
batch of 64; a 6-layer model at batch 1 and 32 alone, right after a numpy sgemm and from four
Python threads; p50 and p99 over 200 calls).
"""
from __future__ import annotations

import argparse

from rbe import serving


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="4096^2 only and 50 calls per setting (about a minute)")
    parser.add_argument("--threads", type=int,
                        help="every contender's thread count (torch, rbe, BLAS) instead of the "
                             "defaults; 1 compares the kernels on a machine busy with other work")
    parser.add_argument("--rounds", type=int,
                        help="turns of the contenders, medians reported (default 3, 1 with "
                             "--quick)")
    args = parser.parse_args()
    serving.run(quick=args.quick, threads=args.threads, rounds=args.rounds)


if __name__ == "__main__":
    main()
