"""rbe.calibration: files of input moments, round trip and refusals."""
import numpy as np
import pytest

import rbe
from rbe.calibration import InputMoments, load, save


def moments(n=6, seed=0):
    X = np.random.default_rng(seed).standard_normal((50, n))
    return InputMoments(X.mean(0), X.T @ X / 50, 50)


def test_round_trip_is_exact(tmp_path):
    original = {"encoder.fc1": moments(), "head": moments(3, 1)}
    save(tmp_path / "m.safetensors", original)
    loaded = load(tmp_path / "m.safetensors")
    assert sorted(loaded) == sorted(original)
    for name, m in original.items():
        np.testing.assert_array_equal(loaded[name].mean, m.mean)
        np.testing.assert_array_equal(loaded[name].second_moment, m.second_moment)
        assert loaded[name].count == m.count


def test_no_inputs_is_refused():
    with pytest.raises(ValueError, match="no inputs"):
        InputMoments.accumulate(np.zeros(3), np.zeros((3, 3)), 0)


def write(path, tensors):
    rbe.save(path, tensors)
    return path


@pytest.mark.parametrize("tensors, message", [
    ({"a.mean": np.zeros(3), "a.second_moment": np.eye(3)}, "lacks"),
    ({"a.mean": np.zeros(3), "a.second_moment": np.eye(4),
      "a.count": np.array([5], np.int64)}, "do not match"),
    ({"a.mean": np.zeros(3), "a.second_moment": np.eye(3),
      "a.count": np.array([0], np.int64)}, "do not match"),
    ({"a.mean": np.zeros(3), "a.second_moment": np.eye(3),
      "a.count": np.array([5.0])}, "do not match"),
])
def test_malformed_moments_are_refused(tmp_path, tensors, message):
    path = write(tmp_path / "m.safetensors", tensors)
    with pytest.raises(rbe.FormatError, match=message):
        load(path)


def test_a_layer_file_is_not_moments(tmp_path):
    path = write(tmp_path / "layer.safetensors", rbe.CodeLinear(16, 16, bits=2, state_bits=8))
    with pytest.raises(rbe.FormatError, match="not a file of input moments"):
        load(path)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save(path, {"a": moments()})
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(rbe.FormatError):
        load(path)
