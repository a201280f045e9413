"""rbe.kernel: the seed-block weight function (docs/design.md, "Weight function") in its
precise and fast modes.

Oracles: a float64 NumPy rendering of the design formula written here (sech^2 as 1/cosh^2,
coordinates from scratch), central finite differences of precise mode for the gradients, and
the original algorithm in rbe.reference for compatibility.
"""

import numpy as np
import pytest

import rbe
from rbe import kernel, reference, seeds

SHAPES = [(64, 64), (7, 13), (1, 9), (16, 1), (32, 128)]
FAST_TOL = 1e-5


def design_formula(packed, shape):
    """W and the distance of every position to the nearest kink of the formula."""
    f = seeds.unpack(packed)
    h, w = shape
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x = 2.0 * j / (w - 1) - 1.0 if w > 1 else np.zeros((h, w))
    y = 2.0 * i / (h - 1) - 1.0 if h > 1 else np.zeros((h, w))
    rho, phi = np.sqrt(x * x + y * y), np.arctan2(y, x)
    r, theta = f.r[:, None, None], f.theta[:, None, None]
    delta = 1.0 + 0.1 * (f.detail[:, None, None] / 255.0 - 0.5)
    state = f.sel[:, (31 * i + j) % 4]
    b_raw = r * (1.0 - rho) + theta
    u, a = r * rho + theta, phi + theta
    values = [np.abs(np.sin(a)), np.abs(np.cos(a)), np.tanh(u), 1.0 / np.cosh(u) ** 2,
              1.0 - np.exp(r * rho) / 2.0, np.log(1.0 + np.abs(u)), 1.0 / (1.0 + np.abs(u)),
              u - u ** 3 / 3.0]
    m = np.clip(b_raw, 0.0, 1.0) * np.choose(state, values) * delta
    kinks = [np.abs(b_raw), np.abs(b_raw - 1.0), np.abs(m - 1.0),
             np.where(b_raw > 0, np.abs(m), np.inf),     # f changing sign under the clamp
             np.where(state == 0, np.abs(np.sin(a)), np.inf),
             np.where(state == 1, np.abs(np.cos(a)), np.inf),
             np.where(np.isin(state, (5, 6)), np.abs(u), np.inf)]
    return np.clip(m, 0.0, 1.0), np.min(kinks, axis=0)


def seeds_covering_all_states(n_random=24, rng=0):
    """Random seeds plus, for each of the 8 states, seeds using it in every class: two
    random ones and one with r and theta at the top of their ranges, where u = r rho + theta
    reaches the top of the domain the approximations are fitted on (at its bottom, theta
    near -1, b = 0 makes every weight 0)."""
    rng = np.random.default_rng(rng)
    random = seeds.random(n_random, rng=rng)
    per_state = seeds.pack(rng.uniform(0, 1, 16), rng.uniform(-1, 1, 16),
                           np.repeat(np.arange(8), 2)[:, None].repeat(4, axis=1),
                           rng.integers(0, 256, 16))
    top = seeds.pack(seeds.R_MAX, seeds.THETA_MAX, np.arange(8)[:, None].repeat(4, axis=1),
                     [0, 255] * 4)
    return np.concatenate([random, per_state, top])


@pytest.fixture(scope="module")
def packed():
    return seeds_covering_all_states()


@pytest.mark.parametrize("shape", SHAPES)
def test_precise_equals_design_formula(packed, shape):
    expected, _ = design_formula(packed, shape)
    np.testing.assert_allclose(rbe.generate(packed, shape, mode="precise"), expected,
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("simd", kernel.simd_paths())
@pytest.mark.parametrize("approx", kernel.APPROX_FAMILIES)
# (20, 32) and (37, 64) exercise the point-symmetric copy with a middle band and with odd h.
@pytest.mark.parametrize("shape", SHAPES + [(9, 300), (20, 32), (37, 64)])
def test_fast_within_bound_of_precise(packed, shape, approx, simd):
    W, dr, dth = rbe.generate_with_grad(packed, shape, mode="precise")
    _, kink = design_formula(packed, shape)
    smooth = kink > 1e-6          # gradients jump at kinks: compare them elsewhere
    with kernel.use_simd(simd):
        fW, fdr, fdth = rbe.generate_with_grad(packed, shape, approx=approx)
        assert fW.dtype == np.float32
        np.testing.assert_array_equal(rbe.generate(packed, shape, approx=approx), fW)
    assert np.abs(fW - W).max() <= FAST_TOL
    for fast, precise in ((fdr, dr), (fdth, dth)):
        scaled = np.abs(fast - precise) / np.maximum(1.0, np.abs(precise))
        assert scaled[smooth].max() <= FAST_TOL
    assert smooth.mean() > 0.95        # few positions left out


def test_avx2_vl_path_equals_avx2_exactly(packed):
    """The avx2_vl path is the AVX2 source compiled with 32 vector registers: same values."""
    if "avx2_vl" not in kernel.simd_paths():
        pytest.skip("this CPU has no AVX-512VL")
    for approx in kernel.APPROX_FAMILIES:
        out = {}
        for simd in ("avx2", "avx2_vl"):
            with kernel.use_simd(simd):
                out[simd] = rbe.generate_with_grad(packed, (37, 64), approx=approx)
        for a, b in zip(out["avx2"], out["avx2_vl"]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(64, 64), (37, 64), (6, 96)])
def test_fast_point_symmetry(shape):
    """W(h-1-i, w-1-j) == W(i, j) exactly wherever both positions' classes share a state."""
    h, w = shape
    packed = seeds_covering_all_states(rng=3)
    fields = seeds.unpack(packed)
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    state = fields.sel[:, (31 * i + j) % 4]
    mirrored_state = state[:, ::-1, ::-1]
    for simd in kernel.simd_paths():
        with kernel.use_simd(simd):
            for out in rbe.generate_with_grad(packed, shape):
                same = state == mirrored_state
                np.testing.assert_array_equal(out[same], out[:, ::-1, ::-1][same])


def test_fast_large_output_uses_the_same_values(packed):
    """Outputs above the streaming-store threshold are written another way; same values."""
    many = np.concatenate([packed] * 16)
    small = rbe.generate(packed, (64, 64))
    np.testing.assert_array_equal(rbe.generate(many, (64, 64)), np.concatenate([small] * 16))


@pytest.mark.parametrize("shape", [(64, 64), (7, 13), (16, 1)])
def test_gradients_match_finite_differences(packed, shape):
    eps = 2.0**-16                                 # a multiple of both quanta: exact shifts
    f = seeds.unpack(packed)
    inside = ((f.r > 2 * eps) & (f.r < 1 - 2 * eps)
              & (f.theta > -1 + 2 * eps) & (f.theta < 1 - 2 * eps))
    packed, f = packed[inside], seeds.unpack(packed[inside])

    def weights(r, theta):
        return rbe.generate(seeds.pack(r, theta, f.sel, f.detail), shape, mode="precise")

    _, dr, dth = rbe.generate_with_grad(packed, shape, mode="precise")
    fd_r = (weights(f.r + eps, f.theta) - weights(f.r - eps, f.theta)) / (2 * eps)
    fd_theta = (weights(f.r, f.theta + eps) - weights(f.r, f.theta - eps)) / (2 * eps)
    _, kink = design_formula(packed, shape)
    smooth = kink > 1e-4                           # no kink within the difference's reach
    for analytic, numeric in ((dr, fd_r), (dth, fd_theta)):
        err = np.abs(analytic - numeric) / np.maximum(1.0, np.abs(numeric))
        assert err[smooth].max() < 1e-6
    assert smooth.mean() > 0.9


@pytest.mark.parametrize("detail", [0, 255])
@pytest.mark.parametrize("shape", [(8, 8), (7, 13), (64, 64)])
def test_compatible_with_the_original(shape, detail):
    """Selectors {0, 1, 2, 4} are the original's states 0..3; detail 0/255 its 0/4095."""
    rng = np.random.default_rng(5)
    n = 40
    r = rng.integers(0, 1 << 20, n) / 2**20            # exact in both layouts
    theta = rng.integers(-(1 << 23), 1 << 23, n) / 2**23
    original_sel = rng.integers(0, 4, (n, 4))
    ours = seeds.pack(r, theta, np.array([0, 1, 2, 4])[original_sel], detail)
    state_bits = (original_sel << (2 * np.arange(4))).sum(axis=1) | (detail * 4095 // 255) << 8
    original = reference.make_seed(r, theta, state_bits)
    np.testing.assert_array_equal(reference.from_packed128(ours), original)
    np.testing.assert_allclose(rbe.generate(ours, shape, mode="precise"),
                               reference.generate(original, shape), rtol=0, atol=2e-5)
    np.testing.assert_allclose(rbe.generate(ours, shape),
                               reference.fused_forward_np(original, shape), rtol=0, atol=2e-5)


def test_output_shape_follows_seed_shape(packed):
    grid = np.ascontiguousarray(packed[:12].reshape(3, 4))
    out = rbe.generate(grid, (5, 6))
    assert out.shape == (3, 4, 5, 6)
    np.testing.assert_array_equal(out[1, 2], rbe.generate(packed[6:7], (5, 6))[0])


def test_out_argument_is_filled_and_returned(packed):
    out = np.full((len(packed), 7, 13), np.nan, np.float32)
    result = rbe.generate(packed, (7, 13), out=out)
    assert result.base is out or result is out
    np.testing.assert_array_equal(out, rbe.generate(packed, (7, 13)))
    outs = tuple(np.empty((len(packed), 7, 13)) for _ in range(3))
    rbe.generate_with_grad(packed, (7, 13), mode="precise", out=outs)
    for got, expected in zip(outs, rbe.generate_with_grad(packed, (7, 13), mode="precise")):
        np.testing.assert_array_equal(got, expected)


def test_results_do_not_depend_on_thread_count(packed, threads):
    many = np.concatenate([packed] * 8)
    threads(1)
    one = rbe.generate_with_grad(many, (32, 48))
    threads(2)
    two = rbe.generate_with_grad(many, (32, 48))
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_concurrent_python_threads_match_serial(packed, concurrently):
    expected = rbe.generate(packed, (33, 47))
    for result in concurrently(lambda k: rbe.generate(packed, (33, 47)), 4):
        np.testing.assert_array_equal(result, expected)


def test_kernel_info_reports_the_choices():
    info = rbe.kernel_info()
    assert info["simd"] in info["simd_available"]
    assert info["approx"] in info["approx_available"] == kernel.APPROX_FAMILIES
    assert isinstance(info["openmp"], bool)
    assert info["threads"] == rbe.get_num_threads() >= 1
    with kernel.use_simd("scalar"):
        assert rbe.kernel_info()["simd"] == "scalar"


def test_environment_overrides(run_python):
    done = run_python("import rbe; i = rbe.kernel_info(); print(i['simd'], i['approx'])",
                      env={"RBE_SIMD": "scalar", "RBE_APPROX": "cordic"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["scalar", "cordic"]
    bad = run_python("import rbe", env={"RBE_SIMD": "avx9"})
    assert bad.returncode != 0 and "unknown SIMD path 'avx9'" in bad.stderr


@pytest.mark.parametrize("call, message", [
    (lambda s: rbe.generate(np.zeros(3, np.uint64), (4, 4)), "rbe.seeds.DTYPE"),
    (lambda s: rbe.generate(s.tolist(), (4, 4)), "rbe.seeds.DTYPE"),
    (lambda s: rbe.generate(s[::2], (4, 4)), "C-contiguous"),
    (lambda s: rbe.generate(s, (0, 4)), "positive"),
    (lambda s: rbe.generate(s, (4, -1)), "positive"),
    (lambda s: rbe.generate(s, (4,)), "pair of positive integers"),
    (lambda s: rbe.generate(s, (4.5, 4)), "pair of positive integers"),
    (lambda s: rbe.generate(s, (70000, 1)), "side longer than 65535"),
    (lambda s: rbe.generate(s, (5000, 5000)), "more than 16777216 elements"),
    (lambda s: rbe.generate(s, (4, 4), mode="exact"), "unknown mode"),
    (lambda s: rbe.generate(s, (4, 4), approx="pade"), "unknown approximation"),
    (lambda s: rbe.generate(s, (4, 4), mode="precise", approx="lut"), "mode='fast' only"),
    (lambda s: rbe.generate(s, (4, 4), out=np.empty((len(s), 4, 4))), "float32"),
    (lambda s: rbe.generate(s, (4, 4), out=np.empty((len(s), 4, 5), np.float32)), "shape"),
    (lambda s: rbe.generate_with_grad(s, (4, 4), out=np.empty((len(s), 4, 4), np.float32)),
     "3 array"),
])
def test_bad_input(packed, call, message):
    with pytest.raises(ValueError, match=message):
        call(packed)


def test_unsupported_simd_path_is_rejected():
    with pytest.raises(ValueError, match="unknown SIMD path"):
        with kernel.use_simd("neon"):
            pass


def test_former_simd_name_is_an_alias():
    """"avx512" named the avx2_vl path before; it is still accepted where names are."""
    if "avx2_vl" not in kernel.simd_paths():
        pytest.skip("this CPU has no AVX-512VL")
    with kernel.use_simd("avx512"):
        assert kernel.current_simd() == "avx2_vl"
