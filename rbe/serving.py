"""Serving benchmark: rbe layers as an inference service calls them, against torch's float32
``nn.Linear`` and its int8 dynamic quantisation (``quantize_dynamic``, the usual CPU choice).

Three tables (``rbe bench --serving``, ``benchmarks/bench_serving.py``; needs torch):

1. Single layers, n x n, one vector (GEMV) and a batch of 64, steady state (the median of
   back-to-back calls after warm-up calls), at n = 4096 and 8192: numpy float32 (``x @ W.T``),
   torch int8 dynamic, ``HybridLinear`` (k = 64, 64 x 64 blocks, a mix of DCT and DWT blocks
   as the adaptive encoder leaves them), ``FusedLinear`` (seed blocks) and ``CodeLinear``
   (code blocks, 2 bits per weight).
2. A 6-layer model, ``Linear(1024, 1024) -> LayerNorm -> GELU`` six times, under
   ``torch.inference_mode``, at batch 1 and 32: float32, int8 dynamic, and the ``rbe.torch``
   replacements of its linear layers (``compress``: hybrid blocks encoded from the float32
   weights in the layout of table 1, code blocks coded from them at 2 bits per weight, or
   fresh seed blocks). Each in three settings: alone (back-to-back calls); right after a numpy
   ``sgemm`` of 64 x 4096 x 4096 before every call (numpy's BLAS threads are still spinning
   when the call starts); four Python threads calling the model at once (throughput, and the
   latency each call sees). p50 and p99 of the per-call latency.
3. One 1024 x 1024 layer, one vector, alone and right after the sgemm: the latency that
   survives a spinning neighbour, as p99 after the sgemm over p50 alone.

Every contender runs in its own process (a fresh interpreter per kind), one after the other,
so no contender inherits another's thread pools, caches or memory. The contenders take turns
for ``rounds`` rounds and every figure is the median over the rounds, so that a slow spell of a
shared machine does not land on one contender alone. All use the default thread counts
(torch's, numpy's BLAS and rbe's; on a 2-core machine two each), or the one ``run``'s
``threads`` gives them all.
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
import time
import warnings
from typing import Callable

import numpy as np

from ._checks import positive_int
from ._tables import print_table

SIZES = (4096, 8192)
LAYER_KINDS = ("float32", "int8", "hybrid", "fused", "code")
#: Bits per weight of the code contenders (their speed does not depend on the state bits; the
#: model's layers are coded with few, to keep the workers' start short).
CODE_BITS, CODE_STATE_BITS = 2, 10
RBE_KINDS = LAYER_KINDS[2:]
MODEL_WIDTH, MODEL_DEPTH, MODEL_BATCHES = 1024, 6, (1, 32)
NEIGHBOUR_SHAPE = (64, 4096, 4096)      # the numpy sgemm run before each call: m, k, n
THREADS = 4
#: ``compress`` options of the model's hybrid layers: the layout of the single hybrid layers.
HYBRID_LAYOUT = {"block": (64, 64), "k": 64, "basis": True, "precision": "float32"}


# -- contenders (built inside a worker process) ---------------------------------------------

def _hybrid_layer(n: int, seed: int = 0):
    """A k = 64 HybridLinear with random positions and values, half its blocks DCT and half
    DWT (two transforms in use, as after adaptive encoding), and a bias."""
    import rbe
    rng = np.random.default_rng(seed)
    m = rbe.HybridLinear(n, n, k=64, transform="dct", seed=seed, regrow_every=None).matrix
    transform = rng.integers(0, 2, m.grid.nblocks).astype(np.uint8)
    coef = rng.normal(0, 0.01, m.coef.shape).astype(np.float32)
    matrix = rbe.HybridMatrix(m.grid.shape, m.grid.block, coef, transform, m.offsets, m.index,
                              m.values)
    return rbe.HybridLinear.from_matrix(matrix, rng.normal(0, 0.01, n).astype(np.float32))


def _layer_call(kind: str, n: int):
    """A function f(x) computing one n x n layer of ``kind`` on a numpy float32 input."""
    import torch
    rng = np.random.default_rng(0)
    if kind == "float32":
        W = rng.standard_normal((n, n), np.float32) / np.sqrt(n)
        return lambda x: x @ W.T
    if kind == "int8":
        torch.manual_seed(0)
        model = _int8(torch.nn.Sequential(torch.nn.Linear(n, n)))
        return lambda x: model(torch.from_numpy(x)).numpy()
    if kind == "hybrid":
        return _hybrid_layer(n).forward
    import rbe
    if kind == "code":
        return rbe.CodeLinear(n, n, bits=CODE_BITS, seed=0).forward
    return rbe.FusedLinear(n, n, seed=0).forward


def _int8(model):
    import torch
    with warnings.catch_warnings():        # quantize_dynamic is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, torch.qint8)


def _model(kind: str):
    """The 6-layer model in ``kind``: float32, int8 dynamic, or its rbe replacement."""
    import torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(MODEL_DEPTH) for m in
                            (nn.Linear(MODEL_WIDTH, MODEL_WIDTH), nn.LayerNorm(MODEL_WIDTH),
                             nn.GELU())]).eval()
    if kind == "int8":
        return _int8(model)
    if kind in RBE_KINDS:
        import rbe.torch as rt
        options = {"hybrid": HYBRID_LAYOUT,
                   "code": {"bits": CODE_BITS, "state_bits": CODE_STATE_BITS}}.get(kind, {})
        return rt.compress(model, kind=kind, **options)
    return model


# -- measurements ---------------------------------------------------------------------------

def _neighbour():
    """The numpy sgemm that leaves numpy's BLAS threads spinning."""
    rng = np.random.default_rng(1)
    m, k, n = NEIGHBOUR_SHAPE
    A = rng.standard_normal((m, k), np.float32)
    B = rng.standard_normal((n, k), np.float32)
    return lambda: A @ B.T


def _latencies(call, count: int, before=None) -> np.ndarray:
    """Seconds per call of ``count`` calls (``before`` runs untimed before each)."""
    times = np.empty(count)
    for i in range(count):
        if before is not None:
            before()
        start = time.perf_counter()
        call()
        times[i] = time.perf_counter() - start
    return times


def _concurrent(call, count: int, threads: int = THREADS) -> tuple[np.ndarray, float]:
    """Latencies of ``count`` calls from each of ``threads`` Python threads started together,
    and the throughput (calls per second) over the whole run."""
    results = [None] * threads
    barrier = threading.Barrier(threads + 1)

    def work(k):
        barrier.wait()
        results[k] = _latencies(call, count)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    return np.concatenate(results), threads * count / (time.perf_counter() - start)


def _summary(times: np.ndarray) -> dict:
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


def _steady(call, seconds: float, most: int) -> float:
    """Median seconds per call of back-to-back calls (after warm-up), within about
    ``seconds`` (at least 10 calls, at most ``most``)."""
    first = _latencies(call, 3)[-1]
    count = int(min(most, max(10, seconds / max(first, 1e-6))))
    return float(np.median(_latencies(call, count)))


def _layers_worker(kind: str, sizes, quick: bool) -> dict:
    rng = np.random.default_rng(2)
    out = {}
    for n in sizes:
        call = _layer_call(kind, n)
        for batch in (1, 64):
            x = rng.standard_normal((batch, n), np.float32)
            out[f"{n}/{batch}"] = _steady(functools.partial(call, x), 0.3 if quick else 1.0,
                                          300)
    return out


def _infer(model, x):
    import torch
    with torch.inference_mode():      # per call: the mode is thread-local
        return model(x)


def _serving_worker(kind: str, calls: int) -> dict:
    import torch
    neighbour = _neighbour()
    neighbour()
    rng = np.random.default_rng(3)
    out = {}
    model = _model(kind)
    for batch in MODEL_BATCHES:
        x = torch.from_numpy(rng.standard_normal((batch, MODEL_WIDTH), np.float32))
        call = functools.partial(_infer, model, x)
        _latencies(call, 10)
        alone = _summary(_latencies(call, calls))
        after = _summary(_latencies(call, calls, neighbour))
        times, throughput = _concurrent(call, max(calls // THREADS, 10))
        out[f"model/{batch}"] = {"alone": alone, "after sgemm": after,
                                 "threads": dict(_summary(times), throughput=throughput)}
    if kind != "float32":
        layer = _layer_call(kind, MODEL_WIDTH)
        x = rng.standard_normal((1, MODEL_WIDTH), np.float32)
        call = functools.partial(layer, x)
        _latencies(call, 10)
        out["layer"] = {"alone": _summary(_latencies(call, calls)),
                        "after sgemm": _summary(_latencies(call, calls, neighbour))}
    return out


def _worker(spec: dict) -> dict:
    warnings.simplefilter("ignore")
    if spec["threads"]:
        import torch
        from threadpoolctl import threadpool_limits

        import rbe
        torch.set_num_threads(spec["threads"])
        rbe.set_num_threads(spec["threads"])
        threadpool_limits(spec["threads"])
    if spec["task"] == "layers":
        return _layers_worker(spec["kind"], spec["sizes"], spec["quick"])
    return _serving_worker(spec["kind"], spec["calls"])


def _medians(results: list) -> dict | float:
    """The element-wise median of equally nested dicts of numbers."""
    if isinstance(results[0], dict):
        return {key: _medians([r[key] for r in results]) for key in results[0]}
    return float(np.median(results))


def _in_turns(specs: dict[str, dict], rounds: int, log: Callable[[str], object]) -> dict:
    """Each kind's worker run ``rounds`` times, the kinds taking turns; the median figures."""
    runs: dict[str, list] = {kind: [] for kind in specs}
    task = next(iter(specs.values()))["task"]
    for turn in range(rounds):
        for kind, spec in specs.items():
            runs[kind].append(_in_process(spec))
        if rounds > 1:
            log(f"  ({task}: round {turn + 1} of {rounds} done)")
    return {kind: _medians(results) for kind, results in runs.items()}


def _in_process(spec: dict) -> dict:
    """Run one worker in a fresh interpreter; its result is the last line it prints."""
    done = subprocess.run([sys.executable, "-m", "rbe.serving", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"benchmark worker {spec} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- report ---------------------------------------------------------------------------------

def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def run(quick: bool = False, threads: int | None = None, rounds: int | None = None,
        log: Callable[[str], object] = print) -> dict:
    """Run the benchmark (``quick``: 4096^2 only in table 1, 50 calls per setting instead of
    200; ``threads``: torch's, rbe's and BLAS's thread count in every contender instead of
    their defaults; ``rounds``: turns of the contenders, medians reported, by default 3, 1 with
    ``quick``) and print its tables; returns the measurements."""
    try:
        import torch
    except ImportError:
        raise ImportError('the serving benchmark needs torch: pip install "rbe[torch]"') from None
    import rbe
    sizes = SIZES[:1] if quick else SIZES
    calls = 50 if quick else 200
    rounds = (1 if quick else 3) if rounds is None else positive_int("rounds", rounds)
    info = rbe.kernel_info()
    count = threads or f"{info['threads']} (rbe), {torch.get_num_threads()} (torch)"
    log(f"rbe {rbe.__version__} (simd={info['simd']}), torch {torch.__version__}, numpy "
        f"{np.__version__}; threads: {count}; each contender in its own process, {rounds} "
        f"round(s) of turns, medians; times in ms")
    layers = _in_turns({kind: {"task": "layers", "kind": kind, "sizes": sizes, "quick": quick,
                               "threads": threads} for kind in LAYER_KINDS}, rounds, log)
    log("\n1. single n x n layers, steady state (median ms per call; ratio: int8 time / time)")
    keys = [f"{n}/{b}" for b in (1, 64) for n in sizes]
    header = ["layer"] + [f"{'GEMV' if b == '1' else 'batch-64'} {n}^2"
                          for n, b in (k.split("/") for k in keys)]
    rows = [[kind] + [_ms(layers[kind][k]) for k in keys] for kind in LAYER_KINDS]
    rows += [[f"{kind} vs int8"] + [f"{layers['int8'][k] / layers[kind][k]:.2f}x"
                                    for k in keys] for kind in RBE_KINDS]
    print_table(header, rows, log)

    serving = _in_turns({kind: {"task": "serving", "kind": kind, "calls": calls,
                                "threads": threads} for kind in LAYER_KINDS}, rounds, log)
    log(f"\n2. {MODEL_DEPTH} x (Linear {MODEL_WIDTH}^2 -> LayerNorm -> GELU), inference_mode, "
        f"{calls} calls per setting (4 threads: {max(calls // THREADS, 10)} calls each)")
    header = ["model", "batch", "alone p50", "p99", "after sgemm p50", "p99", "4 threads p50",
              "p99", "calls/s"]
    rows = []
    for batch in MODEL_BATCHES:
        for kind in LAYER_KINDS:
            r = serving[kind][f"model/{batch}"]
            rows.append([kind, batch, _ms(r["alone"]["p50"]), _ms(r["alone"]["p99"]),
                         _ms(r["after sgemm"]["p50"]), _ms(r["after sgemm"]["p99"]),
                         _ms(r["threads"]["p50"]), _ms(r["threads"]["p99"]),
                         f"{r['threads']['throughput']:.0f}"])
    print_table(header, rows, log)
    for batch in MODEL_BATCHES:
        base = serving["int8"][f"model/{batch}"]["alone"]["p50"]
        log(f"  batch {batch}: " + ", ".join(
            f"{kind} {base / serving[kind][f'model/{batch}']['alone']['p50']:.2f}x"
            for kind in RBE_KINDS) + " int8's speed (alone, p50)")

    log(f"\n3. one {MODEL_WIDTH}^2 layer, one vector: alone, and right after a numpy sgemm "
        f"{'x'.join(map(str, NEIGHBOUR_SHAPE))}")
    header = ["layer", "alone p50", "p99", "after sgemm p50", "p99", "p99 after / p50 alone"]
    rows = []
    for kind in LAYER_KINDS[1:]:
        r = serving[kind]["layer"]
        rows.append([kind, _ms(r["alone"]["p50"]), _ms(r["alone"]["p99"]),
                     _ms(r["after sgemm"]["p50"]), _ms(r["after sgemm"]["p99"]),
                     f"{r['after sgemm']['p99'] / r['alone']['p50']:.2f}"])
    print_table(header, rows, log)
    return {"layers": layers, "serving": serving}


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
