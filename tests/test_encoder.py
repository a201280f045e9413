import numpy as np
import pytest
import scipy.fft

import rbe
from rbe import transforms as tf
from rbe.encoder import BlockGrid, fit_basis, split_blocks, top_k


def smooth_matrix(m, n, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 3, m), np.linspace(0, 2, n), indexing="ij")
    return np.sin(2 * x + y) + 0.3 * np.cos(5 * x * y) + 0.01 * rng.standard_normal((m, n))


def block_errors(W, encoded):
    """Squared error of every block (row-major), from the decoded matrix."""
    err = np.square(encoded.decode(np.float64) - W)
    grid = encoded.grid
    out = np.zeros(grid.nblocks)
    for g in grid.groups():
        rows, cols = grid.slices(g)
        out[grid.block_ids(g)] = split_blocks(err[rows, cols], g.h, g.w).sum(axis=(1, 2))
    return out


@pytest.mark.parametrize("shape,block", [((64, 64), (16, 16)), ((100, 70), (16, 16)),
                                         ((65, 33), (32, 32)), ((40, 24), (8, 12))])
@pytest.mark.parametrize("transform,wavelet", [("dct", "db2"), ("dwt", "db2"), ("dwt", "haar"),
                                               ("dwt", "sym4"), ("dwt", "bior3.1"),
                                               ("adaptive", "bior3.1")])
def test_full_k_reconstructs(shape, block, transform, wavelet):
    W = np.random.default_rng(1).standard_normal(shape)
    encoded = rbe.encode(W, block=block, k=block[0] * block[1], transform=transform,
                         wavelet=wavelet)
    np.testing.assert_allclose(encoded.decode(), W, atol=1e-5)
    assert encoded.rmse(W) <= 1e-5


def straightforward_dct_errors(W, h, w, k):
    """Independent encoder: per-block lstsq fit, scipy dctn, full sort (blocks tile W exactly)."""
    errors = []
    design = tf.basis(h, w).reshape(8, -1).T
    for i in range(0, W.shape[0], h):
        for j in range(0, W.shape[1], w):
            b = W[i:i + h, j:j + w]
            p = np.linalg.lstsq(design, b.ravel(), rcond=None)[0]
            c = scipy.fft.dctn(b - (design @ p).reshape(h, w), norm="ortho").ravel()
            dropped = np.argsort(-np.abs(c), kind="stable")[k:]
            errors.append(np.sum(c[dropped] ** 2))
    return np.array(errors)


@pytest.mark.parametrize("k", [1, 10, 64])
def test_dct_top_k_error_equals_straightforward_encoder(k):
    W = smooth_matrix(64, 96)
    encoded = rbe.encode(W, block=(32, 32), k=k, transform="dct")
    expected = straightforward_dct_errors(W, 32, 32, k)
    np.testing.assert_allclose(block_errors(W, encoded), expected, rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("wavelet", ["db2", "bior3.1"])
@pytest.mark.parametrize("matrix", ["smooth", "random"])
def test_adaptive_never_worse_than_either_transform(wavelet, matrix):
    W = smooth_matrix(96, 80) if matrix == "smooth" else np.random.default_rng(2).random((96, 80))
    errors = {t: block_errors(W, rbe.encode(W, block=(16, 16), k=20, transform=t,
                                            wavelet=wavelet))
              for t in ["dct", "dwt", "adaptive"]}
    best = np.minimum(errors["dct"], errors["dwt"])
    assert (errors["adaptive"] <= best * (1 + 1e-6) + 1e-12).all()


def test_adaptive_reports_per_block_transform_ids():
    W = smooth_matrix(64, 64)
    encoded = rbe.encode(W, block=(16, 16), k=8, transform="adaptive")
    assert encoded.transform.shape == (16,) and encoded.transform.dtype == np.uint8
    assert set(np.unique(encoded.transform)) <= {0, 1}
    assert not rbe.encode(W, block=(16, 16), k=8, transform="dct").transform.any()
    assert rbe.encode(W, block=(16, 16), k=8, transform="dwt").transform.all()


@pytest.mark.parametrize("h,w", [(16, 16), (64, 64), (3, 3), (1, 5), (7, 2)])
def test_basis_fit_equals_lstsq(h, w):
    blocks = np.random.default_rng(3).standard_normal((5, h, w))
    design = tf.basis(h, w).reshape(8, -1).T
    fitted = fit_basis(blocks)
    for b, p in zip(blocks, fitted):
        expected = np.linalg.lstsq(design, b.ravel(), rcond=None)[0]
        np.testing.assert_allclose(design @ p, design @ expected, atol=1e-10)
        if h * w >= 64:
            np.testing.assert_allclose(p, expected, atol=1e-10)


def test_top_k_breaks_ties_by_lower_index():
    mags = np.array([[1, 3, 3, 0, 3, 2], [5, 5, 5, 5, 5, 5], [0, 1, 2, 3, 4, 5]], float)
    index, mask = top_k(mags, 3)
    np.testing.assert_array_equal(index, [[1, 2, 4], [0, 1, 2], [3, 4, 5]])
    assert mask.sum() == 9
    rng = np.random.default_rng(4)
    mags = rng.integers(0, 4, (50, 30)).astype(float)
    expected = np.sort(np.argsort(-mags, axis=1, kind="stable")[:, :7], axis=1)
    np.testing.assert_array_equal(top_k(mags, 7)[0], expected)


def test_storage_accounting():
    W = np.random.default_rng(5).standard_normal((100, 70))
    encoded = rbe.encode(W, block=(32, 32), k=10, transform="dwt", wavelet="haar")
    grid = BlockGrid((100, 70), (32, 32))
    assert grid.nblocks == 12
    np.testing.assert_array_equal(encoded.counts, 10)
    per_block = 8 * 4 + 10 * (2 + 4)          # one transform: stored once, in the header
    assert encoded.nbytes == 48 + len("haar") + 12 * per_block
    assert encoded.compression_ratio == pytest.approx(100 * 70 * 4 / encoded.nbytes)


def test_small_edge_blocks_keep_fewer_coefficients():
    W = np.random.default_rng(6).standard_normal((33, 33))
    encoded = rbe.encode(W, block=(32, 32), k=100)
    assert encoded.counts[-1] == 1 and encoded.counts[0] == 100    # 1 x 1 corner block
    rmse = encoded.rmse(W)
    assert 0 < rmse < np.std(W)


def test_k_is_capped_by_the_block_size():
    W = np.random.default_rng(7).standard_normal((8, 8))
    encoded = rbe.encode(W, block=(4, 4), k=100)
    np.testing.assert_array_equal(encoded.counts, 16)
    np.testing.assert_allclose(encoded.decode(), W, atol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(bad):
    W = np.ones((8, 8))
    W[3, 4] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        rbe.encode(W, block=(4, 4), k=4)


@pytest.mark.parametrize("kwargs,match", [
    ({"block": (0, 4)}, "block"), ({"block": (4,)}, "block"), ({"block": (512, 512)}, "uint16"),
    ({"k": 0}, "k must"), ({"k": 2.5}, "k must"), ({"transform": "fft"}, "transform"),
    ({"wavelet": "nope"}, "wavelet")])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rbe.encode(np.ones((8, 8)), **{"block": (4, 4), "k": 4, **kwargs})


def test_bad_matrix_raises():
    with pytest.raises(ValueError, match="2-D"):
        rbe.encode(np.ones(8))
    with pytest.raises(ValueError, match="real"):
        rbe.encode(np.ones((4, 4), complex))
    with pytest.raises(ValueError, match="empty"):
        rbe.encode(np.ones((0, 4)))


def test_hybrid_matrix_validates_its_arrays():
    encoded = rbe.encode(np.random.default_rng(8).standard_normal((8, 8)), block=(4, 4), k=3)
    parts = dict(shape=encoded.shape, block=encoded.block, coef=encoded.coef,
                 transform=encoded.transform, offsets=encoded.offsets, index=encoded.index,
                 values=encoded.values)
    bad_index = encoded.index.copy()
    bad_index[0] = 16
    with pytest.raises(ValueError, match="outside"):
        rbe.HybridMatrix(**{**parts, "index": bad_index})
    bad_index[:2] = 5
    with pytest.raises(ValueError, match="repeats"):
        rbe.HybridMatrix(**{**parts, "index": bad_index})
    with pytest.raises(ValueError, match="offsets"):
        rbe.HybridMatrix(**{**parts, "offsets": encoded.offsets[::-1].copy()})
    with pytest.raises(ValueError, match="dtype"):
        rbe.HybridMatrix(**{**parts, "values": encoded.values.astype(np.float64)})
    bad_ids = encoded.transform.copy()
    bad_ids[1] = 7
    with pytest.raises(ValueError, match="transform ids"):
        rbe.HybridMatrix(**{**parts, "transform": bad_ids})
    with pytest.raises(ValueError, match="shape"):
        encoded.rmse(np.ones((4, 4)))


def test_progress_bar_counts_every_block(capsys):
    W = np.random.default_rng(9).standard_normal((40, 40))
    rbe.encode(W, block=(8, 8), k=4, progress=True)
    assert "25/25" in capsys.readouterr().err
