
import ast
import importlib

import numpy as np
import pytest
import scipy.fft

from rbe import transforms as tf

WAVELETS = ["db2", "haar", "sym4", "bior3.1"]


@pytest.mark.parametrize("n", [1, 2, 6, 40, 64])
@pytest.mark.parametrize("kind,wavelet", [("dct", "")] + [("dwt", w) for w in WAVELETS])
def test_synthesis_inverts_analysis(n, kind, wavelet):
    op = tf.operator(n, kind, wavelet or tf.DEFAULT_WAVELET)
    assert op.analysis.shape == op.synthesis.shape == (n, n)
    np.testing.assert_allclose(op.synthesis @ op.analysis, np.eye(n), atol=1e-10)


def test_orthonormality_flags():
    assert tf.operator(64, "dct").orthonormal
    np.testing.assert_allclose(tf.operator(64, "dct").analysis,
                               scipy.fft.dct(np.eye(64), norm="ortho", axis=0))
    for wavelet in ["db2", "haar", "sym4"]:
        assert tf.operator(64, "dwt", wavelet).orthonormal
    assert not tf.operator(64, "dwt", "bior3.1").orthonormal


def test_odd_length_is_left_untransformed_by_the_dwt():
    assert tf.dwt_level(5, "haar") == 0
    np.testing.assert_array_equal(tf.operator(5, "dwt", "haar").analysis, np.eye(5))
    assert tf.dwt_level(40, "haar") == 3          # 40 -> 20 -> 10 -> 5
    assert tf.dwt_level(64, "db2") == 4           # pywt.dwt_max_level(64, 4)


@pytest.mark.parametrize("shape", [(1, 7), (12, 40), (64, 64), (6, 2)])
@pytest.mark.parametrize("kind,wavelet", [("dct", "db2")] + [("dwt", w) for w in WAVELETS])
def test_batched_transforms_equal_the_separable_matrices(shape, kind, wavelet):
    h, w = shape
    blocks = np.random.default_rng(0).standard_normal((3, h, w))
    fh, fw = tf.operator(h, kind, wavelet), tf.operator(w, kind, wavelet)
    coefs = tf.analyze(blocks, kind, wavelet)
    np.testing.assert_allclose(coefs, fh.analysis @ blocks @ fw.analysis.T, atol=1e-12)
    np.testing.assert_allclose(tf.synthesize(coefs, kind, wavelet),
                               fh.synthesis @ coefs @ fw.synthesis.T, atol=1e-12)
    np.testing.assert_allclose(tf.synthesize(coefs, kind, wavelet), blocks, atol=1e-12)


def test_basis_functions():
    b = tf.basis(3, 5) * tf.basis_norms(3, 5)[:, None, None]      # unit norm -> as defined
    assert b.shape == (8, 3, 5)
    # Corner (0, 0): x = y = -1, rho = sqrt(2); centre (1, 2): x = y = 0.
    np.testing.assert_allclose(b[:, 0, 0], [1, np.sqrt(2), 2, -1, -1, 1, 1, 1], atol=1e-15)
    np.testing.assert_allclose(b[:, 1, 2], [1, 0, 0, 1, 1, 1, 1, 1], atol=1e-15)
    single_row = tf.basis(1, 4) * tf.basis_norms(1, 4)[:, None, None]
    assert np.isfinite(single_row).all()
    np.testing.assert_allclose(single_row[4], 1.0)       # cos(pi * y) with y = 0


def test_pinv_shape_and_exactness_on_the_basis():
    pinv = tf.basis_pinv(16, 16)
    design = tf.basis(16, 16).reshape(8, -1).T
    np.testing.assert_allclose(pinv @ design, np.eye(8), atol=1e-10)


def test_operators_are_cached_read_only_and_thread_safe(concurrently):
    results = concurrently(lambda k: tf.operator(48, "dwt", "haar"), 8)
    assert all(r is results[0] for r in results)
    with pytest.raises(ValueError):
        results[0].analysis[0, 0] = 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown transform"):
        tf.operator(8, "fft")
    with pytest.raises(ValueError, match="wavelet"):
        tf.operator(8, "dwt", "nope")
    with pytest.raises(ValueError, match="positive"):
        tf.basis(0, 3)


def test_the_hybrid_side_does_not_import_the_seed_side():
    seed_side = {"kernel", "seeds", "fused"}
    for name in ("transforms", "encoder", "hybrid"):
        path = importlib.import_module(f"rbe.{name}").__file__
        tree = ast.parse(open(path, encoding="utf-8").read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported |= {node.module} if node.module else {a.name for a in node.names}
        assert not imported & seed_side, (name, imported & seed_side)
