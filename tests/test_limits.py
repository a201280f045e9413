"""Argument limits and bad inputs: every size and thread count is bounded with a
ValueError naming the argument and the limit before anything is allocated; non-finite or
overflowing inputs and results raise ValueError."""
import math
import threading
import tracemalloc

import numpy as np
import pytest

import rbe
from rbe import _core


def raises_before_allocating(fn, match):
    """fn raises ValueError(match) having allocated less than 1 MiB."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            fn()
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("n", [100_000, _core.MAX_THREADS + 1, 2**40])
def test_set_num_threads_refuses_more_than_the_limit(threads, n):
    with pytest.raises(ValueError, match=f"at most {_core.max_threads()}"):
        threads(n)


@pytest.mark.parametrize("n", [-1, 1.5, "4", True])
def test_set_num_threads_refuses_what_is_not_a_count(threads, n):
    with pytest.raises(ValueError, match="number of threads"):
        threads(n)


def test_set_num_threads_accepts_the_limit(threads):
    threads(_core.max_threads())
    assert rbe.get_num_threads() == _core.max_threads()
    x = np.ones((3, 64), np.float32)
    assert np.isfinite(rbe.FusedLinear(64, 64, block=(16, 16), seed=0).forward(x)).all()


def test_threads_block_limits_the_calling_thread_only(threads):
    threads(2)
    seen = {}
    with rbe.threads(1):
        assert rbe.get_num_threads() == 1
        with rbe.threads(0):                        # 0: back to the process-wide count
            assert rbe.get_num_threads() == 2
        assert rbe.get_num_threads() == 1
        other = threading.Thread(target=lambda: seen.update(n=rbe.get_num_threads()))
        other.start()
        other.join()
        layer = rbe.HybridLinear(64, 64, block=(16, 16), k=4, seed=0)
        assert np.isfinite(layer.forward(np.ones((3, 64), np.float32))).all()
    assert seen["n"] == 2 and rbe.get_num_threads() == 2


@pytest.mark.parametrize("n", [-1, 1.5, _core.MAX_THREADS + 1])
def test_threads_block_refuses_what_set_num_threads_refuses(n):
    with pytest.raises(ValueError, match="number of threads"):
        rbe.threads(n)


def test_giant_layers_are_refused_before_allocation():
    raises_before_allocating(lambda: rbe.FusedLinear(2**31, 2**31), "in_features must be at most")
    raises_before_allocating(lambda: rbe.FusedLinear(8192, 8192, block=(1, 1)),
                             "67108864 blocks, more than the limit of 16777216")
    raises_before_allocating(lambda: rbe.HybridLinear(8192, 8192, block=(1, 1), k=1),
                             "more than the limit")


def test_hybrid_block_sides_are_bounded():
    with pytest.raises(ValueError, match="side longer than 1024"):
        rbe.HybridLinear(2048, 4, block=(2, 2048), k=1)


@pytest.mark.parametrize("block", [(math.inf, 8), (8, -math.inf), (math.nan, 8)])
def test_non_finite_block_is_a_value_error(block):
    W = np.ones((64, 64), np.float32)
    for make in (lambda: rbe.FusedLinear(64, 64, block=block),
                 lambda: rbe.HybridLinear(64, 64, block=block),
                 lambda: rbe.encode(W, block=block)):
        with pytest.raises(ValueError, match="block"):
            make()


@pytest.mark.parametrize("block", [(2.7, 4), (4, 4.0), (True, 4), ("4", 4), (4,), (0, 4)])
def test_every_block_argument_follows_one_rule(block):
    """Non-integers (even integral floats) are refused, never truncated, wherever a block
    shape is taken."""
    W = np.ones((16, 16), np.float32)
    seeds = rbe.seeds.random(2, rng=0)
    for make in (lambda: rbe.FusedLinear(16, 16, block=block),
                 lambda: rbe.HybridLinear(16, 16, block=block),
                 lambda: rbe.encode(W, block=block),
                 lambda: rbe.generate(seeds, block),
                 lambda: rbe.reference.generate(seeds, block)):
        with pytest.raises(ValueError, match=r"must be a pair of positive integers, got"):
            make()


@pytest.mark.parametrize("h, w", [(2.7, 4), (4, 0), (4, np.float64(4))])
def test_basis_takes_the_same_block_rule(h, w):
    with pytest.raises(ValueError, match="must be a pair of positive integers"):
        rbe.transforms.basis(h, w)


def test_numpy_integer_blocks_are_accepted():
    block = np.array([4, 8])
    assert rbe.FusedLinear(16, 16, block=block, seed=0).block == (4, 8)
    assert rbe.encode(np.ones((16, 16)), block=block, k=2).block == (4, 8)


@pytest.mark.parametrize("value", [3.5e38, 1e30, -1e300])
def test_encode_refuses_values_whose_coefficients_overflow_float32(value):
    W = np.ones((60, 16))
    W[3, 4] = value
    with pytest.raises(ValueError, match="W holds values too large"):
        rbe.encode(W, block=(4, 4), k=4)


def test_encode_keeps_large_values_below_the_limit_finite():
    W = np.full((16, 16), 2.0**63)
    matrix = rbe.encode(W, block=(4, 4), k=4)
    assert np.isfinite(matrix.coef).all() and np.isfinite(matrix.values).all()


KINDS = ["fused", "fused-precise", "hybrid", "code"]


def layers():
    W = np.random.default_rng(0).standard_normal((32, 48)).astype(np.float32)
    return [rbe.FusedLinear(48, 32, block=(16, 16), seed=0),
            rbe.FusedLinear(48, 32, block=(16, 16), seed=0, mode="precise"),
            rbe.HybridLinear.from_dense(W, block=(16, 16), k=8),
            rbe.CodeLinear.from_dense(W, bits=3, state_bits=8)]


@pytest.mark.parametrize("layer", layers(), ids=KINDS)
def test_every_kind_takes_inputs_by_one_contract(layer):
    """rbe._checks.layer_input: any array-like of float32 or float64, one vector or a batch,
    contiguous or not; results as for the C-contiguous array of the same values."""
    n, m = layer.in_features, layer.out_features
    X = np.random.default_rng(3).standard_normal((n, 5))
    for dtype in (np.float32, np.float64):
        rows = np.ascontiguousarray(X.T, dtype)
        expected = layer.forward(rows)
        assert expected.dtype == dtype and expected.shape == (5, m)
        np.testing.assert_array_equal(layer.forward(X.T.astype(dtype)), expected)
        np.testing.assert_array_equal(layer.forward(rows[:, ::-1][:, ::-1]), expected)
        # one vector may take another path (a GEMV): the same sums in another order
        np.testing.assert_allclose(layer.forward(rows[2]), expected[2], rtol=0,
                                   atol=1e-5 * np.abs(expected).max())
        np.testing.assert_array_equal(layer.backward(X.T.astype(dtype), np.ones((5, m), dtype)),
                                      layer.backward(rows, np.ones((5, m), dtype)))
    np.testing.assert_array_equal(layer.forward(X.T.tolist()), layer.forward(X.T.copy()))
    for bad, match in ((np.ones(n, np.int64), "X must be float32 or float64"),
                       (np.ones((2, n - 1)), rf"X must have shape \({n},\) or \(batch, {n}\)"),
                       (np.ones((2, 2, n)), "X must have shape"), (np.ones((0, n)), "shape"),
                       (np.full(n, np.nan), r"X must be finite \(got NaN or inf\)"),
                       (np.float32(1.0), "X must have shape")):
        with pytest.raises(ValueError, match=match):
            layer.forward(bad)


@pytest.mark.parametrize("layer", layers(), ids=KINDS)
def test_inputs_beyond_float32_are_refused(layer):
    x = np.ones(48)
    x[5] = 1e300
    with pytest.raises(ValueError, match="X holds values beyond float32's range"):
        layer.forward(x)
    with pytest.raises(ValueError, match="X holds values beyond"):
        layer.backward(x, np.ones(32))


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
@pytest.mark.parametrize("layer", layers(), ids=KINDS)
def test_overflowing_results_raise(layer):
    x = np.full((2, 48), 3e38, np.float32)
    with pytest.raises(ValueError, match="forward overflows"):
        layer.forward(x)
    with pytest.raises(ValueError, match="backward overflows"):
        layer.backward(np.ones((2, 48), np.float32), np.full((2, 32), 3e38, np.float32))


@pytest.mark.parametrize("tau", ["0.1", True, math.nan, -1.0, None, 10**400])
def test_tau_must_be_a_finite_number(tau):
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        rbe.FusedLinear(64, 64, block=(16, 16), tau=tau)


def test_float64_bias_that_overflows_float32_is_refused():
    W = np.ones((16, 16), np.float32)
    with pytest.raises(ValueError, match="bias contains NaN or infinite values"):
        rbe.HybridLinear.from_dense(W, bias=np.full(16, 1e300), block=(8, 8), k=2)


def test_kernels_use_at_most_max_threads_whatever_the_environment(run_python):
    done = run_python("import rbe; print(rbe.get_num_threads(), rbe._core.MAX_THREADS)",
                      env={"OMP_NUM_THREADS": "100000"})
    used, limit = map(int, done.stdout.split())
    assert done.returncode == 0 and 1 <= used <= limit
