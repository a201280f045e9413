"""rbe.real_model's contenders that need no model: rounding and low rank (numpy only)."""
import numpy as np

from rbe import real_model


def test_low_rank_keeps_its_budget_and_the_leading_directions():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((96, 64)) @ np.diag(np.logspace(0, -3, 64)) @ rng.standard_normal(
        (64, 64))
    bits = 4
    rank = int(bits * 96 * 64 // (16 * (96 + 64)))
    approx = real_model.low_rank(W, bits)
    assert np.linalg.matrix_rank(approx, tol=1e-6 * np.abs(approx).max()) == rank
    # the float64 truncated SVD is the best of that rank; float16 factors stay close to it
    U, S, Vt = np.linalg.svd(W)
    best = np.sum(S[rank:] ** 2)
    assert best <= np.sum((approx - W) ** 2) <= 1.01 * best + 1e-6 * np.sum(W ** 2)


def test_group_rounding_beats_absmax_rounding():
    W = np.random.default_rng(1).standard_normal((8, 64))
    rounded = real_model.round_groups(W, 3, 32)
    groups = W.reshape(8, 2, 32)
    scale = np.abs(groups).max(-1, keepdims=True) / 3
    absmax = (np.clip(np.round(groups / scale), -4, 3) * scale).reshape(W.shape)
    assert len(np.unique(np.round(rounded[0, :32] / np.abs(rounded[0, :32]).max(), 6))) <= 8
    assert np.sum((rounded - W) ** 2) < np.sum((absmax - W) ** 2)
