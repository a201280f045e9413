"""CodeLinear and rbe.trellis: the decoder against an independent float64 reconstruction, the
Viterbi search against brute force, the rotations against scipy's Hadamard matrices, the
calibrated encoder against the uncalibrated one, gradients, files and bad input."""
import itertools
import threading

import numpy as np
import pytest
import scipy.fft
import scipy.linalg

import rbe
from rbe import _code, kernel, trellis
from rbe.code import CodeLinear

SIMD = kernel.simd_paths()
#: Relative error of float32 products against float64 oracles: sums of up to 400 products of
#: byte sums (0 .. 1020) and inputs, the centre (510) times the inputs' sum subtracted after.
PRODUCT_TOL = 5e-6


def rel(a, b):
    b = np.asarray(b, np.float64)
    return np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-300)


# ---- an independent decoder ----------------------------------------------------------------

def oracle_value(state):
    """The centred value of a state, in Python integers."""
    x = (state * 34038481 + 76625530) % 2**32
    return sum((x >> (8 * q)) & 255 for q in range(4)) - 510


def oracle_rotation(features, seed, side):
    """V (padded x padded, float64) with x' = V pad(x): an orthonormal DCT-II of the odd
    factor kron scipy's Hadamard matrix, times the signs."""
    padded = trellis.rotated_side(features)
    odd = padded
    while odd % 2 == 0:
        odd //= 2
    pow2 = padded // odd
    hadamard = scipy.linalg.hadamard(pow2) / np.sqrt(pow2)
    dct = scipy.fft.dct(np.eye(odd), norm="ortho", axis=0)
    return np.kron(dct, hadamard) * trellis.signs(seed, side, padded).astype(np.float64)


def oracle_dense(layer):
    """W (float64) from the stored parts alone: streams read bit by bit, circular windows,
    the hash, the scales, the rotations."""
    config, arrays = layer._state()
    k, L = config["bits"], config["state_bits"]
    codes = arrays["codes"]
    scale = np.ldexp(arrays["scale"].astype(np.float64), config["exponent"])
    R = np.zeros((codes.shape[0] * 16, codes.shape[1] * 16))
    for i, j in itertools.product(range(codes.shape[0]), range(codes.shape[1])):
        bits = np.unpackbits(codes[i, j], bitorder="little").astype(np.int64)
        circular = np.concatenate([bits, bits[:L]])
        for t in range(256):
            state = int((circular[t * k:t * k + L] << np.arange(L)).sum())
            R[16 * i + t // 16, 16 * j + t % 16] = oracle_value(state) / 147.800537109375
    R *= scale[:, None]
    rows = oracle_rotation(layer.out_features, layer.seed, trellis.OUTPUTS)
    cols = oracle_rotation(layer.in_features, layer.seed, trellis.INPUTS)
    return (rows.T @ R @ cols)[:layer.out_features, :layer.in_features]


# ---- decoding and products -------------------------------------------------------------------

#: (in_features, out_features, bits): odd factors 1, 3, 5, 7; a partial group of tile rows
SHAPES = [(40, 24, 2), (100, 130, 3), (384, 200, 4), (16, 300, 2)]


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: "x".join(map(str, s)))
def coded(request):
    n, m, k = request.param
    layer = CodeLinear(n, m, bits=k, state_bits=10, seed=3)
    return layer, oracle_dense(layer)


def test_to_dense_matches_the_independent_decoder(coded):
    layer, W = coded
    assert rel(layer.to_dense(), W) < 1e-6


@pytest.mark.parametrize("simd", SIMD)
@pytest.mark.parametrize("batch", [1, 3, 48, 50, 97])
def test_forward_matches_the_independent_decoder(coded, simd, batch):
    layer, W = coded
    X = np.random.default_rng(batch).standard_normal((batch, layer.in_features), np.float32)
    with kernel.use_simd(simd):
        Y = layer.forward(X)
    assert Y.dtype == np.float32 and Y.shape == (batch, layer.out_features)
    assert rel(Y, X.astype(np.float64) @ W.T + layer.bias) < PRODUCT_TOL


def test_forward_of_one_vector_and_float64():
    layer = CodeLinear(64, 48, bits=3, state_bits=9, seed=1)
    x = np.random.default_rng(0).standard_normal(64)
    y = layer.forward(x)
    assert y.dtype == np.float64 and y.shape == (48,)
    np.testing.assert_allclose(y, layer.forward(x[None].astype(np.float32))[0], rtol=1e-6)


def test_every_state_bits_decodes_alike():
    for L in (8, 12, 16):
        layer = CodeLinear(32, 32, bits=2, state_bits=L, seed=L)
        assert rel(layer.to_dense(), oracle_dense(layer)) < 1e-6


def test_results_do_not_depend_on_the_thread_count():
    layer = CodeLinear(512, 1024, bits=2, state_bits=10, seed=2)
    for batch in (1, 100):
        X = np.random.default_rng(batch).standard_normal((batch, 512), np.float32)
        with rbe.threads(1):
            one = layer.forward(X)
        with rbe.threads(2):
            assert rel(layer.forward(X), one) < PRODUCT_TOL


def test_python_threads_calling_one_layer():
    layer = CodeLinear(512, 1024, bits=2, state_bits=10, seed=2)
    inputs = [np.random.default_rng(i).standard_normal((i % 3 * 40 + 1, 512), np.float32)
              for i in range(8)]
    expected = [layer.forward(x) for x in inputs]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(5):
            results[i] = layer.forward(inputs[i])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        assert rel(got, want) < PRODUCT_TOL


# ---- the encoder ------------------------------------------------------------------------------

def brute_force(x, values, k, L, overlap):
    """The least squared error over every path (free) or every circular stream whose first
    state's low L - k bits are ``overlap``."""
    steps, best = len(x), np.inf
    if overlap < 0:
        paths = ([first, *rest] for first in range(2 ** L)
                 for rest in itertools.product(range(2 ** k), repeat=steps - 1))
        for first, *rest in paths:
            states = [first]
            for new in rest:
                states.append((states[-1] >> k) | (new << (L - k)))
            best = min(best, sum((x[t] - values[s]) ** 2 for t, s in enumerate(states)))
        return best
    for stream in range(2 ** (steps * k)):
        states = [sum(((stream >> ((t * k + q) % (steps * k))) & 1) << q for q in range(L))
                  for t in range(steps)]
        if states[0] & ((1 << (L - k)) - 1) == overlap:
            best = min(best, sum((x[t] - values[s]) ** 2 for t, s in enumerate(states)))
    return best


@pytest.mark.parametrize("simd", SIMD)
@pytest.mark.parametrize("k, L, steps", [(2, 4, 5), (2, 6, 5), (3, 6, 3), (4, 7, 3), (2, 5, 4)])
def test_viterbi_is_optimal(simd, k, L, steps):
    rng = np.random.default_rng(L * 10 + steps)
    values = trellis.state_values(L)
    x = rng.standard_normal(steps).astype(np.float32)
    simd_id = rbe._core.SIMD_PATHS[simd]
    for overlap in [-1, *rng.integers(0, 2 ** (L - k), 2)]:
        states, cost = _code.viterbi(k, L, x, int(overlap), simd_id)
        assert cost == pytest.approx(brute_force(x, values, k, L, int(overlap)), rel=1e-6)
        assert cost == pytest.approx(sum((x - values[states]) ** 2), rel=1e-6)
        assert all(states[t] >> k == states[t + 1] & ((1 << (L - k)) - 1)
                   for t in range(steps - 1))


@pytest.mark.parametrize("k", trellis.BITS)
def test_tile_streams_decode_to_what_the_encoder_reports(k):
    L = 10
    values = trellis.state_values(L)
    targets = np.random.default_rng(k).standard_normal((3, 256)).astype(np.float32)
    results = []
    for simd in SIMD:
        streams = np.empty((3, 32 * k), np.uint8)
        decoded = np.empty_like(targets)
        errors = np.empty(3)
        _code.encode_tiles(k, L, targets, streams, decoded, errors,
                           rbe._core.SIMD_PATHS[simd])
        results.append((streams, decoded, errors))
    for streams, decoded, errors in results:   # every SIMD path finds the same streams
        np.testing.assert_array_equal(streams, results[0][0])
        np.testing.assert_allclose(errors, ((targets - decoded) ** 2).sum(1), rtol=1e-5)
        for tile, stream in enumerate(streams):
            bits = np.unpackbits(stream, bitorder="little").astype(np.int64)
            circular = np.concatenate([bits, bits[:L]])
            states = [int((circular[t * k:t * k + L] << np.arange(L)).sum()) for t in range(256)]
            np.testing.assert_array_equal(decoded[tile], values[states])


@pytest.mark.parametrize("k", trellis.BITS)
def test_coding_error_on_gaussian_weights(k):
    # tail-biting trellis at 10 state bits on Gaussian weights (rotated, a trained matrix's
    # entries look like these); scalar quantisers at the same rate: 0.118, 0.035, 0.0095
    W = np.random.default_rng(0).standard_normal((64, 64))
    error = rel(CodeLinear.from_dense(W, bits=k, state_bits=10).to_dense(), W) ** 2
    assert error < {2: 0.082, 3: 0.023, 4: 0.0064}[k]


def test_calibration_lowers_the_output_error():
    rng = np.random.default_rng(0)
    n, m = 96, 64
    W = rng.standard_normal((m, n)) / np.sqrt(n)
    # inputs whose variance spans four orders of magnitude, correlated
    rotation = np.linalg.qr(rng.standard_normal((n, n)))[0]
    X = (rng.standard_normal((4000, n)) * np.logspace(0, -2, n)) @ rotation
    H = X.T @ X / len(X)

    def output_error(layer):
        return np.sum((X @ (layer.to_dense() - W).T) ** 2) / np.sum((X @ W.T) ** 2)
    plain = CodeLinear.from_dense(W, bits=2, state_bits=10)
    calibrated = CodeLinear.from_dense(W, bits=2, state_bits=10, hessian=H, damping=0.01)
    assert output_error(calibrated) < 0.5 * output_error(plain)


def test_input_mean_corrects_the_bias():
    rng = np.random.default_rng(1)
    W, b = rng.standard_normal((32, 48)), rng.standard_normal(32)
    mean = rng.standard_normal(48) + 3
    H = np.outer(mean, mean) + np.eye(48)
    layer = CodeLinear.from_dense(W, b, bits=2, state_bits=10, hessian=H, input_mean=mean)
    np.testing.assert_allclose(layer.forward(mean), W @ mean + b, rtol=0,
                               atol=1e-4 * np.abs(W @ mean).max())


# ---- rotations --------------------------------------------------------------------------------

@pytest.mark.parametrize("features", [16, 40, 384, 1000, 4096])
def test_rotations_match_scipy_hadamard(features):
    side = trellis.rotated_side(features)
    pow2, odd = trellis.factorise(side)
    assert pow2 >= 16 and odd <= 63 and side >= features and side % 16 == 0
    rotation = trellis.rotation(features, seed=5, side=trellis.INPUTS)
    V = oracle_rotation(features, 5, trellis.INPUTS)
    x = np.random.default_rng(features).standard_normal((3, features))
    padded = np.zeros((3, side))
    padded[:, :features] = x
    assert rel(rotation.forward(x.astype(np.float32)), padded @ V.T) < 1e-6
    assert rel(rotation.backward(rotation.forward(x.astype(np.float32))), x) < 1e-6
    np.testing.assert_allclose(V @ V.T, np.eye(side), atol=1e-12)


def test_rotated_sides():
    assert [trellis.rotated_side(n) for n in (1, 17, 384, 1536, 1009, 11008)] == \
        [16, 32, 384, 1536, 1024, 11008]


def test_signs_are_fixed_by_the_seed():
    a = trellis.signs(7, trellis.INPUTS, 1000)
    assert set(np.unique(a)) == {-1.0, 1.0} and abs(a.mean()) < 0.1
    np.testing.assert_array_equal(a, trellis.signs(7, trellis.INPUTS, 1000))
    assert (a != trellis.signs(7, trellis.OUTPUTS, 1000)).any()
    assert (a != trellis.signs(8, trellis.INPUTS, 1000)).any()


# ---- gradients --------------------------------------------------------------------------------

def test_backward_matches_the_dense_weight_and_finite_differences():
    layer = CodeLinear(40, 24, bits=3, state_bits=9, seed=4)
    W = oracle_dense(layer)
    rng = np.random.default_rng(0)
    X, dY = rng.standard_normal((5, 40), np.float32), rng.standard_normal((5, 24), np.float32)
    dX = layer.backward(X, dY)
    assert rel(dX, dY.astype(np.float64) @ W) < PRODUCT_TOL
    np.testing.assert_allclose(layer.grads["bias"], dY.sum(0), rtol=1e-6)
    # sum dY * Y is linear in each scale: its slope from the forward with one row's scale
    # doubled (exact in the stored precision)
    grad = layer.grads["scale"]
    base_value = float(np.sum(dY * layer.forward(X)))
    for row in (0, 7, 31):
        base = layer.scale[row]
        layer.scale[row] = 2 * base
        layer.after_step()
        slope = (float(np.sum(dY * layer.forward(X))) - base_value) / base
        layer.scale[row] = base
        layer.after_step()
        assert grad[row] == pytest.approx(slope, rel=1e-4, abs=1e-4 * float(np.abs(grad).max()))


def test_optimizer_trains_the_scales():
    rng = np.random.default_rng(0)
    teacher = CodeLinear(32, 32, bits=2, state_bits=8, seed=6)
    student = CodeLinear._from_state(*teacher._state())
    student.scale *= 1.5
    student.after_step()
    opt = rbe.optim.Adam([student], lr=1e-3)
    X = rng.standard_normal((64, 32), np.float32)
    target = teacher.forward(X)
    losses = []
    for _ in range(50):
        Y = student.forward(X)
        losses.append(float(np.mean((Y - target) ** 2)))
        student.backward(X, 2 * (Y - target) / Y.size)
        opt.step()
    assert losses[-1] < 0.1 * losses[0]


# ---- files ------------------------------------------------------------------------------------

def test_files_round_trip_bit_for_bit(tmp_path):
    layer = CodeLinear.from_dense(np.random.default_rng(0).standard_normal((50, 70)),
                                  np.ones(50), bits=3, state_bits=9, seed=11)
    rbe.save(tmp_path / "a.safetensors", {"a": layer})
    loaded = rbe.load(tmp_path / "a.safetensors")["a"]
    X = np.random.default_rng(1).standard_normal((4, 70), np.float32)
    np.testing.assert_array_equal(loaded.forward(X), layer.forward(X))
    for (name, a), (_, b) in zip(layer._state()[1].items(), loaded._state()[1].items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert layer._state()[0] == loaded._state()[0]


@pytest.mark.parametrize("change, message", [
    (lambda c, a: c.update(bits=5), "bits"),
    (lambda c, a: c.update(state_bits=17), "state_bits"),
    (lambda c, a: c.update(exponent=61), "exponent"),
    (lambda c, a: c.update(in_features=90), "codes"),
    (lambda c, a: a.update(codes=a["codes"][:, :, :-1]), "codes"),
    (lambda c, a: a.update(codes=a["codes"].astype(np.uint16)), "codes"),
    (lambda c, a: a.update(scale=a["scale"].astype(np.float32)), "scale"),
    (lambda c, a: a.update(scale=a["scale"] * np.float16(4)), "beyond 1"),
])
def test_inconsistent_entries_are_refused(tmp_path, change, message):
    layer = CodeLinear(70, 50, bits=3, state_bits=9, seed=1)
    config, arrays = layer._state()
    config, arrays = dict(config), dict(arrays)
    change(config, arrays)
    with pytest.raises(rbe.FormatError, match=message):
        rbe.io.layer_from_arrays("code_linear", config, arrays)


def test_loading_allocates_little_beyond_the_stored_bytes(tmp_path):
    import tracemalloc
    layer = CodeLinear(1024, 1536, bits=2, state_bits=9, seed=0)
    path = tmp_path / "big.safetensors"
    rbe.save(path, layer)
    size = path.stat().st_size
    tracemalloc.start()
    loaded = rbe.load(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert loaded.nbytes <= size
    assert peak <= 1.5 * size + (1 << 20), (peak, size)


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"bits": 5}, "bits"), ({"bits": 2.0}, "bits"), ({"state_bits": 7}, "state_bits"),
    ({"state_bits": 17}, "state_bits"), ({"seed": -1}, "seed"), ({"damping": -1}, "damping"),
    ({"hessian": np.eye(3)}, "hessian"), ({"hessian": np.triu(np.ones((8, 8)))}, "symmetric"),
    ({"hessian": np.full((8, 8), np.nan)}, "NaN"), ({"input_mean": np.ones(3)}, "input_mean"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CodeLinear.from_dense(np.ones((4, 8)), np.zeros(4), **kwargs)


@pytest.mark.parametrize("x, message", [
    (np.ones((2, 5), np.float32), "shape"), (np.ones((2, 8), np.int32), "float32"),
    (np.full((2, 8), np.nan, np.float32), "finite"), (np.zeros((0, 8), np.float32), "shape"),
])
def test_bad_inputs_are_named(x, message):
    with pytest.raises(ValueError, match=message):
        CodeLinear(8, 4, bits=2, state_bits=8).forward(x)


def test_plan_checks_its_arrays():
    codes = np.zeros((2, 2, 64), np.uint8)
    ones = np.ones(32, np.float32)
    with pytest.raises(ValueError, match="codes"):
        _code.CodePlan(20, 20, 2, 8, np.zeros((2, 2, 63), np.uint8), ones, ones)
    with pytest.raises(ValueError, match="signs"):
        _code.CodePlan(20, 20, 2, 8, codes, ones[:-1], ones)
    with pytest.raises(ValueError, match="fit"):
        _code.CodePlan(40, 20, 2, 8, codes, ones, ones)
    plan = _code.CodePlan(20, 20, 2, 8, codes, ones, ones)
    x = np.ones((1, 20), np.float32)
    for args, message in [((x[:, :10], ones), "x must"), ((x.T, ones), "x must"),
                          ((x, ones[:-1]), "factor"), ((x, ones, ones[:3]), "bias"),
                          ((x, ones, None, np.empty((1, 20))), "out must")]:
        with pytest.raises(ValueError, match=message):
            plan.forward(*args)
