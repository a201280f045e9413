"""The ``rbe`` command line (also ``python -m rbe``)."""
from __future__ import annotations

import argparse
import sys
import time
import zipfile
import zlib
from collections.abc import Sequence

import numpy as np

_MAX_MESSAGE = 1000      # an error about a hostile file stays one readable line


def _best_time(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def demo(args: argparse.Namespace) -> int:
    """Train a digits classifier with dense, seed-block and hybrid-block layers (offline)."""
    import rbe
    from rbe import demo as digits

    info = rbe.kernel_info()
    print(f"rbe {rbe.__version__}: simd={info['simd']} approx={info['approx']} "
          f"openmp={info['openmp']} threads={info['threads']}")
    digits.run(epochs=args.epochs, seed=args.seed, plot=args.plot or None)
    return 0


def bench(args: argparse.Namespace) -> int:
    """Headline speed ratios on this machine (see benchmarks/ for the full scripts)."""
    import rbe

    if args.quality:
        from rbe import quality
        quality.run(tasks=args.tasks, seeds=range(args.runs), plot=args.plot or None)
        return 0
    if args.serving:
        from rbe import serving
        serving.run(quick=args.quick, threads=args.threads, rounds=args.rounds)
        return 0
    if args.real_model:
        from rbe import real_model
        real_model.run(calibration=args.calibration_sentences)
        return 0

    rng = np.random.default_rng(0)
    packed = rbe.seeds.random(args.seeds, rng=0)
    out = rbe.kernel.empty_aligned((args.seeds, 64, 64))
    fast = _best_time(lambda: rbe.generate(packed, (64, 64), out=out))
    sample = rbe.reference.from_packed128(packed[: max(1, args.seeds // 16)])
    slow = _best_time(lambda: rbe.reference.generate(sample, (64, 64)), repeats=2)
    slow *= args.seeds / len(sample)
    n = args.size
    x = rng.standard_normal(n).astype(np.float32)
    fused = rbe.FusedLinear(n, n, bias=False, seed=0)
    hybrid = rbe.HybridLinear.from_dense(rng.standard_normal((n, n)).astype(np.float32), k=64)
    dense = fused.to_dense()
    t_dense = _best_time(lambda: dense @ x, repeats=20)
    rows = [
        ("seed-block weight generation vs the original algorithm", slow / fast),
        (f"FusedLinear GEMV {n}x{n} vs dense float32 BLAS",
         t_dense / _best_time(lambda: fused.forward(x), repeats=20)),
        (f"HybridLinear GEMV {n}x{n} (k=64) vs dense float32 BLAS",
         t_dense / _best_time(lambda: hybrid.forward(x), repeats=20)),
    ]
    info = rbe.kernel_info()
    print(f"simd={info['simd']} approx={info['approx']} threads={info['threads']}; "
          "ratio > 1: rbe is faster")
    for name, ratio in rows:
        print(f"{name:<58} {ratio:8.3g}x")      # significant digits: a ratio never shows as 0
    return 0


def printable(text: str) -> str:
    """text with control, format and unpaired surrogate characters escaped (names and messages
    from a file must not reach the terminal as escape sequences or line breaks)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace")
                   .decode("ascii") for c in text)


def _read_tensors(path: str) -> dict:
    """Dense tensors of a .safetensors or .npz file, as numpy arrays."""
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as f:
                return {name: f[name] for name in f.files}
        except (zipfile.BadZipFile, zlib.error, EOFError, KeyError) as exc:
            raise ValueError(f"{path}: not a valid .npz file ({exc})") from None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return load_file(path)
    except (SafetensorError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid safetensors file ({exc})") from None


def _bias_name(weight: str, tensors: dict):
    """The bias stored with a weight "x.weight": "x.bias", if it is a vector of its rows."""
    name = weight[: -len("weight")] + "bias" if weight.endswith(".weight") else None
    bias = tensors.get(name)
    return name if bias is not None and bias.shape == tensors[weight].shape[:1] else None


def _entry_names(weights: list, others: list) -> dict:
    """Entry name of every tensor (layers lose ".weight", "/" becomes "."); two tensors with
    one name, or an empty name, are refused rather than one silently replacing the other."""
    names, owner = {}, {}
    for tensor in weights + others:
        name = tensor[: -len(".weight")] if tensor in weights and tensor.endswith(".weight") \
            else tensor
        name = name.replace("/", ".")
        if not name:
            raise ValueError(f"tensor {printable(tensor)!r} has no name to store")
        if name in owner:
            raise ValueError(f"tensors {printable(owner[name])!r} and {printable(tensor)!r} "
                             f"would both be stored as {printable(name)!r}")
        names[tensor], owner[name] = name, tensor
    return names


def _layer_name(weight: str) -> str:
    """The layer a weight tensor "x.weight" belongs to: "x" (the name of a model's module)."""
    return weight[: -len(".weight")] if weight.endswith(".weight") else weight


def _encoder(args: argparse.Namespace):
    """encode(name, W, bias) -> layer, for the kind and options of ``rbe compress``."""
    import rbe

    if args.kind == "hybrid":
        return lambda name, W, bias: rbe.HybridLinear.from_dense(
            W, bias=bias, block=tuple(args.block), k=args.k, transform=args.transform,
            wavelet=args.wavelet, ratio=args.ratio, rank=args.rank, basis=not args.no_basis,
            precision=args.precision)
    moments = rbe.calibration.load(args.calibration) if args.calibration else {}

    def encode(name, W, bias):
        m = moments.get(_layer_name(name))
        if m is not None and m.mean.shape != (W.shape[1],):
            raise ValueError(f"{args.calibration}: the input moments of {printable(name)!r} "
                             f"have {m.mean.shape[0]} features, the weight {W.shape[1]}")
        return rbe.CodeLinear.from_dense(
            W, bias, bits=args.bits, state_bits=args.state_bits,
            damping=rbe.trellis.DEFAULT_DAMPING if args.damping is None else args.damping,
            hessian=None if m is None else m.second_moment,
            input_mean=None if m is None else m.mean)
    return encode


def compress(args: argparse.Namespace) -> int:
    """Compress the 2-D weights of a .safetensors/.npz file into hybrid or code blocks."""
    from tqdm import tqdm

    import rbe

    tensors = _read_tensors(args.input)
    weights = [n for n, t in tensors.items() if t.ndim == 2 and t.dtype.kind == "f"]
    if not weights:
        raise ValueError(f"{args.input}: no 2-D floating-point weights to compress")
    biases = {name: _bias_name(name, tensors) for name in weights}
    names = _entry_names(weights, [n for n in tensors
                                   if n not in weights and n not in biases.values()])
    encode = _encoder(args)
    entries, report = {}, []
    for name in tqdm(weights, desc="compressing", unit="matrix", disable=None):
        W = tensors.pop(name)
        bias = tensors.pop(biases[name]) if biases[name] else None
        layer = encode(name, W, bias)
        entries[names[name]] = layer
        rmse = np.sqrt(np.mean((layer.to_dense() - W.astype(np.float64)) ** 2))
        report.append((name, W.shape, W.nbytes + (0 if bias is None else bias.nbytes),
                       layer.nbytes, rmse / max(float(np.std(W)), 1e-30)))
    entries.update({names[name]: t for name, t in tensors.items()})
    rbe.save(args.output, entries)
    kept = sum(t.nbytes for t in tensors.values())
    print(f"{'tensor':<40} {'shape':>14} {'bytes':>12} {'compressed':>12} {'ratio':>7} "
          f"{'rmse/std':>9}")
    for name, shape, before, after, rel in report:
        print(f"{printable(name):<40} {str(shape):>14} {before:>12,d} {after:>12,d} "
              f"{before / after:>6.1f}x {rel:>9.4f}")
    before = sum(r[2] for r in report) + kept
    after = sum(r[3] for r in report) + kept
    print(f"total: {before:,d} -> {after:,d} bytes ({before / after:.1f}x), "
          f"{len(tensors)} other tensor(s) kept as they were; wrote {args.output}")
    return 0


def _ratio(dense: float, stored: float) -> str:
    """dense / stored as "12.3x"; "-" for an entry that stores nothing (a zero-size tensor)."""
    return f"{dense / stored:.1f}x" if stored else "-"


def info(args: argparse.Namespace) -> int:
    """List the layers of an rbe file: kinds, shapes, bytes, compression ratio."""
    import rbe
    from rbe.layer import Layer

    loaded = rbe.load(args.file)
    entries = loaded if isinstance(loaded, dict) else {"layer": loaded}
    print(f"{'name':<40} {'kind':<14} {'shape':>14} {'block':>9} {'bytes':>12} {'ratio':>7}")
    total_dense = total = 0
    for name, obj in entries.items():
        if isinstance(obj, np.ndarray):
            kind, shape, block, nbytes, dense = "tensor", obj.shape, "", obj.nbytes, obj.nbytes
        else:                                   # an rbe.layer.Stored: a layer or a matrix
            kind = type(obj).__name__
            shape = ((obj.out_features, obj.in_features) if isinstance(obj, Layer)
                     else obj.shape)
            block = "x".join(map(str, obj.block))
            nbytes = obj.nbytes
            dense = nbytes * obj.compression_ratio
        total, total_dense = total + nbytes, total_dense + dense
        print(f"{printable(name):<40} {kind:<14} {str(tuple(shape)):>14} {block:>9} "
              f"{nbytes:>12,d} {_ratio(dense, nbytes):>7}")
    print(f"total: {int(total):,d} bytes, {_ratio(total_dense, total)} smaller than float32")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rbe", description="Compressed weight blocks.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help=demo.__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default="rbe-demo.png",
                   help="PNG of accuracy against bytes, if matplotlib is installed ('' for none)")
    p.set_defaults(run=demo)
    p = commands.add_parser("bench", help=bench.__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2048, help="64x64 blocks to generate")
    p.add_argument("--size", type=int, default=4096, help="layer size of the GEMVs")
    p.add_argument("--quality", action="store_true",
                   help="instead: accuracy per byte against low-rank, narrower and int8 layers "
                        "(rbe.quality; needs torch and scikit-learn; long)")
    p.add_argument("--serving", action="store_true",
                   help="instead: latency and throughput as a service sees them, against torch "
                        "float32 and int8 dynamic quantisation (rbe.serving; needs torch; "
                        "about 10 minutes, 1 with --quick)")
    p.add_argument("--real-model", action="store_true",
                   help="instead: a pretrained sentence-embedding model (all-MiniLM-L6-v2) "
                        "compressed by each method, scored against float32, and its latency "
                        "(rbe.real_model; needs the real-model extra; about 15 minutes)")
    p.add_argument("--calibration-sentences", type=int, default=1024,
                   help="with --real-model: sentences the calibrated rows see")
    p.add_argument("--quick", action="store_true", help="with --serving: fewer sizes and calls")
    p.add_argument("--threads", type=int, help="with --serving: every contender's thread count "
                                                "(torch, rbe, BLAS) instead of the defaults")
    p.add_argument("--rounds", type=int, help="with --serving: turns of the contenders, medians "
                                               "reported (default 3, 1 with --quick)")
    p.add_argument("--tasks", nargs="+", default=["digits", "synthetic"],
                   choices=["digits", "synthetic"], help="with --quality")
    p.add_argument("--runs", type=int, default=3, help="with --quality: seeds per variant")
    p.add_argument("--plot", default="rbe-quality.png",
                   help="with --quality: PNG of accuracy against bytes ('' for none)")
    p.set_defaults(run=bench)
    p = commands.add_parser("compress", help=compress.__doc__.splitlines()[0])
    p.add_argument("input", help=".safetensors or .npz file of dense tensors")
    p.add_argument("-o", "--output", required=True, help="rbe file to write (.safetensors)")
    p.add_argument("--kind", choices=["hybrid", "code"], default="hybrid",
                   help="hybrid blocks, or code blocks (trellis-coded, for trained weights at "
                        "2-4 bits per weight); seed blocks are trained, not encoded")
    p.add_argument("--bits", type=int, choices=[2, 3, 4], default=3,
                   help="with --kind code: stored bits per weight")
    p.add_argument("--state-bits", type=int,
                   help="with --kind code: trellis state bits, 8-16 (default per bits)")
    p.add_argument("--calibration", metavar="FILE",
                   help="with --kind code: input moments of the layers (rbe.calibration.save, "
                        "e.g. of rbe.torch.calibrate); the layers they name minimise the "
                        "error of their outputs, the others of their weights")
    p.add_argument("--damping", type=float,
                   help="with --calibration: fraction of the mean diagonal added to the second "
                        "moments (default rbe.trellis.DEFAULT_DAMPING)")
    p.add_argument("--block", type=int, nargs=2, default=[64, 64], metavar=("H", "W"))
    p.add_argument("--k", type=int, help="hybrid: residual coefficients per block (default 64)")
    p.add_argument("--ratio", type=float,
                   help="instead of --k: stored bytes at most dense float32 bytes / RATIO per "
                        "layer, the largest coefficients of each matrix kept")
    p.add_argument("--rank", type=int, default=0, help="rank of a low-rank term per layer")
    p.add_argument("--no-basis", action="store_true", help="no smooth basis coefficients")
    p.add_argument("--precision", choices=["float32", "float16"], default="float32",
                   help="storage precision of values, basis coefficients and factors")
    p.add_argument("--transform", choices=["adaptive", "dct", "dwt"], default="adaptive")
    p.add_argument("--wavelet", default="db2", help="PyWavelets wavelet of the dwt transform")
    p.set_defaults(run=compress)
    p = commands.add_parser("info", help=info.__doc__.splitlines()[0])
    p.add_argument("file")
    p.set_defaults(run=info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError, ImportError) as exc:     # ImportError: a missing extra
        message = printable(str(exc))
        if len(message) > _MAX_MESSAGE:
            message = message[:_MAX_MESSAGE] + "..."
        print(f"rbe {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
