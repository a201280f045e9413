"""rbe.reference: the float32 C rendering of the original against the NumPy float64 oracle, the
published values, and plain-Python re-runs of the sequential training rules. Quoted section
names are subsections of docs/design.md, "The original algorithm".

Tolerances: weights are at most 1 in magnitude and every float32 operation rounds with relative
error 2**-24 (6e-8); a weight goes through about 20 such operations, so float32 and float64 differ
by a few 1e-7. We allow 2e-6 for weights and 2e-5 for gradients (which multiply a few O(1)
factors more). Appendix values are printed to 6 decimals (1e-6).
"""
import numpy as np
import pytest

from rbe import reference as ref

SHAPES = [(8, 8), (5, 7), (3, 16), (16, 4), (2, 2)]
WEIGHT_TOL = 2e-6
GRAD_TOL = 2e-5


def random_seeds(n, rng, r_range=(0.0, 1.2)):
    return ref.make_seed(rng.uniform(*r_range, n), rng.uniform(-1.0, 1.0, n),
                         rng.integers(0, 2**64, n, dtype=np.uint64))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---- C (float32) against the NumPy float64 oracle -----------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_fused_forward_matches_oracle(shape, rng):
    seeds = random_seeds(200, rng)
    np.testing.assert_allclose(ref.generate(seeds, shape), ref.fused_forward_np(seeds, shape),
                               rtol=0, atol=WEIGHT_TOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_fused_forward_advanced_matches_oracle(shape, rng):
    seeds = random_seeds(200, rng)
    np.testing.assert_allclose(ref.generate_advanced(seeds, shape),
                               ref.fused_forward_advanced_np(seeds, shape),
                               rtol=0, atol=WEIGHT_TOL)


def kink_mask(seeds, shape):
    """Positions where float32 and float64 may legitimately fall on different sides of a kink
    of the analytic gradient: clamp edges of the base and the weight, sign changes
    of sin a and cos a."""
    _, _, rho, phi = ref.coords_np(shape)
    r, theta = (v.astype(np.float64)[:, None, None] for v in ref.r_theta(seeds))
    u = r * (1 - rho) + theta
    a = phi + theta
    w32, w64 = ref.generate(seeds, shape), ref.fused_forward_np(seeds, shape)
    near = lambda v, at: np.abs(v - at) < 1e-5  # noqa: E731
    return (near(u, 0) | near(u, 1) | near(np.sin(a), 0) | near(np.cos(a), 0)
            | ((w32 > 0) != (w64 > 0)) | ((w32 < 1) != (w64 < 1)))


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_oracle(shape, rng):
    seeds = random_seeds(200, rng)
    keep = ~kink_mask(seeds, shape)
    assert keep.mean() > 0.95
    for got, want in zip(ref.gradients(seeds, shape), ref.gradients_np(seeds, shape)):
        np.testing.assert_allclose(got[keep], want[keep], rtol=0, atol=GRAD_TOL)


def test_gradients_match_finite_differences_of_oracle(rng):
    # Checks the derivative table of "Analytic gradients" itself: central differences of the
    # float64 forward.
    shape, h = (6, 6), 1e-7
    seeds = random_seeds(100, rng)
    r, theta = (v.astype(np.float64) for v in ref.r_theta(seeds))

    def central(dr, dt):
        plus = ref.fused_forward_np(seeds, shape, r=r + dr, theta=theta + dt)
        minus = ref.fused_forward_np(seeds, shape, r=r - dr, theta=theta - dt)
        return (plus - minus) / (2 * h)

    keep = ~kink_mask(seeds, shape)
    dr, dt = ref.gradients(seeds, shape)
    np.testing.assert_allclose(dr[keep], central(h, 0)[keep], rtol=0, atol=1e-4)
    np.testing.assert_allclose(dt[keep], central(0, h)[keep], rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_packed64_matches_oracle(shape, rng):
    # Large r_q: without it the CORDIC output collapses to ~1e-6 and tests nothing.
    words = rng.integers(0, 2**64, 300, dtype=np.uint64) | np.uint64(0xF8000 << 44)
    got, want = ref.packed64_weights(words, shape), ref.packed64_np(words, shape)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=0, atol=WEIGHT_TOL)


def test_state_functions_match_oracle(rng):
    state = np.repeat(np.arange(8), 2000)
    value = rng.uniform(-12, 12, state.size)
    phase = rng.uniform(-12, 12, state.size)
    # State 6 jumps from -1 to +1 where value * phase crosses -1e-3.
    keep = np.abs(np.clip(value, -10, 10) * np.clip(phase, -10, 10) + 1e-3) > 1e-4
    got = ref.state_function(state, value, phase)
    want = ref.state_function_np(state, value, phase)
    np.testing.assert_allclose(got[keep], want[keep], rtol=0, atol=WEIGHT_TOL)


def test_pointwise_functions_match_blocks(rng):
    shape = (5, 7)
    seeds = random_seeds(40, rng)
    i, j = rng.integers(0, 5, 40), rng.integers(0, 7, 40)
    k = np.arange(40)
    np.testing.assert_array_equal(ref.fused_forward(seeds, i, j, shape),
                                  ref.generate(seeds, shape)[k, i, j])
    np.testing.assert_array_equal(ref.fused_forward_advanced(seeds, i, j, shape),
                                  ref.generate_advanced(seeds, shape)[k, i, j])
    for got, block in zip(ref.analytical_gradients(seeds, i, j, shape),
                          ref.gradients(seeds, shape)):
        np.testing.assert_array_equal(got, block[k, i, j])


def test_single_row_or_column_gives_nan():
    seed = ref.make_seed(0.7, 0.2, 0x12345)
    for shape in [(1, 5), (5, 1)]:
        assert np.isnan(ref.generate(seed, shape)).all()
        assert np.isnan(ref.fused_forward_np(seed, shape)).all()
        assert np.isnan(ref.packed64_weights(np.uint64(0xFFFFF << 44), shape)).all()


# ---- "Published values" ------------------------------------------------------------------------

A2_TABLE = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0.033428, 0.027058, 0.038674, 0.043654, 0, 0],
    [0, 0.020506, 0.141511, 0.061867, 0.088081, 0.064643, 0.072757, 0],
    [0, 0.135292, 0.103975, 0.286668, 0.040814, 0.264244, 0.038674, 0],
    [0, 0.048141, 0.264244, 0.181159, 0.286668, 0.061867, 0.135292, 0],
    [0, 0.072757, 0.058857, 0.088081, 0.103975, 0.141511, 0.033428, 0],
    [0, 0, 0.043654, 0.048141, 0.027058, 0.020506, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
])


def test_a2_fused_forward_table():
    seed = ref.make_seed(0.5, 0.0, 0xA93D9)
    weights = ref.generate(seed, (8, 8))
    np.testing.assert_allclose(weights, A2_TABLE, rtol=0, atol=1e-6)
    target = ref.pattern("ramp", 8, 8)
    assert abs(np.mean((weights - target) ** 2, dtype=np.float32) - 0.3162513) < 1e-7


def test_a2_simple_learning_trajectory():
    # (MSE before the update, r and theta after it) at epochs 10..50; A.2.
    expected = {10: (0.263410, 0.5357, 0.1716), 20: (0.229866, 0.5279, 0.3371),
                30: (0.255278, 0.4955, 0.4356), 40: (0.171680, 0.4585, 0.5310),
                50: (0.157072, 0.4570, 0.6246)}
    seed = ref.make_seed(0.5, 0.0, 0xA93D9)
    target = ref.pattern("ramp", 8, 8)
    for epoch in range(1, 51):
        mse, rmse = ref.fused_backward(target, ref.generate(seed, (8, 8)), seed, 0.1)
        assert rmse == pytest.approx(np.sqrt(mse), rel=1e-6)
        if epoch in expected:
            want_mse, want_r, want_theta = expected[epoch]
            r, theta = ref.r_theta(seed)
            assert abs(mse - want_mse) < 1e-5
            assert abs(r - want_r) < 1e-4 and abs(theta - want_theta) < 1e-4
    final = np.mean((ref.generate(seed, (8, 8)) - target) ** 2, dtype=np.float32)
    assert abs(final - 0.131792) < 1e-5


def test_a3_gradient_sanity_exact():
    seed = ref.make_seed(0.7, 0.3, 0x21E41)
    target = np.array([[0, 0.5], [0.5, 1.0]], dtype=np.float32)
    pred = ref.generate(seed, (2, 2))
    np.testing.assert_array_equal(
        pred.ravel(), np.float32([0.0045167888, 0.0045167888, 0.008562771, 0.0045167883]))
    mse, _ = ref.fused_backward(target, pred, seed, 0.1)
    r, theta = ref.r_theta(seed)
    assert np.float32(mse) == np.float32(0.36950535)
    assert r == np.float32(0.6874112) and theta == np.float32(0.33080208)
    assert int(seed["hi"]) == 0x21E8E


def test_a4_packed64_table_and_collapse():
    table = np.array([[-0.259311, -0.090641, 0.166620, 0.315942],
                      [-0.373228, -0.259311, 0.315942, 0.398555],
                      [-0.398555, -0.315942, 0.259311, 0.373228],
                      [-0.315942, -0.166620, 0.090641, 0.259311]])
    np.testing.assert_allclose(ref.packed64_weights(np.uint64(0xFFFFF000000ABCDE), (4, 4)),
                               table, rtol=0, atol=1e-6)
    word = (ref.q0x(0.5) << np.uint64(44)) | (ref.phase(1.0) << np.uint64(20)) | np.uint64(0x12345)
    assert int(word) == 0x7FFFF28BE6012345
    assert np.abs(ref.packed64_weights(word, (4, 4))).max() < 6e-6


def test_a1_state_functions():
    table = np.array([
        [-0.479426, 0.0, 0.479426, 0.841471, 0.997495],
        [0.877583, 1.0, 0.877583, 0.540302, 0.070737],
        [-0.462117, -0.244919, 0.0, 0.244919, 0.462117],
        [0.786448, 0.940015, 1.0, 0.940015, 0.786448],
        [0.951229, 0.975310, 1.0, 1.0, 1.0],
        [-0.693145, -1.0, -1.0, -1.0, -0.693145],
        [-1.0, -1.0, 1.0, 1.0, 1.0],
        [-0.4, -0.225, 0.0, 0.275, 0.6],
    ])
    x = np.array([-1, -0.5, 0, 0.5, 1])
    got = ref.state_function(np.arange(8)[:, None], x[None, :], 0.5)
    np.testing.assert_allclose(got, table, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ref.state_function_np(np.arange(8)[:, None], x, 0.5), table,
                               rtol=0, atol=1e-6)


def test_a5_fused_forward_advanced_table():
    table = np.array([[0, 0.140825, 0.034539, 0],
                      [0.142897, 0.305417, 0.008143, 0.158622],
                      [0.073002, 0.008143, 0.319709, 0.142897],
                      [0, 0.068859, 0.140825, 0]])
    seed = ref.make_seed(0.7, 0.2, 0x12345)
    np.testing.assert_allclose(ref.generate_advanced(seed, (4, 4)), table, rtol=0, atol=1e-6)


def test_a7_quantisers():
    assert int(ref.q0x(0.7, 20)) == 734002
    assert int(ref.q0x(0.5, 20)) == 524287
    assert int(ref.phase(1.0, 24)) == 2670176
    assert int(ref.phase(-0.1, 24)) == 16510198
    assert int(ref.phase(ref.TWO_PI32, 24)) == 0
    assert ref.q0x([-1.0, 2.0, np.nan]).tolist() == [0, 2**20 - 1, 0]


def test_from_continuous_layout():
    seed = ref.from_continuous(0.7, -0.1)
    assert int(seed["hi"]) == (734002 << 44) | (16510198 << 20)
    assert ref.r_theta(seed) == (np.float32(0.7), np.float32(-0.1))


# ---- "Original state transitions", "Overlapping bit fields" ----------------------------------

POS4, NEG4 = [1, 0, 3, 2], [3, 2, 1, 0]


@pytest.mark.parametrize("i,j", [(0, 0), (0, 1), (1, 3), (3, 2), (5, 9)])
def test_state_transition_maps(i, j):
    c = (31 * i + j) & 3
    others = np.uint64(0xFFFF_FFFF_FFFF_FF00 | (0x55 & ~(3 << 2 * c)))
    for s in range(4):
        hi = others | np.uint64(s << 2 * c)
        for g, table in [(0.5, POS4), (-0.5, NEG4)]:
            new = ref.state_transition(hi, g, i, j)
            assert (int(new) >> 2 * c) & 3 == table[s]
            assert int(new) & ~(3 << 2 * c) == int(hi) & ~(3 << 2 * c)
            assert ref.state_transition(new, g, i, j) == hi  # involution
        # Thresholds are strict (0.1 as float32 is the threshold itself); NaN changes nothing.
        for g in [0.1, -0.1, 0.0, np.nan]:
            assert ref.state_transition(hi, g, i, j) == hi


def test_advanced_transition_maps():
    pos8 = [1, 0, 3, 2, 5, 6, 7, 4]
    by_q = [lambda p: (p + 1) & 7, lambda p: (p - 1) & 7, lambda p: p ^ 1, lambda p: p ^ 2]
    i, j = 0, 1  # h = 1: primary at bits 3..5, secondary at bits 18..19
    for p in range(8):
        for q in range(4):
            hi = np.uint64((p << 3) | (q << 18))
            field = lambda w: ((int(w) >> 3) & 7, (int(w) >> 18) & 3)  # noqa: E731
            assert field(ref.advanced_transition(hi, 0.3, i, j)) == (pos8[p], (q + 1) & 3)
            assert field(ref.advanced_transition(hi, -0.3, i, j)) == (7 - p, (q - 1) & 3)
            assert field(ref.advanced_transition(hi, 0.15, i, j)) == (by_q[q](p), (q + 1) & 3)
            assert field(ref.advanced_transition(hi, -0.07, i, j)) == (by_q[q](p), q)
            assert field(ref.advanced_transition(hi, 0.05, i, j)) == (p, q)
            assert ref.advanced_transition(hi, np.nan, i, j) == hi


def test_advanced_transition_overlaps():
    seed = ref.make_seed(0.7, 0.2, 0x12345)
    hi = seed["hi"]
    # Class h = 7 (position (0, 7)): primary at bits 21..23 lies in theta_q, which the advanced
    # forward never reads.
    new = ref.advanced_transition(hi, 0.5, 0, 7)
    assert (int(new) >> 20) & 0xFFFFFF != (int(hi) >> 20) & 0xFFFFFF
    after = ref.make_seed(0.7, 0.2, new)
    np.testing.assert_array_equal(ref.generate_advanced(after, (8, 8)),
                                  ref.generate_advanced(seed, (8, 8)))
    # Class h = 0 (position (0, 0)): its secondary (bits 16..17) is also part of primary h = 5
    # and of the detail bits d4.
    new = ref.advanced_transition(hi, 0.15, 0, 0)
    assert (int(new) >> 16) & 3 != (int(hi) >> 16) & 3
    assert (int(new) >> 15) & 7 != (int(hi) >> 15) & 7


def test_advanced_transition_readme_listing():
    # The original README's listing: g = 0.15 at all 4 x 4 positions in row-major order from
    # hi = 0x5e313. It prints 0xe413b31d; the rules of the code give:
    hi = np.uint64(0x5E313)
    for i in range(4):
        for j in range(4):
            hi = ref.advanced_transition(hi, 0.15, i, j)
    assert int(hi) == 0xE41265C8


def test_adam_update_in_float32():
    # adam_update step by step in float32 (1 - B1 = 0.100000024 there), including powi for t = 3.
    f = np.float32
    p, m, v, g, lr, t = f(1.0), f(0.02), f(0.001), f(0.5), f(0.01), 3
    b1, b2 = f(0.9), f(0.999)
    want_m = b1 * m + (f(1) - b1) * g
    want_v = b2 * v + (f(1) - b2) * g * g
    m_hat = want_m / (f(1) - b1 * b1 * b1)
    v_hat = want_v / (f(1) - b2 * b2 * b2)
    want_p = p - lr * m_hat / (np.sqrt(v_hat) + f(1e-8))
    assert ref.adam_update(p, m, v, g, lr, t) == (want_p, want_m, want_v)
    assert f(1) - b1 == f(0.100000024)


# ---- math.rs backward passes re-run in plain Python -------------------------------------------

def test_fused_backward_fast_matches_python_loop(rng):
    rows, cols, lr = 4, 5, np.float32(0.05)
    seed = ref.make_seed(0.6, 0.1, 0x9F3A7)
    target = rng.uniform(0, 1, (rows, cols)).astype(np.float32)
    pred = ref.generate(seed, (rows, cols))
    hi, (r, theta) = seed["hi"].copy(), ref.r_theta(seed)
    g_r = g_t = loss = np.float32(0)
    for i in range(rows):
        for j in range(cols):
            e = pred[i, j] - target[i, j]
            loss += e * e
            hi = ref.state_transition(hi, e, i, j)
            dr, dt = ref.gradients(ref.make_seed(r, theta, hi), (rows, cols))
            g_r += e * dr[i, j]
            g_t += e * dt[i, j]
    n = np.float32(rows * cols)
    want_r = np.clip(r - lr * (g_r / n), np.float32(0.1), np.float32(2.0))
    want_theta = theta - lr * (g_t / n)
    mse, _ = ref.fused_backward_fast(target, pred, seed, lr)
    assert np.float32(mse) == loss / n
    assert int(seed["hi"]) == int(hi)
    assert ref.r_theta(seed) == (want_r, want_theta)


def central_differences(r, theta, hi, shape, i, j, eps):
    """Float32 central differences in r and theta of the original's weight at (i, j)."""
    def weight(r, theta):
        return ref.generate(ref.make_seed(r, theta, hi), shape)[i, j]

    two = np.float32(2)
    return ((weight(r + eps, theta) - weight(r - eps, theta)) / (two * eps),
            (weight(r, theta + eps) - weight(r, theta - eps)) / (two * eps))


def test_fused_backward_adam_matches_python_loop(rng):
    rows, cols, lr, eps = 3, 4, np.float32(0.01), np.float32(1e-4)
    seed = ref.make_seed(0.8, -0.2, 0x5A5A5)
    target = rng.uniform(0, 1, (rows, cols)).astype(np.float32)
    pred = ref.generate(seed, (rows, cols))
    moments = np.array([0.01, 0.002, -0.01, 0.003], dtype=np.float32)
    hi, (r, theta) = seed["hi"].copy(), ref.r_theta(seed)
    g_r = g_t = loss = np.float32(0)
    for i in range(rows):
        for j in range(cols):
            e = pred[i, j] - target[i, j]
            loss += e * e
            hi = ref.state_transition(hi, e, i, j)
            dr, dt = central_differences(r, theta, hi, (rows, cols), i, j, eps)
            g_r += e * dr
            g_t += e * dt
    want_r, m_r, v_r = ref.adam_update(r, moments[0], moments[1], g_r, lr, 3)
    want_t, m_t, v_t = ref.adam_update(theta, moments[2], moments[3], g_t, lr, 3)
    rmse = ref.fused_backward_adam(target, pred, seed, moments, 3, lr)
    assert np.float32(rmse) == np.sqrt(loss / np.float32(rows * cols))
    assert ref.r_theta(seed) == (np.float32(min(max(want_r, 0.0), 1.0)), np.float32(want_t))
    np.testing.assert_array_equal(moments, np.float32([m_r, v_r, m_t, v_t]))


# ---- FusedLayer ("Seed-block layer") ------------------------------------------------------------

def dense_weights(layer, blocks=None):
    """The layer's weight matrix assembled from its blocks (ragged rows cut at M); by default
    the blocks the C generator makes."""
    (bh, bw), (m, n) = layer.block, layer.shape
    if blocks is None:
        blocks = ref.generate(layer.seeds, layer.block)
    dense = np.zeros((m, n))
    for bi, bj in np.ndindex(layer.seeds.shape):
        rows = min(bh, m - bi * bh)
        if rows > 0:
            dense[bi * bh: bi * bh + rows, bj * bw: bj * bw + bw] = blocks[bi, bj, :rows]
    return dense


def make_layer(rng, grid=(2, 3), block=(4, 3), shape=None):
    seeds = random_seeds(grid[0] * grid[1], rng, r_range=(0.3, 1.0)).reshape(grid)
    shape = shape or (grid[0] * block[0], grid[1] * block[1])
    return ref.FusedLayer(seeds, block, shape)


@pytest.mark.parametrize("shape", [None, (7, 10)])  # exact fit; ragged rows and spare inputs
def test_layer_forward_precise(shape, rng):
    layer = make_layer(rng, shape=shape)
    x = rng.normal(size=layer.shape[1])
    y = layer.forward_precise(x)
    np.testing.assert_allclose(y, dense_weights(layer) @ x, rtol=1e-12, atol=1e-12)
    # Against the float64 oracle's weights: float32 weight rounding only.
    oracle = dense_weights(layer, ref.fused_forward_np(layer.seeds, layer.block))
    np.testing.assert_allclose(y, oracle @ x, rtol=0, atol=WEIGHT_TOL * np.abs(x).sum())


def sequential_backward_python(seeds, block, x, dy, lr):
    """fused_backward_precise re-run element by element in Python (float32 scalars)."""
    seeds = seeds.copy()
    (bh, bw), eps = block, np.float32(1e-5)
    dx = np.zeros(x.size)
    for bi, bj in np.ndindex(seeds.shape):
        seed = seeds[bi, bj]
        for r in range(bh):
            out_grad = np.float32(dy[bi * bh + r])
            for c in range(bw):
                g = out_grad * np.float32(x[bj * bw + c])
                hi = ref.state_transition(seed["hi"], g, r, c)
                rp, tp = ref.r_theta(seed)
                dr, dt = central_differences(rp, tp, hi, block, r, c, eps)
                new_r = np.clip(rp - lr * (g * dr), np.float32(0), np.float32(1))
                seed = ref.make_seed(new_r, tp - lr * (g * dt), hi)
                dx[bj * bw + c] += float(out_grad) * float(ref.generate(seed, block)[r, c])
        seeds[bi, bj] = seed
    return seeds, dx


def test_layer_backward_precise_is_the_sequential_rule(rng):
    layer = make_layer(rng, grid=(2, 2), block=(3, 3))
    x, dy, lr = rng.normal(size=6), rng.normal(size=6), np.float32(0.05)
    start = layer.seeds.copy()
    want_seeds, want_dx = sequential_backward_python(start, layer.block, x, dy, lr)
    dx = layer.backward_precise(x, dy, lr)
    np.testing.assert_array_equal(layer.seeds, want_seeds)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-15, atol=0)
    # Order dependence: dx is not W^T dy for either the initial or the final weights.
    for seeds in (start, layer.seeds):
        batch = ref.FusedLayer(seeds.copy(), layer.block, layer.shape)
        assert np.abs(dx - dense_weights(batch).T @ dy).max() > 1e-4


def test_layer_backward_adam_matches_python_loop(rng):
    layer = make_layer(rng, grid=(1, 2), block=(2, 3))
    x, dy, lr, eps = rng.normal(size=6), rng.normal(size=2), np.float32(0.01), np.float32(1e-5)
    start = layer.seeds.copy()
    dx = layer.backward_adam(x, dy, 1, lr)
    want_dx = np.zeros(6)
    for bj in range(2):
        hi = start[0, bj]["hi"]
        rp, tp = ref.r_theta(start[0, bj])
        g_r = g_t = np.float32(0)
        for r in range(2):
            for c in range(3):
                g = np.float32(dy[r]) * np.float32(x[3 * bj + c])
                hi = ref.state_transition(hi, g, r, c)
                dr, dt = central_differences(rp, tp, hi, (2, 3), r, c, eps)
                g_r += g * dr
                g_t += g * dt
                w = ref.generate(ref.make_seed(rp, tp, hi), (2, 3))[r, c]
                want_dx[3 * bj + c] += float(np.float32(dy[r])) * float(w)
        new_r, m_r, v_r = ref.adam_update(rp, 0.0, 0.0, g_r, lr, 1)
        new_t, m_t, v_t = ref.adam_update(tp, 0.0, 0.0, g_t, lr, 1)
        assert int(layer.seeds[0, bj]["hi"]) == int(hi)
        assert ref.r_theta(layer.seeds[0, bj]) == (np.float32(min(max(new_r, 0), 1)),
                                                   np.float32(new_t))
        np.testing.assert_array_equal(layer.moments[:, 0, bj], np.float32([m_r, v_r, m_t, v_t]))
    np.testing.assert_allclose(dx, want_dx, rtol=1e-15, atol=0)


# ---- patterns ("Test scenarios") ----------------------------------------------------------------

def test_patterns():
    ramp = ref.pattern("ramp", 5, 3)
    np.testing.assert_array_equal(ramp, np.float32(np.arange(5) / 4)[:, None].repeat(3, 1))
    gravity = ref.pattern("gravity", 64, 64)
    assert gravity.max() == 1.0
    assert np.sqrt(np.mean(gravity.astype(np.float64) ** 2)) == pytest.approx(0.059915, abs=1e-6)
    for name in ["C1", "C2", "C3", "C4"]:
        p = ref.pattern(name, 32, 32)
        assert p.shape == (32, 32) and p.dtype == np.float32 and np.isfinite(p).all()
    x, y = 2 * np.pi * 5 / 31, 2 * np.pi * 3 / 31
    c1 = (np.sin(x) * np.cos(y) + np.cos(2 * x) * np.sin(3 * y) + np.tanh(0.5 * x + 0.7 * y))
    assert ref.pattern("C1", 32, 32)[3, 5] == pytest.approx(c1 * 0.3 + 0.5, abs=1e-7)
    c3 = ref.pattern("C3", 32, 32)
    assert c3[0, 4] == pytest.approx(0.7 * 0.2 + 0.3 * np.exp(-2 * (1 + (8 / 31 - 1) ** 2)),
                                     abs=1e-7)


# ---- bad input ----------------------------------------------------------------------------------

def test_bad_input_raises_value_error():
    seed = ref.make_seed(0.5, 0.1, 0x123)
    target = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="dtype"):
        ref.generate(np.zeros(3, np.uint64), (4, 4))
    for shape in [(0, 4), (4, -1), (4,), "ab"]:
        with pytest.raises(ValueError, match="shape"):
            ref.generate(seed, shape)
    with pytest.raises(ValueError, match="C-contiguous"):
        ref.fused_backward(target, target, ref.make_seed([0.5] * 4, 0, 0)[::2], 0.1)
    with pytest.raises(ValueError, match="shape"):
        ref.fused_backward(target, np.zeros((2, 3)), seed, 0.1)
    with pytest.raises(ValueError, match="one seed"):
        ref.fused_backward(target, target, ref.make_seed([0.5, 0.6], 0, 0), 0.1)
    with pytest.raises(ValueError, match="moments"):
        ref.fused_backward_adam(target, target, seed, np.zeros(3, np.float32), 1, 0.1)
    with pytest.raises(ValueError, match="overrun"):
        ref.FusedLayer(ref.make_seed(np.zeros((2, 3)), 0, 0), (4, 4), (8, 11))
    layer = ref.FusedLayer(ref.make_seed(np.zeros((2, 3)), 0, 0), (4, 4), (7, 12))
    layer.forward_precise(np.zeros(12))  # ragged rows are fine for the forward pass
    with pytest.raises(ValueError, match="overrun"):
        layer.backward_precise(np.zeros(12), np.zeros(7), 0.1)
    with pytest.raises(ValueError, match="length"):
        layer.forward_precise(np.zeros(11))
    with pytest.raises(ValueError, match="unknown pattern"):
        ref.pattern("spiral", 4, 4)
    with pytest.raises(ValueError, match="integer"):
        ref.packed64_weights(np.zeros(2), (4, 4))
    with pytest.raises(ValueError, match="non-negative"):
        ref.fused_forward(seed, -1, 0, (4, 4))
