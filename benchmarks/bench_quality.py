"""Accuracy per byte of rbe layers against low-rank, narrower and int8 dense layers.

Run with rbe importable (installed, or built in place and on PYTHONPATH); needs torch and
scikit-learn, matplotlib for the plot:

    python benchmarks/bench_quality.py [--tasks digits synthetic] [--runs 3]

The same as ``rbe bench --quality``; what is compared and how is described in ``rbe.quality``.
"""
from __future__ import annotations

import argparse

from rbe import quality


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(quality.TASKS),
                        choices=list(quality.TASKS))
    parser.add_argument("--ratios", nargs="+", type=float, default=[8, 32])
    parser.add_argument("--runs", type=int, default=3, help="seeds per variant")
    parser.add_argument("--variants", nargs="+", default=list(quality.VARIANTS),
                        choices=list(quality.VARIANTS))
    parser.add_argument("--plot", default="bench_quality.png", help="'' for none")
    args = parser.parse_args()
    quality.run(tasks=args.tasks, ratios=args.ratios, seeds=range(args.runs),
                variants=args.variants, plot=args.plot or None)


if __name__ == "__main__":
    main()
