"""rbe.save / rbe.load: round trips, and every kind of malformed file rejected with FormatError.

Malformed files are loaded in a child process, so a crash (a signal) cannot pass for a clean
error: the child must exit through its FormatError handler.
"""
import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import rbe

LOAD_IN_CHILD = """
import sys
try:
    import resource                     # absurd allocations fail fast where it exists (POSIX)
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
except ImportError:
    pass
import rbe
try:
    rbe.load(sys.argv[1])
except rbe.FormatError as exc:
    print("FormatError:", exc)
    sys.exit(3)
print("loaded")
"""


@pytest.fixture(scope="module")
def layers():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((70, 100)).astype(np.float32)
    return {
        "hybrid": rbe.HybridLinear.from_dense(W, bias=rng.standard_normal(70).astype(np.float32),
                                              block=(32, 32), k=16),
        "matrix": rbe.encode(W, block=(32, 32), k=8, transform="dct"),
        "scratch": rbe.HybridLinear(100, 70, block=(16, 16), k=4, bias=False, seed=1),
        "seeded": rbe.FusedLinear(100, 70, block=(16, 16), seed=2),
        "seeded_nobias": rbe.FusedLinear(100, 70, block=(32, 32), bias=False, seed=3),
        "embedding": rng.standard_normal((10, 3)),
    }


@pytest.fixture(scope="module")
def saved(layers, tmp_path_factory):
    path = tmp_path_factory.mktemp("io") / "model.safetensors"
    rbe.save(path, layers)
    return path


def test_round_trip(layers, saved):
    loaded = rbe.load(saved)
    assert set(loaded) == set(layers)
    x = np.random.default_rng(1).standard_normal((3, 100)).astype(np.float32)
    for name in ("hybrid", "scratch", "seeded", "seeded_nobias"):
        assert type(loaded[name]) is type(layers[name])
        np.testing.assert_array_equal(loaded[name].forward(x), layers[name].forward(x))
    np.testing.assert_array_equal(loaded["matrix"].decode(), layers["matrix"].decode())
    np.testing.assert_array_equal(loaded["embedding"], layers["embedding"])
    np.testing.assert_array_equal(loaded["seeded"].seeds, layers["seeded"].seeds)


def test_single_layer_is_saved_as_layer(layers, tmp_path):
    rbe.save(tmp_path / "one.safetensors", layers["hybrid"])
    assert list(rbe.load(tmp_path / "one.safetensors")) == ["layer"]


def test_file_is_plain_safetensors_with_a_versioned_header(saved):
    from safetensors import safe_open
    with safe_open(str(saved), framework="np") as f:
        header = json.loads(f.metadata()["rbe"])
        keys = set(f.keys())
    assert header["format"] == "rbe" and header["version"] == 2
    entry = header["entries"]["hybrid"]
    assert entry["kind"] == "hybrid_linear" and entry["config"]["block"] == [32, 32]
    assert {f"hybrid/{part}" for part in entry["tensors"]} <= keys


def test_save_rejects_what_it_cannot_store(tmp_path):
    with pytest.raises(ValueError, match="not an rbe layer"):
        rbe.save(tmp_path / "x.safetensors", {"a": object()})
    with pytest.raises(ValueError, match="without '/'"):
        rbe.save(tmp_path / "x.safetensors", {"a/b": np.zeros(2)})
    with pytest.raises(ValueError, match="nothing to save"):
        rbe.save(tmp_path / "x.safetensors", {})


def test_missing_file_is_a_file_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        rbe.load(tmp_path / "absent.safetensors")


# ---- malformed files ------------------------------------------------------------------------

def split(data: bytes):
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(container: dict, payload: bytes) -> bytes:
    raw = json.dumps(container).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def edit_rbe_header(data: bytes, edit) -> bytes:
    container, payload = split(data)
    header = json.loads(container["__metadata__"]["rbe"])
    edit(header)
    container["__metadata__"]["rbe"] = json.dumps(header)
    return join(container, payload)


def edit_container(data: bytes, edit) -> bytes:
    container, payload = split(data)
    edit(container)
    return join(container, payload)


def flip_payload_byte(data: bytes) -> bytes:
    container, payload = split(data)
    begin, end = container["hybrid/values"]["data_offsets"]
    payload = bytearray(payload)
    payload[(begin + end) // 2] ^= 0x40
    return join(container, bytes(payload))


def swap_shape(container):
    container["hybrid/values"]["shape"] = container["hybrid/values"]["shape"] + [1]


def forge_consistently(data: bytes) -> bytes:
    """Header and container agree, checksums too, but the block grid does not fit the arrays."""
    return edit_rbe_header(data, lambda h: h["entries"]["hybrid"]["config"].update(block=[16, 16]))


def rewrite_tensor(data: bytes, part: str, dtype, edit) -> bytes:
    """Change the bytes of hybrid/<part> and re-sign them: only rbe's own checks can object."""
    container, payload = split(data)
    header = json.loads(container["__metadata__"]["rbe"])
    begin, end = container[f"hybrid/{part}"]["data_offsets"]
    array = np.frombuffer(payload[begin:end], dtype).copy()
    edit(array)
    payload = payload[:begin] + array.tobytes() + payload[end:]
    header["entries"]["hybrid"]["tensors"][part]["sha256"] = hashlib.sha256(array.tobytes()).hexdigest()
    container["__metadata__"]["rbe"] = json.dumps(header)
    return join(container, payload)


def out_of_range_index(data: bytes) -> bytes:
    return rewrite_tensor(data, "index", np.uint16, lambda a: a.__setitem__(0, 60000))


def nan_values(data: bytes) -> bytes:
    return rewrite_tensor(data, "values", np.float32, lambda a: a.__setitem__(3, np.nan))


def forge_seed_grid(data: bytes) -> bytes:
    return edit_rbe_header(data, lambda h: h["entries"]["seeded"]["config"].update(in_features=300))


MALFORMED = {
    "seed grid mismatch": (forge_seed_grid, "entry 'seeded'"),
    "empty": (lambda d: b"", "not a valid safetensors file"),
    "garbage": (lambda d: os.urandom(4096), "not a valid safetensors file"),
    "truncated header": (lambda d: d[:40], "not a valid safetensors file"),
    "truncated payload": (lambda d: d[:-100], "not a valid safetensors file"),
    "huge header length": (lambda d: struct.pack("<Q", 1 << 60) + d[8:], "not a valid safetensors"),
    "forged dtype": (lambda d: edit_container(d, lambda c: c["hybrid/values"].update(dtype="F64")),
                     "not a valid safetensors file"),
    "forged shape": (lambda d: edit_container(d, swap_shape), "the header says"),
    "forged offsets": (lambda d: edit_container(
        d, lambda c: c["hybrid/values"].update(data_offsets=[0, 1 << 40])), "not a valid safetensors"),
    "flipped payload byte": (flip_payload_byte, "fails its checksum"),
    "unknown version": (lambda d: edit_rbe_header(d, lambda h: h.update(version=99)),
                        "unsupported format version 99"),
    "not rbe": (lambda d: edit_container(d, lambda c: c.update(__metadata__={"x": "y"})),
                "no rbe header"),
    "header not json": (lambda d: edit_container(
        d, lambda c: c["__metadata__"].update(rbe="{nope")), "not valid JSON"),
    "unknown kind": (lambda d: edit_rbe_header(
        d, lambda h: h["entries"]["hybrid"].update(kind="pickle")), "unknown kind 'pickle'"),
    "missing tensor": (lambda d: edit_rbe_header(
        d, lambda h: h["entries"]["hybrid"]["tensors"].update(extra=h["entries"]["hybrid"]["tensors"]["coef"])),
        "tensor 'extra' is missing"),
    "inconsistent config": (forge_consistently, "entry 'hybrid'"),
    "index out of range": (out_of_range_index, "entry 'hybrid'"),
    "nan parameters": (nan_values, "NaN or inf"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_raises_format_error_in_child(saved, tmp_path, run_python, case):
    corrupt, message = MALFORMED[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(corrupt(saved.read_bytes()))
    done = run_python(LOAD_IN_CHILD, str(path))
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr[-2000:])
    assert message in done.stdout


def test_format_error_is_a_value_error():
    assert issubclass(rbe.FormatError, ValueError)


def test_version_1_files_load_converted(tmp_path):
    """format_v1.safetensors was written by the version-1 writer (k entries per block with zero
    padding, unnormalised basis); format_v1_dense.npz holds what it decoded to then."""
    data = Path(__file__).parent / "data"
    loaded = rbe.load(data / "format_v1.safetensors")
    with np.load(data / "format_v1_dense.npz") as expected:
        layer, matrix = loaded["layer"], loaded["matrix"]
        np.testing.assert_allclose(layer.to_dense(), expected["layer"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(layer.bias, expected["bias"])
        np.testing.assert_allclose(matrix.decode(), expected["matrix"], rtol=1e-5, atol=1e-5)
    assert (matrix.counts < 256).any()             # the padding of edge blocks is gone
    rbe.save(tmp_path / "v2.safetensors", loaded)
    again = rbe.load(tmp_path / "v2.safetensors")
    np.testing.assert_array_equal(again["layer"].to_dense(), layer.to_dense())
