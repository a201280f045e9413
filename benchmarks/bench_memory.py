"""Peak memory of a seed-block layer whose rows are far wider than a forward's workspace.

Builds ``FusedLinear(in_features, out_features, block)`` (default 1,048,576 inputs, 4096 outputs,
4096 x 4096 blocks) and runs a forward of one vector and of a batch (default 3), each setting in
a fresh child process, and prints the child's peak resident set (``getrusage``) after import,
after building the layer and after the forward, next to the sizes the product itself needs
(inputs, outputs, the block's tables). With ``--limit-gib G`` the child runs under an
address-space limit of G GiB (``RLIMIT_AS``), so a build that asks for more fails with
MemoryError instead of taking the machine's memory.

    python benchmarks/bench_memory.py [--in-features N] [--out-features M] [--block H W]
                                      [--batch B] [--limit-gib G]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MIB = 1 << 20


def peak_mib() -> float:
    """This process's peak resident set so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (MIB if sys.platform == "darwin" else 1024)


def child(args) -> None:
    """One setting: build the layer, run one forward, report the peaks as JSON."""
    if args.limit_gib:
        limit = int(args.limit_gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np

    import rbe
    report = {"import": peak_mib()}
    start = time.perf_counter()
    try:
        layer = rbe.FusedLinear(args.in_features, args.out_features, block=tuple(args.block),
                                seed=0)
        report["build"], report["build_s"] = peak_mib(), time.perf_counter() - start
        shape = (args.in_features,) if args.batch == 1 else (args.batch, args.in_features)
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        start = time.perf_counter()
        y = layer.forward(x)
        report["forward"], report["forward_s"] = peak_mib(), time.perf_counter() - start
        report["finite"] = bool(np.isfinite(y).all())
    except MemoryError as exc:
        report["error"] = f"MemoryError: {exc}"
    print(json.dumps(report))


def run(args, batch: int) -> dict:
    command = [sys.executable, __file__, "--child", "--batch", str(batch),
               "--in-features", str(args.in_features), "--out-features", str(args.out_features),
               "--block", *map(str, args.block), "--limit-gib", str(args.limit_gib)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    report = json.loads(out) if process.returncode == 0 else {"error": f"exit {status}"}
    report["peak"] = usage.ru_maxrss / (MIB if sys.platform == "darwin" else 1024)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-features", type=int, default=1 << 20)
    parser.add_argument("--out-features", type=int, default=4096)
    parser.add_argument("--block", type=int, nargs=2, default=[4096, 4096])
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--limit-gib", type=float, default=0.0,
                        help="address-space limit of each child (0: none)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    h, w = args.block
    print(f"FusedLinear({args.in_features}, {args.out_features}, block=({h}, {w})), float32; "
          f"inputs of a batch of {args.batch}: {4 * args.batch * args.in_features / MIB:.0f} MiB, "
          f"the block's tables: {12 * h * w / MIB:.0f} MiB")
    for batch in (1, args.batch):
        r = run(args, batch)
        if "error" in r:
            print(f"  batch {batch}: {r['error']}; peak {r['peak']:.0f} MiB")
            continue
        print(f"  batch {batch}: peak resident MiB: after import {r['import']:.0f}, after "
              f"building {r['build']:.0f} ({r['build_s']:.1f} s), after the forward "
              f"{r['forward']:.0f} ({r['forward_s']:.1f} s); result finite: {r['finite']}")


if __name__ == "__main__":
    main()
