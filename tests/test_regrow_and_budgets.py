"""Byte budgets, compact storage and moving positions of hybrid layers."""
import numpy as np
import pytest
import scipy.fft

import rbe
from rbe import transforms as tf
from rbe.encoder import split_blocks


def scratch(**kwargs):
    options = {"block": (16, 16), "k": 6, "transform": "dct", "seed": 0, "regrow_every": 2}
    return rbe.HybridLinear(40, 36, **{**options, **kwargs})


# -- budgets ---------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [
    {}, {"basis": False}, {"basis": False, "rank": 4}, {"precision": "float16"},
    {"basis": False, "rank": 2, "precision": "float16", "transform": "dwt"}])
@pytest.mark.parametrize("budget", [1500, 3000])       # dense: 5904 bytes
def test_budgets_are_met_exactly(options, budget):
    W = np.random.default_rng(0).standard_normal((36, 40))
    bias = np.zeros(36)
    encoded = rbe.HybridLinear.from_dense(W, bias, block=(16, 16), budget=budget, **options)
    assert budget - 6 <= encoded.nbytes <= budget     # a coefficient costs at most 6 bytes
    transform = options.get("transform", "dct")
    trained = rbe.HybridLinear(40, 36, block=(16, 16), budget=budget, seed=0,
                               **{**options, "transform": transform})
    assert trained.nbytes <= budget
    one_more = rbe.HybridLinear(40, 36, block=(16, 16), k=trained.counts.max() + 1, seed=0,
                                **{**options, "transform": transform})
    assert one_more.nbytes > budget                   # the largest k that fits


def test_ratio_is_dense_bytes_over_stored_bytes():
    layer = rbe.HybridLinear(256, 128, block=(16, 16), ratio=32, basis=False, seed=0)
    assert 31 <= layer.compression_ratio and layer.nbytes <= (4 * 256 * 128 + 4 * 128) / 32


def test_one_thirty_second_is_reachable_with_16x16_blocks():
    W = np.random.default_rng(1).standard_normal((512, 512))
    for layer in (rbe.HybridLinear.from_dense(W, np.zeros(512), block=(16, 16), ratio=32,
                                              basis=False, precision="float16"),
                  rbe.HybridLinear(512, 512, block=(16, 16), ratio=32, basis=False,
                                   precision="float16", rank=8, seed=0)):
        assert layer.compression_ratio >= 32 and layer.counts.sum() > 0


def test_budget_keeps_the_largest_coefficients_of_the_matrix():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((32, 32)) * np.repeat([1.0, 0.01], 16)[None, :]   # loud left half
    m = rbe.encode(W, block=(16, 16), transform="dct", budget=1500, basis=False)
    counts = m.counts.reshape(2, 2)
    assert (counts[:, 0] > 3 * counts[:, 1]).all()    # ragged: the loud blocks get more
    coefs = np.concatenate([scipy.fft.dctn(b, norm="ortho").ravel()
                            for b in split_blocks(W, 16, 16)])
    kept = np.sort(np.abs(m.values))
    np.testing.assert_allclose(kept, np.sort(np.abs(coefs))[-len(kept):], rtol=1e-6)


def test_float16_storage_error_is_the_value_rounding():
    W = np.random.default_rng(3).standard_normal((64, 64))
    half = rbe.encode(W, block=(16, 16), k=32, transform="dct", precision="float16",
                      basis=False)
    full = rbe.encode(W, block=(16, 16), k=32, transform="dct", basis=False)
    assert half.nbytes == full.nbytes - 2 * 512
    np.testing.assert_array_equal(half.index, full.index)
    # Orthonormal transform: the decoded error is the values' rounding error, <= 2^-11 relative.
    difference = np.linalg.norm(half.decode(np.float64) - full.decode(np.float64))
    assert 0 < difference <= 2.0 ** -11 * np.linalg.norm(full.values)


@pytest.mark.parametrize("options", [{"basis": True}, {"basis": False, "rank": 4}])
def test_float16_layer_computes_what_it_stores(options, tmp_path):
    """Trained float16 parameters are off the float16 grid; the products use them rounded, so
    saving and loading changes no output bit, and forward, dX and the parameter gradients equal
    those of a float32 layer holding the rounded values (gradients pass straight through)."""
    rng = np.random.default_rng(4)
    layer = scratch(k=12, precision="float16", regrow_every=2, **options)
    opt = rbe.optim.Adam(layer, lr=1e-2)
    X = rng.standard_normal((8, 40)).astype(np.float32)
    for _ in range(3):                      # the second step moves positions
        layer.backward(X, layer.forward(X))
        opt.step()
    assert not np.array_equal(rbe.encoder.rounded(layer.values, "float16"), layer.values)
    stored = rbe.HybridLinear.from_matrix(
        rbe.HybridMatrix(layer.grid.shape, layer.block, layer.coef, layer.transform,
                         layer.offsets, layer.index, layer.values, factors=layer.factors,
                         precision="float16"), layer.bias)
    stored.precision = "float32"            # the same rounded values, computed as float32
    stored._round_parameters()
    rbe.save(tmp_path / "layer.safetensors", layer)
    loaded = rbe.load(tmp_path / "layer.safetensors")
    dY = rng.standard_normal((8, 36)).astype(np.float32)
    for other in (stored, loaded):
        np.testing.assert_array_equal(other.forward(X), layer.forward(X))
        np.testing.assert_array_equal(other.backward(X, dY), layer.backward(X, dY))
        for name, grad in layer.grads.items():
            np.testing.assert_array_equal(other.grads[name], grad)

@pytest.mark.parametrize("kwargs,match", [
    ({"budget": 100}, "budget"), ({"budget": 0}, "budget"), ({"ratio": 0.5}, "ratio"),
    ({"ratio": 4, "budget": 1000}, "budget or ratio"), ({"ratio": 4, "k": 3}, "k or"),
    ({"rank": 41}, "rank"), ({"precision": "int4"}, "precision"),
    ({"regrow_every": 0}, "regrow_every"), ({"regrow_fraction": 1.5}, "regrow_fraction")])
def test_bad_budget_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rbe.HybridLinear(40, 36, block=(16, 16), **kwargs)


# -- moving positions --------------------------------------------------------------------------

def block_dct_gradient(layer, X, dY):
    """The oracle: each block's DCT coefficients of the dense weight gradient dY^T X."""
    dW = dY.T @ X
    rows, cols = layer.grid.rows, layer.grid.cols
    out = np.zeros_like(dW)
    h, w = layer.grid.block
    for bi in range(rows):
        for bj in range(cols):
            part = dW[bi * h:(bi + 1) * h, bj * w:(bj + 1) * w]
            out[bi * h:(bi + 1) * h, bj * w:(bj + 1) * w] = scipy.fft.dctn(part, norm="ortho")
    return out


def test_grow_grads_are_the_transform_domain_gradient_summed_before_a_regrow_step():
    layer = scratch()
    rng = np.random.default_rng(4)
    X, dY = rng.standard_normal((2, 5, 40)), rng.standard_normal((2, 5, 36))
    layer.backward(X[0], dY[0])               # the next step (1) does not move positions
    assert not layer.grow_grads.any()
    layer.after_step()
    layer.backward(X[0], dY[0])
    layer.backward(X[1], dY[1])               # summed, as across processes or micro-batches
    expected = block_dct_gradient(layer, X[0], dY[0]) + block_dct_gradient(layer, X[1], dY[1])
    np.testing.assert_allclose(layer.grow_grads, expected, rtol=1e-4, atol=1e-4)
    present = layer.matrix.decode(np.float64) != 0   # the values' gradients are part of it
    assert present.any()


def test_swaps_keep_counts_and_lower_the_linearised_loss():
    layer = scratch(k=8)
    rng = np.random.default_rng(5)
    X, dY = rng.standard_normal((16, 40)), rng.standard_normal((16, 36))
    layer.after_step()
    layer.backward(X, dY)
    G = layer.grow_grads.copy()
    before_index, before_values = layer.index.copy(), layer.values.copy()
    layer.after_step()                        # step 2: positions move
    assert not layer.grow_grads.any()
    np.testing.assert_array_equal(layer.counts, 8)
    moved = layer.index != before_index
    assert moved.any()
    np.testing.assert_array_equal(layer.values[moved], 0)
    np.testing.assert_array_equal(layer.values[~moved], before_values[~moved])
    h, w = layer.grid.block
    for b, (lo, hi) in enumerate(zip(layer.offsets[:-1], layer.offsets[1:])):
        bi, bj = divmod(b, layer.grid.cols)
        g = np.abs(G[bi * h:(bi + 1) * h, bj * w:(bj + 1) * w]).ravel()
        old, new = before_index[lo:hi].astype(int), layer.index[lo:hi].astype(int)
        assert len(set(new)) == hi - lo and new.max() < g.size
        # A gradient step on the new positions lowers the linearised loss at least as much.
        assert np.square(g[new]).sum() >= np.square(g[old]).sum()
        if moved[lo:hi].any():
            pruned = np.abs(before_values[lo:hi][moved[lo:hi]]).max()
            assert pruned <= np.sort(np.abs(before_values[lo:hi]))[moved[lo:hi].sum() - 1]


def test_regrow_is_deterministic_and_stops_at_regrow_stop():
    rng = np.random.default_rng(6)
    X, dY = rng.standard_normal((16, 40)), rng.standard_normal((16, 36))
    layers = [scratch(regrow_stop=4), scratch(regrow_stop=4)]
    for layer in layers:
        for _ in range(6):
            layer.backward(X, dY)
            layer.after_step()
    np.testing.assert_array_equal(layers[0].index, layers[1].index)
    before = layers[0].index.copy()
    layers[0].backward(X, dY)
    layers[0].after_step()
    np.testing.assert_array_equal(layers[0].index, before)


def test_encoded_layers_keep_their_positions_unless_asked():
    W = np.random.default_rng(7).standard_normal((36, 40))
    layer = rbe.HybridLinear.from_dense(W, block=(16, 16), k=6, transform="dct")
    assert layer.regrow_every is None and layer.grow_grads is None
    layer.set_regrow(1)
    layer.backward(np.ones((1, 40)), np.ones((1, 36)))
    assert layer.grow_grads.any()


def test_basis_functions_have_unit_norm():
    norms = np.linalg.norm(tf.basis(16, 8).reshape(8, -1), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-12)


def test_regrow_moves_positions_in_place_and_leaves_earlier_matrices_alone():
    layer = rbe.HybridLinear(40, 24, block=(8, 8), k=16, seed=0, regrow_every=1)
    index, matrix = layer.index, layer.matrix
    before = matrix.index.copy()
    x = np.random.default_rng(0).standard_normal((8, 40)).astype(np.float32)
    layer.backward(x, layer.forward(x))
    layer.after_step()
    assert layer.index is index and not index.flags.writeable    # the same read-only array
    assert not np.array_equal(index, before)
    np.testing.assert_array_equal(matrix.index, before)
    layer.values[:] = np.random.default_rng(1).standard_normal(layer.values.shape)
    dense = layer.to_dense().astype(np.float64)         # the forward follows the new positions
    np.testing.assert_allclose(layer.forward(x), x @ dense.T + layer.bias, rtol=1e-4, atol=1e-5)
