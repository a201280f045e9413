"""The rbe command line: compress, info, and clean one-line errors."""
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

import rbe
from rbe import cli


@pytest.fixture
def dense_file(tmp_path):
    x = np.linspace(-1, 1, 256)
    rng = np.random.default_rng(0)
    tensors = {
        "fc1.weight": np.outer(np.sin(3 * x), np.cos(2 * x[:128])).astype(np.float32),
        "fc1.bias": rng.standard_normal(256).astype(np.float32),
        "head.weight": rng.standard_normal((10, 256)).astype(np.float32),
        "position": rng.standard_normal(7).astype(np.float32),
    }
    path = tmp_path / "dense.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def test_compress_writes_layers_and_keeps_other_tensors(dense_file, tmp_path, capsys):
    path, tensors = dense_file
    out = tmp_path / "small.safetensors"
    assert cli.main(["compress", str(path), "-o", str(out), "--k", "32", "--block", "32", "32",
                     "--transform", "dct"]) == 0
    loaded = rbe.load(out)
    assert set(loaded) == {"fc1", "head", "position"}
    fc1 = loaded["fc1"]
    assert isinstance(fc1, rbe.HybridLinear) and fc1.grid.block == (32, 32)
    assert (fc1.counts == 32).all()
    np.testing.assert_array_equal(fc1.bias, tensors["fc1.bias"])
    W = tensors["fc1.weight"]
    assert np.sqrt(np.mean((fc1.to_dense() - W) ** 2)) < 0.01 * W.std()
    np.testing.assert_array_equal(loaded["position"], tensors["position"])
    report = capsys.readouterr().out
    assert "fc1.weight" in report and "head.weight" in report and "total:" in report


def test_compress_to_a_ratio(dense_file, tmp_path):
    path, tensors = dense_file
    out = tmp_path / "small.safetensors"
    assert cli.main(["compress", str(path), "-o", str(out), "--ratio", "16", "--block", "16",
                     "16", "--no-basis", "--precision", "float16"]) == 0
    fc1, head = rbe.load(out)["fc1"], rbe.load(out)["head"]
    assert fc1.nbytes <= (256 * 128 + 256) * 4 / 16 and head.nbytes <= 10 * 256 * 4 / 16
    assert not fc1.has_basis and fc1.precision == "float16" and len(set(fc1.counts)) > 1


def test_compress_to_code_blocks_with_calibration(dense_file, tmp_path, capsys):
    path, tensors = dense_file
    rng = np.random.default_rng(1)
    X = rng.standard_normal((500, 128)) * np.logspace(0, -1.5, 128)
    moments = {"fc1": rbe.calibration.InputMoments(X.mean(0), X.T @ X / 500, 500)}
    rbe.calibration.save(tmp_path / "moments.safetensors", moments)
    outputs = {}
    for extra in ([], ["--calibration", str(tmp_path / "moments.safetensors")]):
        out = tmp_path / f"code{len(extra)}.safetensors"
        assert cli.main(["compress", str(path), "-o", str(out), "--kind", "code", "--bits", "2",
                         "--state-bits", "9", *extra]) == 0
        outputs[bool(extra)] = rbe.load(out)
    plain, calibrated = outputs[False]["fc1"], outputs[True]["fc1"]
    assert isinstance(plain, rbe.CodeLinear) and plain.bits == 2 and plain.state_bits == 9
    assert isinstance(outputs[True]["head"], rbe.CodeLinear)      # coded without moments
    W = tensors["fc1.weight"]

    def output_error(layer):
        return np.sum((X @ (layer.to_dense() - W).T) ** 2)
    assert output_error(calibrated) < output_error(plain)
    assert "fc1.weight" in capsys.readouterr().out


def test_compress_refuses_moments_of_another_width(dense_file, tmp_path, capsys):
    path, _ = dense_file
    moments = {"fc1": rbe.calibration.InputMoments(np.zeros(64), np.eye(64), 10)}
    rbe.calibration.save(tmp_path / "m.safetensors", moments)
    assert cli.main(["compress", str(path), "-o", str(tmp_path / "o.safetensors"), "--kind",
                     "code", "--calibration", str(tmp_path / "m.safetensors")]) == 1
    assert "64 features" in capsys.readouterr().err


def test_compress_npz(tmp_path):
    path = tmp_path / "dense.npz"
    np.savez(path, w=np.ones((40, 30), np.float32))
    out = tmp_path / "out.safetensors"
    assert cli.main(["compress", str(path), "-o", str(out), "--k", "8"]) == 0
    np.testing.assert_allclose(rbe.load(out)["w"].to_dense(), 1.0, atol=1e-5)


def test_info_lists_layers(dense_file, tmp_path, capsys):
    path, _ = dense_file
    out = tmp_path / "small.safetensors"
    cli.main(["compress", str(path), "-o", str(out), "--k", "16"])
    capsys.readouterr()
    assert cli.main(["info", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    fc1 = next(line for line in lines if line.startswith("fc1 "))
    assert "HybridLinear" in fc1 and "(256, 128)" in fc1 and "64x64" in fc1
    assert lines[-1].startswith("total:")


@pytest.mark.parametrize("obj", [
    rbe.CodeLinear(48, 32, bits=2, state_bits=8),
    rbe.FusedLinear(48, 32, block=(16, 8), seed=0),
    rbe.HybridLinear(48, 32, block=(16, 8), k=4, seed=0),
    rbe.encode(np.ones((32, 48)), block=(16, 8), k=2),
])
def test_info_lists_a_single_saved_object(obj, tmp_path, capsys):
    path = tmp_path / "one.safetensors"
    rbe.save(path, obj)
    assert cli.main(["info", str(path)]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith("layer ") and type(obj).__name__ in line
    assert "(32, 48)" in line and "x".join(map(str, obj.block)) in line
    assert f"{obj.nbytes:,d}" in line


@pytest.mark.parametrize("argv, message", [
    (["info", "missing.safetensors"], "No such file"),
    (["compress", "missing.safetensors", "-o", "x.safetensors"], "No such file"),
    (["info", "{dense}"], "no rbe header"),
    (["compress", "{garbage}", "-o", "x.safetensors"], "not a valid safetensors file"),
    (["compress", "{dense}", "-o", "x.safetensors", "--k", "0"], "k must be"),
])
def test_errors_print_one_line_and_exit_nonzero(dense_file, tmp_path, run_python, argv, message):
    path, _ = dense_file
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(100))
    done = run_python(None, *[a.format(dense=path, garbage=garbage) for a in argv], module="rbe")
    assert done.returncode == 1
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def write_npz(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


def corrupt_deflate_stream(path):
    """The .npz with bytes in the middle of its first compressed member flipped."""
    data = bytearray(path.read_bytes())
    for i in range(200, 240):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make_input, output, message", [
    (lambda d: d / "cut.npz", "out.safetensors", "not a valid .npz file"),
    (lambda d: corrupt_deflate_stream(write_npz(d / "bad.npz", w=np.arange(4096.0))),
     "out.safetensors", "not a valid .npz file"),
    (lambda d: write_npz(d / "ok.npz", w=np.ones((16, 16))), "missing/out.safetensors",
     "No such file or directory"),
    (lambda d: write_npz(d / "ok.npz", w=np.ones((16, 16))), ".", "Is a directory"),
    (lambda d: write_npz(d / "twice.npz", **{"a.weight": np.ones((16, 16)), "a": np.ones(3)}),
     "out.safetensors", "tensors 'a.weight' and 'a' would both be stored as 'a'"),
    (lambda d: write_npz(d / "twice.npz", **{"w": np.ones((8, 8)), "x.y": np.ones(3),
                                             "x/y": np.ones(4)}),
     "out.safetensors", "would both be stored as 'x.y'"),
])
def test_compress_errors_are_one_line(tmp_path, run_python, make_input, output, message):
    write_npz(tmp_path / "full.npz", w=np.random.default_rng(0).standard_normal((64, 64)))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "full.npz").read_bytes()[:3000])
    source = make_input(tmp_path)
    done = run_python(None, "compress", str(source), "-o", str(tmp_path / output), "--k", "4",
                      "--block", "8", "8", module="rbe")
    assert done.returncode == 1, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_usage_errors_exit_2(run_python):
    done = run_python(None, "compress", "x.npz", module="rbe")
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_info_escapes_names_and_handles_zero_size_tensors(tmp_path, capsys):
    path = tmp_path / "names.safetensors"
    hostile = "evil\x1b[2J\nforged line\u202e"
    rbe.save(path, {hostile: np.zeros((0, 4), np.float32), "ok": np.zeros(0, np.uint8)})
    assert cli.main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "forged line" in out
    assert "evil\\x1b[2J\\nforged line\\u202e" in out
    assert len(out.splitlines()) == 4                # title, two entries, total
