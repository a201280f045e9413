"""rbe.save / rbe.load: round trips, and every kind of malformed file rejected with FormatError.

Malformed files are loaded in a child process, so a crash (a signal) cannot pass for a clean
error: the child must report a FormatError for each and exit normally.
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
for path in sys.argv[1:]:
    try:
        rbe.load(path)
        print("loaded")
    except rbe.FormatError as exc:
        print("FormatError:", repr(str(exc)))
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


@pytest.mark.parametrize("name", ["hybrid", "seeded", "matrix", "embedding"])
def test_load_returns_the_object_that_was_saved(layers, tmp_path, name):
    rbe.save(tmp_path / "one.safetensors", layers[name])
    loaded = rbe.load(tmp_path / "one.safetensors")
    assert type(loaded) is type(layers[name])
    if name == "matrix":
        np.testing.assert_array_equal(loaded.decode(), layers[name].decode())
    elif name == "embedding":
        np.testing.assert_array_equal(loaded, layers[name])
    else:
        x = np.random.default_rng(2).standard_normal((2, 100)).astype(np.float32)
        np.testing.assert_array_equal(loaded.forward(x), layers[name].forward(x))


def test_load_returns_a_dict_of_one_entry_when_one_was_saved(layers, tmp_path):
    rbe.save(tmp_path / "dict.safetensors", {"layer": layers["hybrid"]})
    loaded = rbe.load(tmp_path / "dict.safetensors")
    assert isinstance(loaded, dict) and list(loaded) == ["layer"]
    assert isinstance(loaded["layer"], rbe.HybridLinear)


def test_a_single_layer_file_written_before_the_single_flag_loads_as_a_dict():
    """format_v2_one_layer.safetensors was written by rbe.save(path, layer) before files
    recorded that one object was saved; it stays a dict with the layer under "layer"."""
    data = Path(__file__).parent / "data"
    loaded = rbe.load(data / "format_v2_one_layer.safetensors")
    assert isinstance(loaded, dict) and list(loaded) == ["layer"]
    with np.load(data / "format_v2_one_layer_expected.npz") as expected:
        np.testing.assert_array_equal(loaded["layer"].forward(expected["x"]), expected["y"])


@pytest.mark.parametrize("single, message", [
    ("yes", "must be true or false"),
    (1, "must be true or false"),
    (True, "true only with one entry; got True with 6 entries"),
])
def test_a_malformed_single_flag_is_a_format_error(saved, tmp_path, single, message):
    path = tmp_path / "flag.safetensors"
    path.write_bytes(edit_rbe_header(saved.read_bytes(), lambda h: h.update(single=single)))
    with pytest.raises(rbe.FormatError, match=message):
        rbe.load(path)


def test_file_is_plain_safetensors_with_a_versioned_header(saved):
    from safetensors import safe_open
    with safe_open(str(saved), framework="np") as f:
        header = json.loads(f.metadata()["rbe"])
        keys = set(f.keys())
    assert header["format"] == "rbe" and header["version"] == rbe.io.VERSION == 2
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
    checksum = hashlib.sha256(array.tobytes()).hexdigest()
    header["entries"]["hybrid"]["tensors"][part]["sha256"] = checksum
    container["__metadata__"]["rbe"] = json.dumps(header)
    return join(container, payload)


def out_of_range_index(data: bytes) -> bytes:
    return rewrite_tensor(data, "index", np.uint16, lambda a: a.__setitem__(0, 60000))


def nan_values(data: bytes) -> bytes:
    return rewrite_tensor(data, "values", np.float32, lambda a: a.__setitem__(3, np.nan))


def forge_seed_grid(data: bytes) -> bytes:
    return edit_rbe_header(data, lambda h: h["entries"]["seeded"]["config"].update(in_features=300))


_SAFETENSORS_NAMES = {"float16": "F16", "float32": "F32", "float64": "F64", "int64": "I64",
                      "uint64": "U64", "uint16": "U16", "uint8": "U8", "int32": "I32"}


def replace_part(data: bytes, name: str, part: str, array) -> bytes:
    """The file with entry name's part replaced by array, container, header and checksum
    rewritten to agree (a consistent forgery: no cast or broadcast may accept it)."""
    container, payload = split(data)
    header = json.loads(container.pop("__metadata__")["rbe"])
    arrays = {key: payload[info["data_offsets"][0]:info["data_offsets"][1]]
              for key, info in container.items()}
    array = np.ascontiguousarray(array)
    arrays[f"{name}/{part}"] = array.tobytes()
    container[f"{name}/{part}"] = {"dtype": _SAFETENSORS_NAMES[array.dtype.name],
                                   "shape": list(array.shape)}
    header["entries"][name]["tensors"][part] = {
        "dtype": array.dtype.name, "shape": list(array.shape),
        "sha256": hashlib.sha256(array.tobytes()).hexdigest()}
    offset = 0
    for key in container:
        container[key]["data_offsets"] = [offset, offset + len(arrays[key])]
        offset += len(arrays[key])
    container["__metadata__"] = {"rbe": json.dumps(header)}
    return join(container, b"".join(arrays[key] for key in container if key != "__metadata__"))


def stored_part(data: bytes, name: str, part: str) -> np.ndarray:
    container, payload = split(data)
    info = container[f"{name}/{part}"]
    dtype = {v: k for k, v in _SAFETENSORS_NAMES.items()}[info["dtype"]]
    begin, end = info["data_offsets"]
    return np.frombuffer(payload[begin:end], dtype).reshape(info["shape"]).copy()


def edit_rbe_text(data: bytes, edit) -> bytes:
    """The file with the rbe header's JSON text passed through edit (raw JSON, which
    json.dumps could not write)."""
    container, payload = split(data)
    container["__metadata__"]["rbe"] = edit(container["__metadata__"]["rbe"])
    return join(container, payload)


def with_part_values(name, part, edit):
    def forge(data):
        array = stored_part(data, name, part)
        edit(array)
        return replace_part(data, name, part, array)
    return forge


def repeated_position(data: bytes) -> bytes:
    return rewrite_tensor(data, "index", np.uint16, lambda a: a.__setitem__(1, a[0]))


def ragged_counts(data: bytes, counts) -> bytes:
    """The hybrid entry with per-block counts instead of the config's k."""
    data = edit_rbe_header(data, lambda h: h["entries"]["hybrid"]["config"].pop("k"))
    return replace_part(data, "hybrid", "counts", np.asarray(counts, np.uint8))


def version_1_part(part, edit):
    """The version-1 file of tests/data with one part of its layer changed."""
    def forge(data):
        v1 = (Path(__file__).parent / "data" / "format_v1.safetensors").read_bytes()
        return replace_part(v1, "layer", part, edit(stored_part(v1, "layer", part)))
    return forge


def set_kind(value):
    return lambda d: edit_rbe_header(d, lambda h: h["entries"]["hybrid"].update(kind=value))


MALFORMED = {
    # each finding of the fuzzing campaign (tests/fuzz_load.py), then the older cases
    "deeply nested header": (lambda d: edit_rbe_text(d, lambda t: t.replace(
        '"version": 2', '"version": ' + "[" * 100_000 + "]" * 100_000)), "nested deeper"),
    "unbalanced nesting": (lambda d: edit_rbe_text(d, lambda t: t.replace(
        '"version": 2', '"version": ' + "[" * 100_000)), "unbalanced"),
    "integer of 5000 digits": (lambda d: edit_rbe_text(d, lambda t: t.replace(
        '"version": 2', '"version": ' + "9" * 5000)), "longer than 32 characters"),
    "F8_E4M3 tensor": (lambda d: edit_container(
        d, lambda c: c["hybrid/values"].update(dtype="F8_E4M3")), "dtype 'F8_E4M3'"),
    "F8_E5M2 tensor": (lambda d: edit_container(
        d, lambda c: c["hybrid/values"].update(dtype="F8_E5M2")), "dtype 'F8_E5M2'"),
    "kind is an object": (set_kind({}), "unknown kind {}"),
    "kind is a list": (set_kind([]), "unknown kind []"),
    "block of Infinity": (lambda d: edit_rbe_text(d, lambda t: t.replace(
        '"block": [32, 32]', '"block": [Infinity, 8]', 1)), "Infinity is not a JSON number"),
    "number overflowing float": (lambda d: edit_rbe_text(d, lambda t: t.replace(
        '"tau": 1.0', '"tau": 1e999', 1)), "overflows"),
    "repeated key": (lambda d: edit_rbe_text(d, lambda t: t.replace(
        '"version": 2', '"version": 1, "version": 1')), "repeats a key"),
    "giant layer in the config": (lambda d: edit_rbe_header(d, lambda h: h["entries"]["seeded"][
        "config"].update(in_features=2**31 - 1, out_features=2**31 - 1)), "more than the limit"),
    "giant matrix in the config": (lambda d: edit_rbe_header(d, lambda h: h["entries"]["hybrid"][
        "config"].update(shape=[2**31 - 1, 2**31 - 1])), "more than the limit"),
    "giant forged tensor shape": (lambda d: edit_container(
        d, lambda c: c["hybrid/values"].update(shape=[1 << 20, 1 << 20])), "needs 4398046511104"),
    "float64 bias of 1e300": (lambda d: replace_part(d, "hybrid", "bias", np.full(70, 1e300)),
                              "tensor 'bias' must be float32"),
    "float32 bias of 3.4e38": (with_part_values("hybrid", "bias", lambda a: a.fill(3.4e38)),
                               "beyond"),
    "values of 3.4e38": (with_part_values("hybrid", "values", lambda a: a.__setitem__(0, 3.4e38)),
                         "tensor 'values' holds values beyond"),
    "coefficients of -3.4e38": (with_part_values("hybrid", "coef", lambda a: a.fill(-3.4e38)),
                                "tensor 'coef' holds values beyond"),
    "alpha of 3.4e38": (with_part_values("seeded", "alpha", lambda a: a.fill(3.4e38)),
                        "tensor 'alpha' holds values beyond"),
    "beta of 3.4e38": (with_part_values("seeded", "beta", lambda a: a.fill(3.4e38)),
                       "tensor 'beta' holds values beyond"),
    "seed words as int64": (lambda d: replace_part(
        d, "seeded", "hi", stored_part(d, "seeded", "hi").view(np.int64)), "must be uint64"),
    "seed words as float64": (lambda d: replace_part(
        d, "seeded", "lo", stored_part(d, "seeded", "lo").astype(np.float64)), "must be uint64"),
    "bias of shape (1,)": (lambda d: replace_part(d, "hybrid", "bias", np.ones(1, np.float32)),
                           "the config makes axis 0 (out) 70"),
    "NaN master copies": (with_part_values("seeded", "lo", lambda a: a.fill(0x7FC00000)),
                          "master copies"),
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
        d, lambda c: c["hybrid/values"].update(data_offsets=[0, 1 << 40])),
        "not a valid safetensors"),
    "flipped payload byte": (flip_payload_byte, "fails its checksum"),
    "unknown version": (lambda d: edit_rbe_header(d, lambda h: h.update(version=99)),
                        "unsupported format version 99"),
    "not rbe": (lambda d: edit_container(d, lambda c: c.update(__metadata__={"x": "y"})),
                "no rbe header"),
    "header not json": (lambda d: edit_container(
        d, lambda c: c["__metadata__"].update(rbe="{nope}")), "not valid JSON"),
    "unknown kind": (lambda d: edit_rbe_header(
        d, lambda h: h["entries"]["hybrid"].update(kind="pickle")), "unknown kind 'pickle'"),
    "unknown part": (lambda d: edit_rbe_header(
        d, lambda h: h["entries"]["hybrid"]["tensors"].update(
            extra=h["entries"]["hybrid"]["tensors"]["coef"])),
        "unknown fields ['extra']"),
    "missing part": (lambda d: edit_rbe_header(
        d, lambda h: h["entries"]["hybrid"]["tensors"].pop("index")), "missing ['index']"),
    "inconsistent config": (forge_consistently, "entry 'hybrid'"),
    "index out of range": (out_of_range_index, "entry 'hybrid'"),
    "nan parameters": (nan_values, "NaN or inf"),
    # the ragged hybrid layout of version 2
    "repeated position": (repeated_position, "repeats a position"),
    "counts not adding up": (lambda d: ragged_counts(d, np.full(12, 15)), "adds up to 180"),
    "counts and k": (lambda d: replace_part(d, "hybrid", "counts", np.full(12, 16, np.uint8)),
                     "not both"),
    "count beyond a block": (lambda d: ragged_counts(d, [0] * 11 + [192]), "more entries than"),
    "no transform": (lambda d: edit_rbe_header(
        d, lambda h: h["entries"]["matrix"]["config"].pop("transform")), "neither"),
    "unknown transform": (lambda d: edit_rbe_header(
        d, lambda h: h["entries"]["matrix"]["config"].update(transform="fft")), "'fft'"),
    "unknown precision": (lambda d: edit_rbe_header(
        d, lambda h: h["entries"]["matrix"]["config"].update(precision="int4")), "'int4'"),
    "lone factor": (lambda d: replace_part(d, "hybrid", "factor_out",
                                           np.zeros((70, 2), np.float32)),
                    "come together"),
    "factors of 2**40": (lambda d: replace_part(
        replace_part(d, "hybrid", "factor_out", np.full((70, 1), 2.0**40, np.float32)),
        "hybrid", "factor_in", np.full((100, 1), 2.0**40, np.float32)), "beyond 1.07e+09"),
    "float16 values of a float32 layer": (lambda d: replace_part(
        d, "hybrid", "values", stored_part(d, "hybrid", "values").astype(np.float16)),
        "must be float32"),
    "uint8 positions of 32 x 32 blocks": (lambda d: replace_part(
        d, "hybrid", "index", stored_part(d, "hybrid", "index").astype(np.uint8)),
        "must be uint16"),
    "fewer values than k gives": (lambda d: replace_part(
        d, "hybrid", "values", stored_part(d, "hybrid", "values")[1:]), "(entries) 192"),
    "version-1 values ragged": (version_1_part("values", np.ravel), "with 2 dimension(s)"),
    "version-1 index narrower than values": (version_1_part("index", lambda a: a[:, 1:]),
                                             "axis 1 (k) 19"),
}


@pytest.fixture(scope="module")
def malformed_outcomes(saved, tmp_path_factory, python_in_child):
    """What loading each MALFORMED file did, all loaded by one child process (a crash there
    fails every case rather than passing for a clean error)."""
    folder = tmp_path_factory.mktemp("malformed")
    paths = []
    for i, case in enumerate(sorted(MALFORMED)):
        paths.append(str(folder / f"{i}.safetensors"))
        with open(paths[-1], "wb") as f:
            f.write(MALFORMED[case][0](saved.read_bytes()))
    done = python_in_child(LOAD_IN_CHILD, *paths, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    return dict(zip(sorted(MALFORMED), done.stdout.splitlines()))


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_raises_format_error_in_child(malformed_outcomes, case):
    outcome = malformed_outcomes[case]
    assert outcome.startswith("FormatError:"), outcome
    assert MALFORMED[case][1] in outcome


def test_format_error_is_a_value_error():
    assert issubclass(rbe.FormatError, ValueError)


PEAK_IN_CHILD = """
import resource, sys
limit = 2 << 30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import rbe

def status(field):            # kB; VmHWM is this process's own peak (ru_maxrss is not after exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")              # the peak restarts from here
before = status("VmRSS")
try:
    rbe.load(sys.argv[1])
except rbe.FormatError:
    print(1024 * (status("VmHWM") - before))
    sys.exit(3)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
@pytest.mark.parametrize("case", ["giant layer in the config", "giant matrix in the config",
                                  "giant forged tensor shape", "forged offsets",
                                  "deeply nested header", "integer of 5000 digits"])
def test_rejected_file_stays_within_the_memory_bound(saved, tmp_path, run_python, case):
    """Peak memory of a rejected file <= 64 MiB + 4 x its size (the forged sizes are
    refused before anything is allocated)."""
    data = MALFORMED[case][0](saved.read_bytes())
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    done = run_python(PEAK_IN_CHILD, str(path))
    assert done.returncode == 3, done.stderr[-2000:]
    assert int(done.stdout) <= (64 << 20) + 4 * len(data)


def test_a_large_layer_keeping_a_regrow_schedule_loads_without_dense_gradients(tmp_path,
                                                                              run_python):
    """A small file may describe a 2^20 x 2^20 layer of 256 x 256 blocks with no coefficients;
    its regrow schedule must not allocate the (out, in) gradient array on load (4 TiB)."""
    W = np.ones((64, 64), np.float32)
    rbe.save(tmp_path / "small.safetensors",
             rbe.HybridLinear.from_dense(W, block=(16, 16), k=1, basis=False, transform="dct"))
    data = edit_rbe_header((tmp_path / "small.safetensors").read_bytes(), lambda h: h[
        "entries"]["layer"]["config"].update(shape=[1 << 20, 1 << 20], block=[256, 256], k=0,
                                             regrow=[5, 0.3, None]))
    data = replace_part(data, "layer", "index", np.zeros(0, np.uint16))
    data = replace_part(data, "layer", "values", np.zeros(0, np.float32))
    (tmp_path / "large.safetensors").write_bytes(data)
    done = run_python(LOAD_IN_CHILD, str(tmp_path / "large.safetensors"))
    assert done.stdout.strip() == "loaded", done.stdout + done.stderr[-2000:]


def test_load_refuses_an_oversized_header_before_reading_it(saved, tmp_path):
    container, payload = split(saved.read_bytes())
    container["__metadata__"]["padding"] = " " * rbe.io.MAX_HEADER_BYTES
    path = tmp_path / "big.safetensors"
    path.write_bytes(join(container, payload))
    with pytest.raises(rbe.FormatError, match="exceeds the file .* or the limit"):
        rbe.load(path)


def test_zero_size_tensor_round_trips(tmp_path):
    rbe.save(tmp_path / "z.safetensors", {"empty": np.zeros((0, 3), np.float32)})
    assert rbe.load(tmp_path / "z.safetensors")["empty"].shape == (0, 3)


def test_loaded_parts_are_exact_and_writable(layers, saved):
    loaded = rbe.load(saved)
    assert loaded["embedding"].dtype == np.float64 and loaded["embedding"].flags.writeable
    assert loaded["seeded"].seeds.dtype == rbe.seeds.DTYPE


def test_save_into_a_missing_folder_or_onto_a_directory_is_an_os_error(layers, tmp_path):
    with pytest.raises(FileNotFoundError):
        rbe.save(tmp_path / "missing" / "x.safetensors", layers["hybrid"])
    with pytest.raises(IsADirectoryError):
        rbe.save(tmp_path, layers["hybrid"])


def test_version_1_seed_layer_loads_as_the_original_parameterisation():
    """format_v1_fused.safetensors was written by the version-1 writer (per-layer alpha and
    beta only); the expected outputs were computed by that version."""
    data = os.path.join(os.path.dirname(__file__), "data")
    layer = rbe.load(os.path.join(data, "format_v1_fused.safetensors"))["seeded"]
    assert not layer.center and not layer.block_scale and layer.scale is None
    assert set(layer.parameters()) == {"r", "theta", "alpha", "beta", "bias"}
    assert layer.tau == 0.05
    with np.load(os.path.join(data, "format_v1_fused_expected.npz")) as expected:
        np.testing.assert_allclose(layer.to_dense(), expected["dense"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(layer.forward(expected["x"]), expected["y"], rtol=1e-5,
                                   atol=1e-5)


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


@pytest.mark.parametrize("make", [
    lambda: rbe.HybridLinear(40, 24, block=(8, 8), k=16, seed=0, precision="float16"),
    lambda: rbe.FusedLinear(40, 24, block=(8, 8), seed=0),
])
def test_layer_from_arrays_checks_like_load(make):
    layer = make()
    config, arrays = layer._state()
    kind = "fused_linear" if isinstance(layer, rbe.FusedLinear) else "hybrid_linear"
    rebuilt = rbe.io.layer_from_arrays(kind, config, arrays)
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    np.testing.assert_array_equal(rebuilt.forward(x), layer.forward(x))
    first = next(iter(arrays))
    forged = {**arrays, first: arrays[first][:-1]}               # a shape the config forbids
    with pytest.raises(rbe.FormatError, match=first):
        rbe.io.layer_from_arrays(kind, config, forged)
    with pytest.raises(rbe.FormatError, match="extra"):
        rbe.io.layer_from_arrays(kind, {**config, "extra": 1}, arrays)


# ---- whole-model files ----------------------------------------------------------------------

def write_model(directory, layers, tensors, shards):
    """A whole-model file whose layers' parts and other tensors (undescribed, as transformers
    writes them) are spread over ``shards`` files holding the same header."""
    from safetensors.numpy import save_file
    header, parts = rbe.io.model_entries(layers)
    everything = sorted({**parts, **tensors}.items())
    paths = []
    for shard in range(shards):
        paths.append(directory / f"model-{shard}.safetensors")
        save_file(dict(everything[shard::shards]), paths[-1], metadata={"rbe": header})
    return paths


def test_a_whole_model_loads_from_its_shards(layers, tmp_path):
    model_layers = {"enc.fc": layers["hybrid"], "enc.seeded": layers["seeded"]}
    tensors = {"embed.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
               "flags": np.array([1, 0, 1], np.int8)}
    paths = write_model(tmp_path, model_layers, tensors, shards=3)
    loaded, others = rbe.io.load_model(paths)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 100)).astype(np.float32)
    for name, layer in model_layers.items():
        np.testing.assert_array_equal(loaded[name].forward(x), layer.forward(x))
    assert set(others) == set(tensors)
    for key, array in tensors.items():
        assert (others[key].dtype, others[key].shape) == (array.dtype.name, array.shape)
        assert bytes(others[key].data) == array.tobytes()
    assert rbe.io.load_model(paths, tensors=False)[1] == {}


def test_shards_must_agree(layers, tmp_path):
    paths = write_model(tmp_path, {"fc": layers["hybrid"]}, {"t": np.ones(2, np.float32)}, 2)
    (tmp_path / "other").mkdir()
    other = write_model(tmp_path / "other", {"fc": layers["seeded"]}, {}, 1)
    with pytest.raises(rbe.FormatError, match="different rbe headers"):
        rbe.io.load_model([*paths, *other])
    with pytest.raises(rbe.FormatError, match="stored in two shards"):
        rbe.io.load_model([paths[0], paths[0]])
    with pytest.raises(rbe.FormatError, match="missing"):
        rbe.io.load_model(paths[:1])
