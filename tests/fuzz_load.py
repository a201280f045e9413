"""Fuzz rbe.load (and rbe.io.load_model, which rbe.torch.load and rbe.hf read whole models
with) with mutated and forged files; every case runs in its own process.

Run with rbe importable (installed, or built in place and on PYTHONPATH)::

    python tests/fuzz_load.py --cases 5000 --seed 1

tests/test_fuzz.py runs a short campaign of it in the test suite.

Valid files of every entry kind are written by ``rbe.save``, and whole-model files by
``rbe.io.model_entries`` (other tensors described or not); each case mutates one of them
(byte flips, truncation, container edits, rbe-header JSON edits with hostile values and raw
text, and consistent forgeries whose sha256 checksums are recomputed so that the deeper checks
are reached). A forked child loads the case under an address-space limit and an alarm; when
the file loads, it runs forward and backward of every layer on inputs in [-1, 1] and
``rbe info``. The summary counts outcomes, crashes (signals), hangs, exception types other
than FormatError, and the peak memory of rejected files against 64 MiB + 4 x the file size.
The cases are a pure function of (seed, case number), so any case can be replayed.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import resource
import signal
import struct
import sys
import tempfile
from collections import Counter

import numpy as np
from threadpoolctl import threadpool_limits

import rbe
from rbe import cli
from rbe.layer import Layer

ADDRESS_SPACE_LIMIT = 2 << 30      # per case, on top of what the process has mapped already
CASE_SECONDS = 30                  # a case still running after this counts as a hang
MEMORY_BOUND_BYTES = 64 << 20      # a rejected file may use 64 MiB + 4 x its size
MEMORY_BOUND_FACTOR = 4


# ---- valid files ----------------------------------------------------------------------------

def base_files(directory: str) -> list:
    """(name, bytes) of small valid files written by rbe.save, covering every kind and part."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((40, 56)).astype(np.float32)
    objects = {
        "hybrid": {"fc": rbe.HybridLinear.from_dense(W, bias=rng.standard_normal(40)
                                                     .astype(np.float32), block=(16, 16), k=8)},
        "hybrid_dwt": {"fc": rbe.HybridLinear(56, 40, block=(8, 16), k=4, transform="dwt",
                                              bias=False, seed=1)},
        "matrix": {"m": rbe.encode(W, block=(16, 16), k=6, transform="dct")},
        "fused": {"fc": rbe.FusedLinear(56, 40, block=(16, 16), seed=2)},
        "fused_nobias": {"fc": rbe.FusedLinear(56, 40, block=(8, 8), bias=False, seed=3)},
        "tensors": {"f": rng.standard_normal((3, 4)), "i": np.arange(6, dtype=np.int32),
                    "u": np.arange(5, dtype=np.uint8), "empty": np.zeros((0, 3), np.float32)},
        "large": {"fc": rbe.HybridLinear.from_dense(rng.standard_normal((256, 512))
                                                    .astype(np.float32), block=(32, 32), k=96),
                  "seeded": rbe.FusedLinear(1024, 512, block=(8, 8), seed=5)},
        "single": rbe.HybridLinear(24, 16, block=(8, 8), k=4, seed=6),    # one object saved
        "mixed": {"a": rbe.FusedLinear(24, 16, block=(8, 8), seed=4),
                  "b": rbe.HybridLinear.from_dense(W[:16, :24], block=(8, 8), k=4),
                  "t": np.ones(3, np.uint16)},
        "code": {"fc": rbe.CodeLinear.from_dense(W, bias=rng.standard_normal(40), bits=3,
                                                 state_bits=9)},
        "code_nobias": {"fc": rbe.CodeLinear(56, 40, bits=2, state_bits=8, bias=False, seed=7)},
        # ragged counts, uint8 positions, float16, no basis, a low-rank term, a regrow schedule
        "compact": {"fc": rbe.HybridLinear.from_dense(W, block=(16, 16), ratio=6, rank=2,
                                                      basis=False, precision="float16")},
    }
    objects["compact"]["fc"].set_regrow(10, 0.25, 100)
    files = []
    for name, entries in objects.items():
        path = os.path.join(directory, f"{name}.safetensors")
        rbe.save(path, entries)
        with open(path, "rb") as f:
            files.append((name, f.read()))
    files += model_files(directory, W)
    version_1 = os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                             "format_v1.safetensors")
    with open(version_1, "rb") as f:           # hybrid entries in the layout of version 1
        files.append(("version_1", f.read()))
    return files


def model_files(directory: str, W: np.ndarray) -> list:
    """(name, bytes) of whole-model files (rbe.io.model_entries): layers and the model's other
    tensors, described with checksums ("model") or left undescribed ("model_undescribed")."""
    from safetensors.numpy import save_file

    layers = {"enc.fc": rbe.HybridLinear.from_dense(W, block=(16, 16), ratio=6, basis=False,
                                                    precision="float16"),
              "enc.seeded": rbe.FusedLinear(24, 16, block=(8, 8), seed=7)}
    tensors = {"embed.weight": np.linspace(-1, 1, 40, dtype=np.float32).reshape(10, 4),
               "counts": np.arange(-2, 3, dtype=np.int8)}
    files = []
    for name, described in (("model", True), ("model_undescribed", False)):
        descriptions = {key: {"dtype": a.dtype.name, "shape": list(a.shape),
                              "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
                        for key, a in tensors.items()} if described else None
        header, parts = rbe.io.model_entries(layers, descriptions)
        path = os.path.join(directory, f"{name}.safetensors")
        save_file({**parts, **tensors}, path, metadata={"rbe": header})
        with open(path, "rb") as f:
            files.append((name, f.read()))
    return files


# ---- file surgery ---------------------------------------------------------------------------

def split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(container: dict, payload: bytes, raw: str | None = None) -> bytes:
    text = (raw if raw is not None else json.dumps(container)).encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(text)) + text + payload


def rbe_header(container: dict) -> dict:
    return json.loads(container["__metadata__"]["rbe"])


def set_rbe_header(container: dict, header: dict) -> None:
    container["__metadata__"]["rbe"] = json.dumps(header)


def tensor_keys(container: dict) -> list:
    return sorted(k for k in container if k != "__metadata__")


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# Placeholders replaced in the JSON text by what json.dumps cannot write.
_RAW_VALUES = {
    '"@unclosed"': lambda rng: "[" * int(rng.integers(20, 100_000)),
    '"@deep"': lambda rng: _nested(int(rng.integers(20, 50_000))),
    '"@long_int"': lambda rng: "9" * int(rng.integers(40, 20_000)),
    '"@big_float"': lambda rng: "1e" + str(int(rng.integers(39, 99_999))),
    '"@nan"': lambda rng: "NaN",
    '"@inf"': lambda rng: str(rng.choice(["Infinity", "-Infinity"])),
}


def hostile_value(rng):
    """A JSON value of a wrong type, out of range, huge or deep (placeholders in _RAW_VALUES)."""
    choices = [0, -1, 1, 3, 2**31 - 1, 2**31, 2**63, 2**64 + 1, 10**30, 1.5, -0.0, 1e308,
               True, False, None, "", "x" * int(rng.integers(1, 5000)), "\x1b[31m\n", [], {},
               [1], [16, 16], [0, 16], [-16, 16], [2**31, 2**31], [1, 1], [65535, 1],
               [1024, 64], [1, 2, 3], {"a": 1}, [[16, 16]], "fast", "precise", "dct", "db2",
               "haar", "float16", "tensor", "fused_linear", "hybrid_linear", "hybrid_matrix",
               "code_linear",
               *(marker.strip('"') for marker in _RAW_VALUES)]
    return choices[int(rng.integers(len(choices)))]


def raw_text(text: str, rng) -> str:
    for marker, make in _RAW_VALUES.items():
        while marker in text:
            text = text.replace(marker, make(rng), 1)
    return text


def random_path(obj, rng, depth=0):
    """A (parent, key) of a random object member or list item below obj."""
    members = list(obj.items()) if isinstance(obj, dict) else list(enumerate(obj))
    if not members:
        return None
    key, child = members[int(rng.integers(len(members)))]
    if isinstance(child, (dict, list)) and child and depth < 6 and rng.random() < 0.7:
        deeper = random_path(child, rng, depth + 1)
        if deeper is not None:
            return deeper
    return obj, key


def flip_bytes(data: bytes, rng) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        out[int(rng.integers(len(out)))] ^= 1 << int(rng.integers(8))
    return bytes(out)


def truncate(data: bytes, rng) -> bytes:
    return data[:int(rng.integers(len(data)))]


def edit_container(data: bytes, rng) -> bytes:
    container, payload = split(data)
    key = tensor_keys(container)[int(rng.integers(len(tensor_keys(container))))]
    field = str(rng.choice(["dtype", "shape", "data_offsets", "delete", "extra", "metadata"]))
    if field == "dtype":
        container[key]["dtype"] = str(rng.choice(["F8_E4M3", "F8_E5M2", "BF16", "F16", "BOOL",
                                                  "C64", "U32", "I8", "F64", "I64", "U64",
                                                  "F32", "U8", "nope"]))
    elif field == "shape":
        container[key]["shape"] = hostile_value(rng) if rng.random() < 0.5 else \
            [int(rng.integers(0, 2**40)) for _ in range(int(rng.integers(0, 4)))]
    elif field == "data_offsets":
        begin, end = container[key]["data_offsets"]
        container[key]["data_offsets"] = [begin, end + int(rng.integers(-16, 17))] \
            if rng.random() < 0.5 else [0, int(rng.integers(0, 2**62))]
    elif field == "delete":
        del container[key]
    elif field == "extra":
        container[key + "x"] = dict(container[key])
    else:
        container["__metadata__"] = hostile_value(rng)
    return join(container, payload, raw_text(json.dumps(container), rng))


def edit_header(data: bytes, rng) -> bytes:
    """A hostile value anywhere in the rbe header (config, kind, version, part specs...)."""
    container, payload = split(data)
    header = rbe_header(container)
    if rng.random() < 0.1:
        parent, key = header, str(rng.choice(["format", "version", "entries", "single"]))
    else:
        parent, key = random_path(header["entries"], rng)
    parent[key] = hostile_value(rng)
    if rng.random() < 0.1:                    # a repeated key, written raw
        text = json.dumps(header)
        text = text.replace('"entries": {', '"entries": {"x": 1, "x": 2, ', 1)
    else:
        text = json.dumps(header)
    container["__metadata__"]["rbe"] = raw_text(text, rng)
    return join(container, payload)


def _extreme_values(array: np.ndarray, rng) -> None:
    flat = array.reshape(-1)
    if not flat.size:
        return
    if array.dtype.kind == "f":
        pool = [np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e30, 2.0**61, 1e-45, 0.0]
        values = rng.choice(pool, int(rng.integers(1, 4)))
    else:
        info = np.iinfo(array.dtype)
        values = rng.integers(info.min, info.max, int(rng.integers(1, 4)), dtype=array.dtype,
                              endpoint=True)
    with np.errstate(over="ignore"):          # float16 parts: large values become inf
        flat[rng.integers(flat.size, size=len(values))] = values


def forge(data: bytes, rng) -> bytes:
    """Consistent forgery: container, rbe header and checksums agree; only rbe's own checks
    (shapes against the config, values, indices) can object."""
    container, payload = split(data)
    header = rbe_header(container)
    tensors = {}
    for key in tensor_keys(container):
        info = container[key]
        begin, end = info["data_offsets"]
        dtype = np.dtype(_NUMPY_DTYPES[info["dtype"]])
        tensors[key] = np.frombuffer(payload[begin:end], dtype).reshape(info["shape"]).copy()
    key = sorted(tensors)[int(rng.integers(len(tensors)))]
    name, _, part = key.partition("/")
    # An entry's part, or a whole-model file's other tensor (described there, or not at all).
    entry = header["entries"][name] if part else {"config": {}, "tensors": header["model"]}
    part = part or key
    how = str(rng.choice(["values", "values", "dtype", "shape", "config", "drop"]))
    a = tensors[key]
    if how == "values":
        _extreme_values(a, rng)
    elif how == "dtype":
        with np.errstate(invalid="ignore", over="ignore"):
            a = a.astype(str(rng.choice(["float64", "float32", "float16", "int64", "uint64",
                                         "int32", "uint16", "uint8"])))
    elif how == "shape":
        new = list(a.shape) or [1]
        axis = int(rng.integers(len(new)))
        new[axis] = int(rng.choice([0, 1, new[axis] - 1, new[axis] + 1, 2 * new[axis]]))
        a = np.resize(a, [max(0, n) for n in new])
    elif how == "config" and entry["config"]:
        field = str(rng.choice(sorted(entry["config"])))
        entry["config"][field] = hostile_value(rng) if rng.random() < 0.5 else \
            _nearby(entry["config"][field], rng)
    elif how == "drop" and part != "data":
        del tensors[key]
        if isinstance(entry["tensors"], dict):
            del entry["tensors"][part]
    if key in tensors:
        tensors[key] = a
        if isinstance(entry["tensors"], dict):
            entry["tensors"][part] = {"dtype": a.dtype.name, "shape": list(a.shape),
                                      "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
    return _write(tensors, header, rng)


def _nearby(value, rng):
    """A plausible edit of a config value: a neighbouring or scaled integer."""
    if isinstance(value, list):
        return [_nearby(v, rng) for v in value]
    if isinstance(value, int):
        return int(rng.choice([value - 1, value + 1, value * 2, value // 2, value * 4096,
                               2**31 - 1, 1]))
    return value


def _write(tensors: dict, header: dict, rng) -> bytes:
    names = {v: k for k, v in _NUMPY_DTYPES.items()}
    container, chunks, offset = {}, [], 0
    for key, a in tensors.items():
        raw = a.tobytes()
        container[key] = {"dtype": names[a.dtype.name], "shape": list(a.shape),
                          "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    container["__metadata__"] = {"rbe": raw_text(json.dumps(header), rng)}
    return join(container, b"".join(chunks))


#: safetensors dtype -> numpy dtype name, for the dtypes the base files use.
_NUMPY_DTYPES = {**rbe.io._SAFETENSORS_DTYPES, "I8": "int8"}

MUTATIONS = {"flip": flip_bytes, "truncate": truncate, "container": edit_container,
             "header": edit_header, "forge": forge}


def make_case(bases: list, seed: int, case: int) -> tuple[str, bytes]:
    """(description, file bytes) of case number ``case`` of a campaign."""
    rng = np.random.default_rng([seed, case])
    base_name, data = bases[int(rng.integers(len(bases)))]
    kind = list(MUTATIONS)[int(rng.integers(len(MUTATIONS)))]
    for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):
        try:
            data = MUTATIONS[kind](data, rng)
        except (ValueError, KeyError, IndexError, TypeError, RecursionError, struct.error):
            break                 # an earlier mutation left nothing this one can parse
    return f"{base_name}:{kind}", data


# ---- running a case -------------------------------------------------------------------------

def _status_bytes(field: str) -> int:
    """VmSize, VmRSS or VmHWM (the peak since the last reset) of this process."""
    with open("/proc/self/status") as f:
        return 1024 * next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _exercise(loaded, rng) -> str:
    """Forward and backward of every layer of a loaded file; '' or what went wrong."""
    entries = loaded if isinstance(loaded, dict) else {"layer": loaded}
    for name, layer in entries.items():
        if not isinstance(layer, Layer):
            continue
        x = rng.uniform(-1, 1, (2, layer.in_features)).astype(np.float32)
        y = layer.forward(x)
        if y.shape != (2, layer.out_features) or not np.isfinite(y).all():
            return f"forward of {name!r}: shape {y.shape} or non-finite output"
        dx = layer.backward(x, np.ones_like(y))
        if dx.shape != x.shape:
            return f"backward of {name!r}: shape {dx.shape}"
    return ""


def run_case(path: str, seed: int, model: bool = False) -> dict:
    """Load path in a child (fork) under the limits, with ``rbe.io.load_model`` if ``model``
    (a whole-model file), else ``rbe.load``; the child's report."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                          # the child
        os.close(read_end)
        code, report = 0, {}
        try:
            limit = _status_bytes("VmSize") + ADDRESS_SPACE_LIMIT
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            signal.alarm(CASE_SECONDS)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")                              # the peak restarts from here
            report["rss_before"] = _status_bytes("VmRSS")
            try:
                entries = rbe.io.load_model(path)[0] if model else rbe.load(path)
                report["outcome"] = "loaded"
            except rbe.FormatError as exc:
                report["outcome"], report["message"] = "FormatError", str(exc)[:300]
            report["peak"] = _status_bytes("VmHWM")
            if report["outcome"] == "loaded":
                report["problem"] = _exercise(entries, np.random.default_rng(seed))
                with contextlib.redirect_stdout(io.StringIO()) as out:
                    if not model:
                        cli.main(["info", path])
                if any(not line.isprintable() for line in out.getvalue().splitlines()):
                    report["problem"] = "rbe info printed a control character"
        except BaseException as exc:  # noqa: BLE001 (anything else is a finding)
            report["outcome"] = "exception"
            report["type"] = type(exc).__name__
            report["message"] = str(exc)[:300]
            code = 1
        os.write(write_end, json.dumps(report).encode())
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        raw = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        return {"outcome": "hang" if signum == signal.SIGALRM else "crash",
                "signal": signal.Signals(signum).name}
    return json.loads(raw) if raw else {"outcome": "crash", "status": status}


def campaign(cases: int, seed: int, first: int = 0, verbose: bool = False) -> dict:
    """Run cases [first, first + cases); counts and the findings."""
    counts, findings, worst = Counter(), [], 0.0
    rbe.set_num_threads(1)              # no thread team or BLAS pool exists when a case forks
    with threadpool_limits(1), tempfile.TemporaryDirectory() as directory:
        bases = base_files(directory)
        path = os.path.join(directory, "case.safetensors")
        for case in range(first, first + cases):
            what, data = make_case(bases, seed, case)
            with open(path, "wb") as f:
                f.write(data)
            result = run_case(path, seed + case, model=what.startswith("model"))
            counts[result["outcome"]] += 1
            if result["outcome"] == "FormatError":
                used = result["peak"] - result["rss_before"]
                bound = MEMORY_BOUND_BYTES + MEMORY_BOUND_FACTOR * len(data)
                worst = max(worst, used / bound)
                if used > bound:
                    findings.append((case, what, f"rejected using {used >> 20} MiB"))
            elif result["outcome"] != "loaded" or result.get("problem"):
                findings.append((case, what, result))
            if verbose:
                print(case, what, len(data), result, flush=True)
    return {"cases": cases, "seed": seed, "outcomes": dict(counts), "findings": findings,
            "worst_memory_vs_bound": worst}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0, help="first case number (to replay)")
    parser.add_argument("--verbose", action="store_true", help="print every case")
    args = parser.parse_args(argv)
    result = campaign(args.cases, args.seed, args.first, args.verbose)
    print(json.dumps({k: v for k, v in result.items() if k != "findings"}))
    for finding in result["findings"]:
        print("finding:", finding)
    return 1 if result["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
