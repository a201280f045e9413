
import multiprocessing

import numpy as np
import pytest

import rbe
from rbe import _hybrid, hybrid
from rbe.optim import SGD, Adam

CASES = [((64, 64), (16, 16)), ((100, 70), (16, 16)), ((33, 65), (32, 32)), ((5, 3), (4, 4)),
         ((48, 40), (8, 24))]
TRANSFORMS = [("dct", "db2"), ("dwt", "db2"), ("dwt", "bior3.1"), ("adaptive", "haar")]


def layer_for(shape, block, transform="adaptive", wavelet="db2", k=20, seed=0, **options):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(shape)
    return rbe.HybridLinear.from_dense(W, bias=rng.standard_normal(shape[0]), block=block, k=k,
                                       transform=transform, wavelet=wavelet, **options)


def rel_err(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("shape,block", CASES)
@pytest.mark.parametrize("transform,wavelet", TRANSFORMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_products_equal_dense_products(shape, block, transform, wavelet, dtype):
    layer = layer_for(shape, block, transform, wavelet)
    dense = layer.to_dense().astype(np.float64)
    rng = np.random.default_rng(1)
    for X in (rng.standard_normal(shape[1]), rng.standard_normal((7, shape[1]))):
        X = X.astype(dtype)
        Y = layer.forward(X)
        assert Y.dtype == dtype and Y.shape == X.shape[:-1] + (shape[0],)
        assert rel_err(Y, X @ dense.T + layer.bias) <= 2e-5
        dY = rng.standard_normal(Y.shape).astype(dtype)
        dX = layer.backward(X, dY)
        assert dX.dtype == dtype and dX.shape == X.shape
        assert rel_err(dX, dY @ dense) <= 2e-5


@pytest.mark.parametrize("batch", [1, 5])
def test_forward_with_a_two_wide_edge_column_equals_the_dense_product(batch):
    # the edge class's stacked operators are small enough to come out column-major
    layer = layer_for((40, 66), (32, 32), "dct", "db2")
    X = np.random.default_rng(2).standard_normal((batch, 66)).astype(np.float32)
    dense = layer.to_dense().astype(np.float64)
    assert rel_err(layer.forward(X), X @ dense.T + layer.bias) <= 1e-4     # float32 sums


@pytest.mark.parametrize("batch", [8, 40, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batches_equal_the_dense_product_and_their_vectors_alone(batch, dtype):
    # 40: a whole tile of the sparse rows' batch loop and a partial one
    layer = layer_for((256, 256), (64, 64))
    X = np.random.default_rng(3).standard_normal((batch, 256)).astype(dtype)
    Y = layer.forward(X)
    assert Y.shape == (batch, 256) and Y.dtype == dtype and Y.flags.c_contiguous
    dense = layer.to_dense().astype(np.float64)
    assert rel_err(Y, X @ dense.T + layer.bias) <= 2e-5
    alone = np.stack([layer.forward(x) for x in X])     # other sums' order: rounding only
    assert rel_err(Y, alone) <= (2e-6 if dtype == np.float32 else 1e-14)


def test_batch_of_one_equals_vector():
    layer = layer_for((100, 70), (16, 16))
    x = np.random.default_rng(2).standard_normal(70)
    np.testing.assert_allclose(layer.forward(x[None])[0], layer.forward(x), rtol=1e-12)


def loss(layer, X, G):
    return float(np.sum(layer.forward(X) * G))


def assert_gradients_equal_finite_differences(layer, samples=12):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((4, layer.in_features))
    G = rng.standard_normal((4, layer.out_features))
    layer.backward(X, G)
    eps = 2.0 ** -8          # exact in float32 for these magnitudes; the loss is linear in each
    for name, p in layer.parameters().items():
        flat = p.reshape(-1)
        for i in rng.choice(flat.size, samples, replace=False):
            saved = flat[i]
            flat[i] = saved + eps
            up = loss(layer, X, G)
            flat[i] = saved - eps
            down = loss(layer, X, G)
            flat[i] = saved
            fd = (up - down) / (2 * eps)
            assert layer.grads[name].reshape(-1)[i] == pytest.approx(fd, rel=1e-4, abs=1e-4), name


@pytest.mark.parametrize("transform,wavelet", TRANSFORMS)
def test_parameter_gradients_equal_finite_differences(transform, wavelet):
    assert_gradients_equal_finite_differences(layer_for((40, 36), (16, 16), transform, wavelet,
                                                        k=12))


def test_low_rank_and_basis_free_layer_gradients_equal_finite_differences():
    layer = rbe.HybridLinear(36, 40, block=(16, 16), k=5, basis=False, rank=3, seed=0)
    assert set(layer.parameters()) == {"values", "factor_out", "factor_in", "bias"}
    assert_gradients_equal_finite_differences(layer, samples=8)


def test_blocks_smaller_than_k_keep_all_their_positions():
    layer = layer_for((17, 33), (16, 16), k=40)           # 1 x 1 corner block, 16 x 1 edge
    np.testing.assert_array_equal(layer.counts, np.minimum(40, layer.grid.block_sizes()))
    dense = layer.to_dense().astype(np.float64)
    x = np.random.default_rng(8).standard_normal(33)
    assert rel_err(layer.forward(x), dense @ x + layer.bias) <= 2e-5


def test_scratch_layer_uses_random_positions_and_matches_its_dense_form():
    layer = rbe.HybridLinear(70, 100, block=(16, 16), k=6, transform="dct", seed=0)
    np.testing.assert_array_equal(layer.counts, 6)
    per_block = layer.index.reshape(-1, 6).astype(int)
    assert (np.diff(per_block, axis=1) > 0).all()          # distinct, ascending
    assert len({tuple(row) for row in per_block}) > 0.9 * len(per_block)
    assert not layer.coef.any() and layer.bias.shape == (100,)
    X = np.random.default_rng(4).standard_normal((3, 70))
    expected = X @ layer.to_dense().astype(np.float64).T + layer.bias
    assert rel_err(layer.forward(X), expected) <= 2e-5
    std = layer.to_dense().std()
    assert 0.3 < std * np.sqrt(3 * 70) < 3                 # nn.Linear-like scale


@pytest.mark.parametrize("optimizer,lr", [(SGD, 1e-3), (Adam, 1e-2)])
def test_training_with_rbe_optim_fits_a_smooth_target(optimizer, lr):
    rng = np.random.default_rng(5)
    y, x = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 48), indexing="ij")
    target = (np.cos(2 * x) * y).astype(np.float32)
    layer = rbe.HybridLinear(48, 32, block=(16, 16), k=16, transform="dct", seed=1)
    opt = optimizer(layer, lr=lr)
    X = rng.standard_normal((64, 48)).astype(np.float32)
    losses = []
    for _ in range(200):
        residual = layer.forward(X) - X @ target.T
        losses.append(float(np.mean(np.sum(residual ** 2, axis=1))))
        layer.backward(X, 2 * residual / len(X))
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
    assert np.isfinite(layer.values).all() and np.isfinite(layer.coef).all()


def test_results_do_not_depend_on_the_thread_count(threads):
    # 4096 blocks x k 256 x batch 64 = 2^26 multiply-adds: large enough to run in parallel
    layer = layer_for((1024, 1024), (16, 16), k=256)
    X = np.random.default_rng(6).standard_normal((64, 1024)).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        threads(n)
        results.append((layer.forward(X), layer.backward(X, X), layer.grads["values"].copy()))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_concurrent_calls_from_python_threads(concurrently):
    # different inputs per thread: each thread's work arrays must be its own
    layer = layer_for((100, 70), (16, 16))
    X = np.random.default_rng(7).standard_normal((6, 20, 70))
    expected = [layer.forward(x) for x in X]
    for k, out in enumerate(concurrently(lambda k: [layer.forward(X[k]) for _ in range(20)], 6)):
        for each in out:
            np.testing.assert_array_equal(each, expected[k])


def test_parallel_one_vector_products_from_threads_and_forked_children(threads, concurrently):
    # 2^21 entries per vector, above the threshold (2^19): the forward runs on the helper pool
    layer = rbe.HybridLinear(2048, 2048, k=2048, seed=0, regrow_every=None)
    assert layer._forward_plans()[np.dtype(np.float32)].work >= 1 << 19
    X = np.random.default_rng(8).standard_normal((3, 2048)).astype(np.float32)
    threads(1)
    expected = [layer.forward(x) for x in X]
    threads(3)
    for k, out in enumerate(concurrently(lambda k: layer.forward(X[k % 3]), 6)):
        np.testing.assert_array_equal(out, expected[k % 3])
    with multiprocessing.get_context("fork").Pool(1) as pool:     # helpers do not survive fork
        np.testing.assert_array_equal(pool.apply(layer.forward, (X[0],)), expected[0])


def test_storage_and_compression_ratio():
    layer = layer_for((128, 128), (64, 64), k=32)
    mixed = len(set(layer.transform)) > 1              # else one transform in the config
    weight_bytes = 48 + len("db2") + 4 * (8 * 4 + mixed + 32 * (2 + 4))
    assert layer.nbytes == weight_bytes + 128 * 4
    assert layer.compression_ratio == pytest.approx((128 * 128 + 128) * 4 / layer.nbytes)
    no_bias = rbe.HybridLinear.from_matrix(layer.matrix)
    assert no_bias.nbytes == weight_bytes and "bias=False" in repr(no_bias)
    assert set(no_bias.parameters()) == {"coef", "values"}


@pytest.mark.parametrize("X,match", [
    (np.ones((2, 69)), "shape"), (np.ones((2, 2, 70)), "shape"), (np.ones(70, np.int64), "float"),
    (np.full(70, np.nan), "NaN"), (np.zeros((0, 70)), "shape")])
def test_bad_inputs_raise(X, match):
    layer = layer_for((100, 70), (16, 16))
    with pytest.raises(ValueError, match=match):
        layer.forward(X)


def test_bad_upstream_gradients_raise():
    layer = layer_for((100, 70), (16, 16))
    X = np.ones((3, 70))
    with pytest.raises(ValueError, match="dY"):
        layer.backward(X, np.ones((2, 100)))
    with pytest.raises(ValueError, match="dY"):
        layer.backward(X, np.ones((3, 100), np.float32))
    with pytest.raises(ValueError, match="dY"):
        layer.backward(X, np.full((3, 100), np.inf))


@pytest.mark.parametrize("kwargs,match", [
    ({"transform": "adaptive"}, "one transform"), ({"k": 0}, "k must"),
    ({"block": (0, 8)}, "block"), ({"wavelet": "nope"}, "wavelet")])
def test_bad_layer_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rbe.HybridLinear(16, 16, **kwargs)


def test_bad_bias_raises():
    with pytest.raises(ValueError, match="bias"):
        rbe.HybridLinear.from_dense(np.ones((8, 8)), bias=np.ones(7), block=(4, 4), k=2)
    with pytest.raises(ValueError, match="bias"):
        rbe.HybridLinear.from_dense(np.ones((8, 8)), bias=np.full(8, np.nan), block=(4, 4), k=2)


def replaced(name, value):
    return lambda arrays: {**arrays, name: value(arrays[name])}


@pytest.mark.parametrize("edit,match", [
    (replaced("src", lambda a: a + 10**6), "entry 0 addresses a value or z row outside"),
    (replaced("zrow", lambda a: np.full_like(a, 10**6)), "entry 0 addresses a value or z row"),
    (replaced("n_values", lambda n: n - 1), "addresses a value or z row outside"),
    (replaced("rowptr", lambda a: np.r_[1, a[1:]]), "rowptr must start at 0"),
    (replaced("rowptr", lambda a: np.r_[a[:3], a[1], a[4:]]), "non-decreasing"),
    (replaced("src", lambda a: a[1:]), "src must have"),
    (replaced("src", lambda a: a.astype(np.int64) - 1), "src must hold integers from 0"),
    (replaced("zrow", lambda a: a + 2**32), "zrow must hold integers from 0"),
    (replaced("col_z0", lambda a: a[::-1].copy()), "block column 1 overlaps"),
    (replaced("row_u0", lambda a: a[np.r_[1, 0, 2:len(a)]]), "block row 1 overlaps"),
    (replaced("col_x0", lambda a: a + 1), "block column 6 addresses elements outside"),
    (replaced("col_class", lambda a: a + 5), "col_class must name classes"),
    (replaced("row_class", lambda a: a - 1), "row_class must name classes"),
    (replaced("col_matrices", lambda m: [m[0][:3], m[1]]), "basis term 0 spans block"),
    (replaced("term_rank", lambda a: a + 1000), "basis term 0 addresses elements outside"),
    (replaced("term_col", lambda a: a + 1), "basis term 0 spans block columns of different"),
    (replaced("term_count", lambda a: a + 7), "basis term 0 addresses blocks outside"),
    (replaced("n_coef", lambda n: n - 8), "basis term .* addresses elements outside"),
    (replaced("col_runs", lambda a: [0, 1]), "col_runs must run from 0 to 7"),
    (replaced("row_runs", lambda a: [0, 3, 2, 7]), "row_runs must increase"),
    (replaced("col_runs", lambda a: [0, 7]), "col_runs entry 0 is not one class"),
])
def test_forward_plans_check_every_index(edit, match):
    layer = layer_for((100, 100), (16, 16))       # a ragged edge: two classes per axis
    arrays = layer._plan_arrays(np.dtype(np.float32))
    with pytest.raises(ValueError, match=match):
        _hybrid.ForwardPlan(100, 100, np.float32, **edit(arrays))


def test_forward_plans_check_the_arrays_of_each_product():
    layer = layer_for((100, 70), (16, 16), rank=3)
    plan = layer._forward_plans()[np.dtype(np.float32)]
    X, Y = np.ones((2, 70), np.float32), np.empty((2, 100), np.float32)
    args = (X, layer.values, layer.coef, layer.bias, layer.factors)
    np.testing.assert_array_equal(plan.forward(*args, out=Y), layer.forward(X))
    factor_out, factor_in = layer.factors
    for bad, match in (({0: np.ones((2, 71), np.float32)}, "x must be"),
                       ({0: X.astype(np.float64)}, "x must be a C-contiguous float32"),
                       ({0: np.ones((70, 2), np.float32).T}, "x must be a C-contiguous"),
                       ({1: layer.values[1:]}, "values"), ({2: layer.coef[1:]}, "coef"),
                       ({3: layer.bias[1:]}, "bias must have 100"),
                       ({4: (factor_out[1:], factor_in)}, "factors must be"),
                       ({4: (factor_out[:, 1:], factor_in)}, "factors must be")):
        with pytest.raises(ValueError, match=match):
            plan.forward(*[bad.get(k, a) for k, a in enumerate(args)])
    for out, match in ((np.empty((3, 100), np.float32), "out must be"),
                       (np.empty((2, 100)), "out must be"),
                       (np.empty((100, 2), np.float32).T, "out must be")):
        with pytest.raises(ValueError, match=match):
            plan.forward(*args, out=out)


def test_entries_outside_their_block_add_nothing():
    layer = layer_for((32, 32), (16, 16), transform="dct", k=4)
    X = np.random.default_rng(4).standard_normal((3, 32)).astype(np.float32)
    hybrid._overwrite(layer.index, np.full_like(layer.index, 16 * 16))
    layer._plans = None
    expected = layer.forward(X)
    layer.values[:] = 0
    np.testing.assert_array_equal(layer.forward(X), expected)
