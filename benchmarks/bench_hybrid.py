"""Benchmark of hybrid blocks: encoding, products and rate-distortion.

Run with rbe importable (installed, or built in place and on PYTHONPATH):

    python benchmarks/bench_hybrid.py [--profile]

Timings are medians of interleaved repeats (the contenders alternate, so background load hits
them alike). The "original method" baselines are plain numpy re-implementations of what the
original code does (docs/design.md, "Hybrid encoder" and "Hybrid layer"): a per-block SVD fit
and a full sort when encoding, and a whole-block rebuild for every output row in the product.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

import rbe
from rbe import _hybrid
from rbe import transforms as tf
from timing import interleaved_medians

BLOCK = (64, 64)
K = 64
MODES = ("dct", "dwt", "adaptive")


def single_threaded_blas():
    """Limit BLAS to one thread where threadpoolctl is installed (else a no-op).

    Used for the encoder comparison: both methods then run the same single-threaded BLAS, and
    the many small LAPACK calls of the original method do not suffer from thread contention.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def smooth_matrix(n: int) -> np.ndarray:
    y, x = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    return (np.sin(6 * x + 3 * y) + 0.5 * np.cos(9 * x * y) + x * y).astype(np.float32)


def gaussian_matrix(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, n)).astype(np.float32)


# -- the original's methods, written plainly --------------------------------------------------

def original_encode(W, k, transform, wavelet=tf.DEFAULT_WAVELET):
    """Per block: SVD of the basis design matrix, fit, transform, full sort, keep k.

    Returns the decoded matrix (so the result can be checked against ``rbe.encode``).
    """
    h, w = BLOCK
    out = np.empty(W.shape)
    kinds = tf.TRANSFORMS if transform == "adaptive" else (transform,)
    for i in range(0, W.shape[0], h):
        for j in range(0, W.shape[1], w):
            block = W[i:i + h, j:j + w].astype(np.float64)
            design = tf.basis(h, w).reshape(8, -1).T
            u, s, vt = np.linalg.svd(design, full_matrices=False)
            p = vt.T @ ((u.T @ block.ravel()) / s)
            pattern = (design @ p).reshape(h, w)
            best = None
            for kind in kinds:
                coefs = tf.analyze((block - pattern)[None], kind, wavelet).ravel()
                order = np.argsort(-np.abs(coefs))
                kept = np.zeros_like(coefs)
                kept[order[:k]] = coefs[order[:k]]
                decoded = pattern + tf.synthesize(kept.reshape(1, h, w), kind, wavelet)[0]
                mse = np.mean((decoded - block) ** 2)
                if best is None or mse < best[0]:
                    best = (mse, decoded)
            out[i:i + h, j:j + w] = best[1]
    return out


def original_gemv(layer: rbe.HybridLinear, x: np.ndarray) -> np.ndarray:
    """The original's product: rebuild the whole block for every output row it serves."""
    (m, n), (bh, bw) = layer.grid.shape, layer.grid.block
    design = tf.basis(bh, bw).reshape(8, -1).T
    kinds = {t: kind for kind, t in tf.TRANSFORM_IDS.items()}
    y = np.zeros(m)
    b = 0
    for i in range(0, m, bh):
        for j in range(0, n, bw):
            for row in range(bh):
                coefs = np.zeros(bh * bw)
                entries = slice(layer.offsets[b], layer.offsets[b + 1])
                coefs[layer.index[entries]] = layer.values[entries]
                residual = tf.synthesize(coefs.reshape(1, bh, bw), kinds[layer.transform[b]],
                                         layer.wavelet)[0]
                block = (design @ layer.coef[b]).reshape(bh, bw) + residual
                y[i + row] += block[row] @ x[j:j + bw]
            b += 1
    return y


# -- sections ---------------------------------------------------------------------------------

def bench_encode():
    print("== Encoding (64x64 blocks, k=64) ==")
    W = gaussian_matrix(4096)
    times = interleaved_medians({t: lambda t=t: rbe.encode(W, BLOCK, K, t, progress=False)
                         for t in MODES}, rounds=3)
    for t in MODES:
        print(f"  4096^2 {t:>8}: {times[t]:6.2f} s")
    W = gaussian_matrix(1024, seed=1)
    print("  1024^2 vs the original method (per-block SVD fit, full sort), single-threaded BLAS:")
    with single_threaded_blas():
        for t in MODES:
            compare_encoders(W, t)
    return times


def compare_encoders(W, t):
    """Time both encoders on W and check they reach the same error."""
    ours = rbe.encode(W, BLOCK, K, t, progress=False)
    rmse_original = float(np.sqrt(np.mean((original_encode(W, K, t) - W) ** 2)))
    timed = interleaved_medians({"ours": lambda: rbe.encode(W, BLOCK, K, t, progress=False),
                         "original": lambda: original_encode(W, K, t)}, rounds=5)
    print(f"    {t:>8}: ours {timed['ours'] * 1e3:7.1f} ms, original "
          f"{timed['original'] * 1e3:7.1f} ms, speedup {timed['original'] / timed['ours']:5.1f}x"
          f" (RMSE {ours.rmse(W):.5f} vs {rmse_original:.5f})")


def bench_products():
    print("== Products at 4096^2 (64x64 blocks, k=64, adaptive, float32) ==")
    W = gaussian_matrix(4096)
    layer = rbe.HybridLinear.from_dense(W, block=BLOCK, k=K, progress=False)
    dense = layer.to_dense()
    rng = np.random.default_rng(2)
    x = rng.standard_normal(4096).astype(np.float32)
    X = rng.standard_normal((64, 4096)).astype(np.float32)
    err = np.abs(layer.forward(X) - X @ dense.T).max() / np.abs(X @ dense.T).max()
    print(f"  max relative difference to the dense product: {err:.1e}")
    timed = interleaved_medians({"hybrid gemv": lambda: layer.forward(x),
                                 "dense gemv": lambda: dense @ x,
                                 "hybrid batch64": lambda: layer.forward(X),
                                 "dense batch64": lambda: X @ dense.T}, rounds=30, steady=True)
    for kind in ("gemv", "batch64"):
        ours, base = timed[f"hybrid {kind}"], timed[f"dense {kind}"]
        print(f"  {kind:>8}: hybrid {ours * 1e3:7.3f} ms | dense BLAS {base * 1e3:7.3f} ms"
              f" | speedup {base / ours:5.2f}x")
    print(f"  storage: {layer.nbytes / 2**20:.2f} MiB vs dense {dense.nbytes / 2**20:.0f} MiB "
          f"(ratio {layer.compression_ratio:.1f})")
    return timed


def profile_gemv():
    """Where a GEMV's time goes: the whole forward, its C product (``ForwardPlan.forward``),
    and the same product with no sparse entries (the dense transforms and basis sums alone)."""
    print("== GEMV profile at 4096^2 (64x64 blocks, k=64, adaptive, float32), median ms ==")
    W = gaussian_matrix(4096)
    layer = rbe.HybridLinear.from_dense(W, block=BLOCK, k=K, progress=False)
    x = np.random.default_rng(7).standard_normal((1, 4096)).astype(np.float32)
    arrays = layer._plan_arrays(np.dtype(np.float32))
    plan = _hybrid.ForwardPlan(4096, 4096, np.float32, **arrays)
    dense_only = _hybrid.ForwardPlan(4096, 4096, np.float32, **{
        **arrays, "rowptr": np.zeros_like(arrays["rowptr"]), "src": [], "zrow": []})
    y = np.empty((1, 4096), np.float32)
    params = (layer.values, layer.coef, layer.bias)
    stages = {
        "forward": lambda: layer.forward(x),
        "C product": lambda: plan.forward(x, *params, out=y),
        "dense part": lambda: dense_only.forward(x, *params, out=y),
    }
    for threads in (1, 2):
        with rbe.threads(threads):
            t = _block_medians(stages)
        print(f"  {threads} thread(s): forward {t['forward'] * 1e3:.3f} = transforms and basis "
              f"sums (BLAS) {t['dense part'] * 1e3:.3f} + sparse rows "
              f"{(t['C product'] - t['dense part']) * 1e3:.3f} + checks, bias and Python "
              f"{(t['forward'] - t['C product']) * 1e3:.3f}")


def _block_medians(cases, blocks=5, calls=200):
    """Median seconds per call of each case: blocks of back-to-back calls (after as many
    untimed), the cases alternating block by block."""
    samples = {name: [] for name in cases}
    for _ in range(blocks):
        for name, fn in cases.items():
            for _ in range(calls):
                fn()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - start) / calls)
    return {name: float(np.median(v)) for name, v in samples.items()}


def bench_row_rebuild():
    print("== GEMV at 512^2 vs the original's row-by-row block rebuild ==")
    W = gaussian_matrix(512, seed=3)
    layer = rbe.HybridLinear.from_dense(W, block=BLOCK, k=K, progress=False)
    x = np.random.default_rng(4).standard_normal(512)
    err = np.abs(original_gemv(layer, x) - layer.forward(x)).max()
    timed = interleaved_medians({"ours": lambda: layer.forward(x),
                         "rebuild": lambda: original_gemv(layer, x)}, rounds=5)
    speedup = timed["rebuild"] / timed["ours"]
    print(f"  hybrid {timed['ours'] * 1e3:.3f} ms | row rebuild {timed['rebuild'] * 1e3:.1f} ms"
          f" | speedup {speedup:.0f}x (max difference {err:.1e})")
    return speedup


def bench_rate_distortion():
    print("== Rate-distortion at 1024^2, 64x64 blocks (RMSE / std of the matrix) ==")
    for name, W in (("smooth", smooth_matrix(1024)), ("gaussian", gaussian_matrix(1024, 5))):
        print(f"  {name} matrix (std {W.std():.3f})")
        print("       k   ratio      dct      dwt  adaptive")
        for k in (16, 32, 64, 128, 256, 512):
            row = [rbe.encode(W, BLOCK, k, t, progress=False) for t in MODES]
            errs = "  ".join(f"{m.rmse(W) / W.std():7.5f}" for m in row)
            print(f"    {k:4d}  {row[0].compression_ratio:6.1f}  {errs}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="only the GEMV profile")
    print(f"rbe hybrid benchmark: numpy {np.__version__}, "
          f"{rbe.get_num_threads()} OpenMP thread(s) by default, "
          f"OpenMP {'on' if rbe._core.openmp_enabled() else 'off'}")
    if parser.parse_args().profile:
        profile_gemv()
        return
    encode_times = bench_encode()
    products = bench_products()
    profile_gemv()
    rebuild = bench_row_rebuild()
    bench_rate_distortion()
    print("== Acceptance (this machine) ==")
    gemv = products["dense gemv"] / products["hybrid gemv"]
    print(f"  GEMV >= 2x dense BLAS at 4096^2: {gemv:.2f}x -> {'PASS' if gemv >= 2 else 'FAIL'}")
    print(f"  GEMV >= 100x row rebuild at 512^2: {rebuild:.0f}x -> "
          f"{'PASS' if rebuild >= 100 else 'FAIL'}")
    worst = max(encode_times.values())
    print(f"  encode 4096^2 <= 5 s (slowest mode): {worst:.2f} s -> "
          f"{'PASS' if worst <= 5 else 'FAIL'}")


if __name__ == "__main__":
    main()
