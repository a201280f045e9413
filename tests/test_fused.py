"""rbe.fused.FusedLinear: forward/backward against dense products, gradients against finite
differences, state transitions, thread independence and input validation, for every
parameterisation (centred blocks and block scales, each on or off)."""
import copy
import pickle
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import threadpoolctl

import rbe
from rbe import _fused, kernel, seeds
from rbe.fused import FusedLinear
from rbe.seeds import with_states

SHAPES = [(200, 130), (130, 200), (64, 64)]     # (in_features, out_features)
BATCHES = [None, 1, 33]
MODES = ["fast", "precise"]
#: the default (centred blocks with scales), the original, and the two mixed ones
PARAMETERISATIONS = [{}, {"center": False, "block_scale": False}, {"block_scale": False},
                     {"center": False}]


def make_layer(n_in, n_out, mode="fast", block=(64, 64), seed=0, **kw):
    layer = FusedLinear(n_in, n_out, block=block, seed=seed, mode=mode, **kw)
    rng = np.random.default_rng(seed)
    layer.alpha, layer.beta = 0.8, -0.05
    if layer.scale is not None:
        layer.scale[...] = rng.uniform(-1.5, 1.5, layer.scale.shape)
    layer.bias[:] = rng.uniform(-1, 1, n_out)
    return layer


def inputs(n, batch, dtype=np.float32, seed=1):
    shape = (n,) if batch is None else (batch, n)
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def rel_err(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


# ---- forward and backward against the dense matrix ----------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n_in, n_out", SHAPES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", PARAMETERISATIONS)
def test_forward_backward_match_dense(mode, n_in, n_out, batch, dtype, kw):
    layer = make_layer(n_in, n_out, mode, **kw)
    dense = layer.to_dense().astype(np.float64)
    X = inputs(n_in, batch, dtype)
    Y = layer.forward(X)
    assert Y.dtype == dtype and Y.shape == X.shape[:-1] + (n_out,)
    assert rel_err(Y, X.astype(np.float64) @ dense.T + layer.bias) <= 2e-5
    dY = inputs(n_out, batch, dtype, seed=2)
    dX = layer.backward(X, dY)
    assert dX.dtype == dtype and dX.shape == X.shape
    assert rel_err(dX, dY.astype(np.float64) @ dense) <= 2e-5


@pytest.mark.parametrize("batch", BATCHES)
def test_forward_without_offsets(batch):
    # without centring and with beta = 0 W_eff has no per-block constant: the forward skips
    # the block sums of the inputs
    layer = make_layer(200, 130, center=False)
    layer.beta = 0.0
    X = inputs(200, batch)
    expected = X @ layer.to_dense().astype(np.float64).T + layer.bias
    assert rel_err(layer.forward(X), expected) <= 2e-5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("block", [(1, 1), (3, 1), (5, 7), (33, 65), (128, 128)])
@pytest.mark.parametrize("batch", [None, 9, 33])     # GEMV; sgemm paths (9 > small batch)
def test_odd_block_shapes(mode, block, batch):
    n_in, n_out = 2 * block[1] + 3, 2 * block[0] + 1
    layer = make_layer(n_in, n_out, mode, block)
    dense = layer.to_dense().astype(np.float64)
    X, dY = inputs(n_in, batch), inputs(n_out, batch, seed=2)
    assert rel_err(layer.forward(X), X @ dense.T + layer.bias) <= 2e-5
    assert rel_err(layer.backward(X, dY), dY @ dense) <= 2e-5


@pytest.mark.parametrize("approx", ["lut", "cordic"])
def test_other_approximations(approx):
    layer = make_layer(200, 130)
    with kernel.use_approx(approx):
        dense = layer.to_dense().astype(np.float64)
        for batch in (None, 33):
            X, dY = inputs(200, batch), inputs(130, batch, seed=2)
            assert rel_err(layer.forward(X), X @ dense.T + layer.bias) <= 2e-5
            assert rel_err(layer.backward(X, dY), dY @ dense) <= 2e-5


def test_concurrent_calls_from_python_threads():
    layer = make_layer(300, 260, block=(32, 64))
    X = inputs(300, 40)
    expected = [layer.forward(X), layer.forward(X[0])]
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: layer.forward(X if k % 2 == 0 else X[0]), range(16)))
    for k, Y in enumerate(results):
        assert np.array_equal(Y, expected[k % 2])
    assert [lib["num_threads"] for lib in threadpoolctl.threadpool_info()] == before


def test_products_that_start_teams_from_several_python_threads(threads, concurrently):
    # 512 x 512 x batch 32 is enough work for a two-thread team; of the threads starting one
    # at once, one gets it and the others compute on their own thread, with the same results
    layer = make_layer(512, 512)
    X = np.stack([inputs(512, 32, seed=k) for k in range(6)])
    dY = np.stack([inputs(512, 32, seed=10 + k) for k in range(6)])
    threads(1)
    expected = [(layer.forward(X[k]), layer.backward(X[k], dY[k])) for k in range(6)]
    threads(2)
    for k, (Y, dX) in enumerate(concurrently(
            lambda k: (layer.forward(X[k]), layer.backward(X[k], dY[k])), 6)):
        np.testing.assert_array_equal(Y, expected[k][0])
        np.testing.assert_allclose(dX, expected[k][1], rtol=0, atol=1e-5)


def test_blas_thread_limit_is_restored():
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()]
    layer = make_layer(200, 130)
    layer.forward(inputs(200, 33))
    layer.backward(inputs(200, 33), inputs(130, 33, seed=2))
    assert [lib["num_threads"] for lib in threadpoolctl.threadpool_info()] == before


@pytest.mark.parametrize("block", [(64, 64), (32, 16), (8, 24)])
def test_fast_dense_matches_precise(block):
    fast, precise = make_layer(200, 130, "fast", block), make_layer(200, 130, "precise", block)
    assert np.max(np.abs(fast.to_dense() - precise.to_dense())) <= 2e-5


def outputs_on(simd, layer, X, dY):
    """Forward of the batch and of its first vector, then backward of each with its
    gradients and transition sums, on one SIMD path."""
    with kernel.use_simd(simd):
        out = [layer.forward(X), layer.forward(X[0])]
        for x, dy in ((X, dY), (X[0], dY[0])):
            layer.transition_stats = None
            out += [layer.backward(x, dy), *layer.grads.values(), layer.transition_stats]
    return out


def test_scalar_path_matches_avx2():
    if "avx2" not in kernel.simd_paths():
        pytest.skip("this CPU has no AVX2: only the scalar path exists")
    layer = make_layer(200, 130)
    X, dY = inputs(200, 33), inputs(130, 33, seed=2)
    for a, b in zip(outputs_on("scalar", layer, X, dY), outputs_on("avx2", layer, X, dY)):
        assert rel_err(a, b) <= 2e-5


def test_avx2_vl_path_equals_avx2_exactly():
    if "avx2_vl" not in kernel.simd_paths():
        pytest.skip("this CPU has no AVX-512VL")
    layer = make_layer(200, 130)
    X, dY = inputs(200, 33), inputs(130, 33, seed=2)
    for a, b in zip(outputs_on("avx2", layer, X, dY), outputs_on("avx2_vl", layer, X, dY)):
        np.testing.assert_array_equal(a, b)


# ---- gradients against finite differences (precise mode) ---------------------------------

def loss(layer, X, dY):
    return float(np.sum(dY * layer.forward(X)))


def fd_master(layer, X, dY, name, index, eps=2.0**-16):
    """Central difference of the loss in the quantised value the layer computes with."""
    params = layer.parameters()
    saved = layer.seeds.copy()
    values, losses = [], []
    for sign in (1, -1):
        params[name][index] += sign * eps
        layer.after_step()
        fields = seeds.unpack(layer.seeds)
        values.append((fields.r if name == "r" else fields.theta)[index])
        losses.append(loss(layer, X, dY))
        layer.seeds = saved
    return (losses[0] - losses[1]) / (values[0] - values[1])


@pytest.mark.parametrize("kw", PARAMETERISATIONS)
def test_gradients_match_finite_differences(kw):
    layer = make_layer(20, 12, "precise", block=(8, 8), seed=4, transition_every=0, **kw)
    X, dY = inputs(20, 5, np.float64, seed=5), inputs(12, 5, np.float64, seed=6)
    layer.backward(X, dY)
    grads = {k: np.array(v, copy=True) for k, v in layer.grads.items()}
    assert set(grads) == set(layer.parameters())
    scale = {k: max(1.0, np.max(np.abs(v))) for k, v in grads.items()}
    for name in ("r", "theta"):
        for index in np.ndindex(layer.seeds.shape):
            fd = fd_master(layer, X, dY, name, index)
            assert abs(fd - grads[name][index]) <= 1e-4 * scale[name], (name, index)
    eps = 2.0**-10
    for name in set(grads) - {"r", "theta"}:      # scale, alpha, beta, bias: exact in float64
        p = layer.parameters()[name]
        for index in np.ndindex(p.shape):
            p[index] += eps
            up = loss(layer, X, dY)
            p[index] -= 2 * eps
            down = loss(layer, X, dY)
            p[index] += eps
            fd = (up - down) / (2 * eps)
            assert abs(fd - grads[name][index]) <= 1e-6 * scale[name], (name, index)


@pytest.mark.parametrize("batch", [None, 33])     # one vector has kernels of its own
@pytest.mark.parametrize("kw", PARAMETERISATIONS)
def test_fast_gradients_match_precise(batch, kw):
    fast, precise = make_layer(200, 130, "fast", **kw), make_layer(200, 130, "precise", **kw)
    X, dY = inputs(200, batch), inputs(130, batch, seed=2)
    fast.backward(X, dY)
    precise.backward(X.astype(np.float64), dY.astype(np.float64))
    for name, g in precise.grads.items():
        assert np.max(np.abs(fast.grads[name] - g)) <= 1e-4 * max(1.0, np.max(np.abs(g))), name


# ---- state transitions ---------------------------------------------------------------------

def linearised_changes(layer, X, dY, table):
    """Oracle: per block and class, sum G (W_eff' - W_eff) when only that class of every block
    moves by ``table``, with W_eff from the dense matrix (centring included), and the class's
    sum |G W_eff| (float64 NumPy)."""
    h, w = layer.block
    G = np.zeros((layer.grid[0] * h, layer.grid[1] * w))
    G[:layer.out_features, :layer.in_features] = \
        np.atleast_2d(dY).T.astype(np.float64) @ np.atleast_2d(X)

    def blocks(a):
        return a.reshape(layer.grid[0], h, layer.grid[1], w).transpose(0, 2, 1, 3)

    def dense(hi):
        trial = FusedLinear._from_state(*layer._state())
        trial.seeds["hi"] = hi
        out = np.zeros((layer.grid[0] * h, layer.grid[1] * w))
        out[:layer.out_features, :layer.in_features] = trial.to_dense()
        return blocks(out)

    G, current = blocks(G), seeds.unpack(layer.seeds).sel
    base = dense(layer.seeds["hi"])
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    changes, gabs = np.empty(layer.grid + (4,)), np.empty(layer.grid + (4,))
    for c in range(4):
        moved = current.copy()
        moved[..., c] = table[current[..., c]]
        changes[..., c] = (G * (dense(with_states(layer.seeds["hi"], moved)) - base)).sum((-2, -1))
        gabs[..., c] = np.abs(G * base)[..., ((j - i) % 4) == c].sum(-1)
    return changes, gabs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [None, 16])
@pytest.mark.parametrize("kw", PARAMETERISATIONS[:2])
def test_transitions_lower_the_linearised_loss(mode, batch, kw):
    layer = make_layer(200, 130, mode, block=(32, 32), seed=7, tau=0.01, max_moves=1.0, **kw)
    X, dY = inputs(200, batch, seed=8), inputs(130, batch, seed=9)
    layer.backward(X, dY)
    current = seeds.unpack(layer.seeds).sel
    chosen, moved = layer.candidate_states()
    assert np.array_equal(moved, chosen != current)
    assert 0 < moved.sum() < moved.size
    pos, gabs = linearised_changes(layer, X, dY, rbe.seeds.POS_STATE)
    neg, _ = linearised_changes(layer, X, dY, rbe.seeds.NEG_STATE)
    took_pos = chosen == rbe.seeds.POS_STATE[current]
    after = np.where(took_pos, pos, neg)
    margin = 1e-4 * gabs if mode == "fast" else 1e-9 * gabs
    assert np.all(after[moved] < -layer.tau * gabs[moved] + margin[moved])
    assert np.all(after[moved] <= np.minimum(pos, neg)[moved] + margin[moved])
    # Where nothing moved, neither candidate passes the threshold.
    for cand in (pos, neg):
        assert np.all(cand[~moved] >= -layer.tau * gabs[~moved] - margin[~moved])


def test_transitions_respect_tau_and_max_moves():
    X, dY = inputs(200, 16, seed=8), inputs(130, 16, seed=9)
    moved = {}
    for tau in (0.0, 0.01, 0.1, 1e9):
        layer = make_layer(200, 130, block=(32, 32), seed=7, tau=tau, max_moves=1.0)
        layer.backward(X, dY)
        moved[tau] = layer.candidate_states()[1]
    assert not moved[1e9].any()
    assert moved[0.0].sum() > moved[0.1].sum() > 0
    for small, large in ((0.0, 0.01), (0.01, 0.1)):
        assert np.all(moved[small] | ~moved[large])       # a larger tau only removes moves
    capped = make_layer(200, 130, block=(32, 32), seed=7, tau=0.0, max_moves=0.1)
    capped.backward(X, dY)
    few = capped.candidate_states()[1]
    assert few.sum() == int(0.1 * few.size) and np.all(moved[0.0] | ~few)


def test_candidate_states_need_statistics():
    layer = make_layer(200, 130, block=(32, 32))
    with pytest.raises(ValueError, match="run backward"):
        layer.candidate_states()


def test_transition_gains_add_up_over_micro_batches():
    X, dY = inputs(200, 16, seed=8), inputs(130, 16, seed=9)
    whole = make_layer(200, 130, block=(32, 32), seed=7)
    whole.backward(X, dY)
    parts = make_layer(200, 130, block=(32, 32), seed=7)
    parts.backward(X[:5], dY[:5])
    parts.backward(X[5:], dY[5:])
    linear = [rbe.fused._GAIN_POS, rbe.fused._GAIN_NEG, rbe.fused._GSUM]
    assert rel_err(parts.transition_stats[..., linear], whole.transition_stats[..., linear]) \
        <= 1e-6
    # sums of |G W_eff| per backward: at least those of the whole batch
    abs_sums = rbe.fused._ABS
    assert np.all(parts.transition_stats[..., abs_sums]
                  >= whole.transition_stats[..., abs_sums] * (1 - 1e-6))


def test_transitions_deterministic_and_thread_independent(threads):
    X, dY = inputs(200, 33, seed=8), inputs(130, 33, seed=9)
    results = []
    for n in (1, 2, 2):
        threads(n)
        layer = make_layer(200, 130, block=(32, 32), seed=7)
        dX = layer.backward(X, dY)
        results.append((dX, layer.grads, layer.candidate_states()[0]))
    for dX, grads, sel in results[1:]:
        assert np.array_equal(sel, results[0][2])
        assert rel_err(dX, results[0][0]) <= 1e-6
        for name, g in grads.items():
            assert np.allclose(g, results[0][1][name], rtol=1e-6, atol=0), name


def test_after_step_applies_transitions_every_interval_and_requantizes():
    layer = make_layer(200, 130, block=(32, 32), seed=7, transition_every=2, tau=0.01)
    start = seeds.unpack(layer.seeds).sel
    layer.backward(inputs(200, 16, seed=8), inputs(130, 16, seed=9))
    layer.parameters()["r"][...] += 0.01
    layer.after_step()                        # first step: sums kept, states unchanged
    fields = seeds.unpack(layer.seeds)
    assert np.array_equal(fields.sel, start) and layer.transition_stats is not None
    assert np.allclose(fields.r, fields.r_master, atol=2.0**-20)
    layer.backward(inputs(200, 16, seed=10), inputs(130, 16, seed=11))
    chosen, moved = layer.candidate_states()
    assert moved.any()
    layer.after_step()
    assert np.array_equal(seeds.unpack(layer.seeds).sel, chosen)
    assert layer.transition_stats is None


@pytest.mark.parametrize("seed", range(6))
def test_exact_check_never_increases_the_loss(seed):
    layer = make_layer(200, 130, block=(32, 32), seed=seed, transition_every=1, tau=0.0,
                       max_moves=1.0)
    X, T = inputs(200, 16, seed=seed + 10), inputs(130, 16, seed=seed + 20)

    def batch_loss():
        return 0.5 * float(np.sum((layer.forward(X) - T) ** 2))

    layer.backward(X, layer.forward(X) - T)
    before, start = batch_loss(), layer.seeds["hi"].copy()
    proposed = layer.candidate_states()[0]
    layer.after_step(loss=batch_loss)
    kept = not np.array_equal(layer.seeds["hi"], start)
    assert batch_loss() <= before
    assert np.array_equal(seeds.unpack(layer.seeds).sel,
                          proposed if kept else seeds.unpack(start).sel)


def test_exact_check_keeps_moves_that_help():
    """Over several layers, some proposals pass the exact check and some do not: the check
    is neither always nor never taken (a unit loss is quadratic in the moved weights)."""
    kept = []
    for seed in range(6):
        layer = make_layer(200, 130, block=(32, 32), seed=seed, transition_every=1, tau=0.0,
                           max_moves=0.05)
        X, T = inputs(200, 16, seed=seed + 10), inputs(130, 16, seed=seed + 20)
        layer.backward(X, layer.forward(X) - T)
        start = layer.seeds["hi"].copy()
        layer.after_step(loss=lambda layer=layer, X=X, T=T:
                         0.5 * float(np.sum((layer.forward(X) - T) ** 2)))
        kept.append(not np.array_equal(layer.seeds["hi"], start))
    assert any(kept)


# ---- threads ---------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [None, 64])
def test_results_independent_of_thread_count(threads, batch):
    layer = make_layer(600, 520, block=(32, 64))      # large enough for two threads
    X, dY = inputs(600, batch), inputs(520, batch, seed=2)
    out = []
    for n in (1, 2):
        threads(n)
        out.append((layer.forward(X), layer.backward(X, dY)))
    for a, b in zip(*out):
        assert rel_err(a, b) <= 1e-6


def test_batch_workspace_does_not_grow_with_the_layer_width(threads):
    """A batch's weights are generated in tiles: a forward allocates the grouped inputs, their
    block-column sums, the output and at most 4 MiB of panel per thread, where a whole block row
    per thread (64 x 2^20 floats, 256 MiB, here) was allocated before. Numpy's allocations are
    traced, the plan's work arrays among them (benchmarks/bench_memory.py measures the resident
    set of a 4096 x 2^20 layer)."""
    threads(2)
    n_in = 1 << 20
    layer = FusedLinear(n_in, 64, seed=0)
    X = inputs(n_in, 3)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        Y = layer.forward(X)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert np.isfinite(Y).all()
    grouped, sums = X.nbytes, 3 * layer.grid[1] * 8
    assert peak <= grouped + sums + Y.nbytes + 2 * (4 << 20) + (1 << 20)


# ---- storage and validation ------------------------------------------------------------------

def test_storage_and_parameters():
    layer = FusedLinear(1024, 1024, seed=0)
    assert layer.seeds.shape == (16, 16) and layer.seeds.dtype == seeds.DTYPE
    assert layer.nbytes == 256 * 16 + 256 * 4 + 2 * 4 + 1024 * 4
    assert layer.compression_ratio == pytest.approx((4 * 1024**2 + 4096) / layer.nbytes)
    params = layer.parameters()
    fields = seeds.unpack(layer.seeds)
    assert np.array_equal(params["r"], fields.r_master)
    assert np.array_equal(params["theta"], fields.theta_master)
    assert np.shares_memory(params["r"], layer.seeds)
    assert set(params) == {"r", "theta", "scale", "bias"}
    assert set(FusedLinear(64, 64, center=False, block_scale=False).parameters()) == \
        {"r", "theta", "alpha", "beta", "bias"}
    assert FusedLinear(64, 64, block_scale=False).nbytes == 16 + 2 * 4 + 64 * 4
    assert "bias" not in FusedLinear(64, 64, bias=False).parameters()
    ragged = FusedLinear(200, 130, seed=0)
    assert ragged.seeds.shape == (3, 4) and ragged.to_dense().shape == (130, 200)


def test_copies_build_their_own_plan():
    # the plan and the block sums hold C pointers: pickles and copies leave them out
    layer = make_layer(200, 130)
    X = inputs(200, 5)
    expected = layer.forward(X)
    for twin in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert twin._plan is not layer._plan
        np.testing.assert_array_equal(twin.forward(X), expected)
        twin.scale[...] *= 2                         # its own parameters, read at each call
        assert not np.array_equal(twin.forward(X), expected)
    np.testing.assert_array_equal(layer.forward(X), expected)


def test_same_seed_same_layer():
    a, b = FusedLinear(200, 130, seed=3), FusedLinear(200, 130, seed=3)
    assert np.array_equal(a.seeds, b.seeds)


@pytest.mark.parametrize("kwargs", [
    {"in_features": 32, "out_features": 130},            # block wider than the layer
    {"in_features": 200, "out_features": 40},            # block taller than the layer
    {"in_features": 0, "out_features": 64},
    {"in_features": 200, "out_features": 130, "block": (0, 4)},
    {"in_features": 200, "out_features": 130, "mode": "exact"},
    {"in_features": 200, "out_features": 130, "tau": -1.0},
    {"in_features": 200, "out_features": 130, "tau": "0.1"},
    {"in_features": 200, "out_features": 130, "transition_every": -1},
    {"in_features": 200, "out_features": 130, "transition_every": 2.5},
    {"in_features": 200, "out_features": 130, "max_moves": 0.0},
    {"in_features": 200, "out_features": 130, "max_moves": 1.5},
    {"in_features": 200, "out_features": 130, "center": "yes"},
    {"in_features": 200, "out_features": 130, "block_scale": None},
])
def test_bad_construction(kwargs):
    with pytest.raises(ValueError):
        FusedLinear(**kwargs)


@pytest.mark.parametrize("mode", MODES)
def test_bad_inputs(mode):
    layer = make_layer(200, 130, mode)
    X = inputs(200, 4)
    for bad in (X[:, :199], X.astype(np.int32), X.astype(np.float16), np.zeros((2, 3, 200)),
                np.where(np.arange(200) == 5, np.nan, X).astype(np.float32), np.zeros((0, 200))):
        with pytest.raises(ValueError):
            layer.forward(bad)
    with pytest.raises(ValueError):
        layer.backward(X, inputs(130, 5))
    with pytest.raises(ValueError):
        layer.backward(X, inputs(129, 4))
    with pytest.raises(ValueError):
        layer.seeds = np.zeros((3, 4), np.float64)


@pytest.mark.parametrize("name", ["alpha", "beta", "scale", "bias"])
def test_non_finite_parameters_raise(name):
    layer = make_layer(200, 130)
    getattr(layer, name)[...] = np.inf
    with pytest.raises(ValueError, match=name):
        layer.forward(inputs(200, 2))


def test_non_finite_masters_raise_in_after_step():
    layer = make_layer(200, 130)
    before = layer.seeds.copy()
    layer.parameters()["theta"][1, 2] = np.nan
    with pytest.raises(ValueError, match="theta"):
        layer.after_step()
    assert np.array_equal(layer.seeds["hi"], before["hi"])


def test_core_entry_points_check_sizes():
    layer = make_layer(200, 130)
    plan, hi = layer._plan, layer.seeds["hi"]
    params = (layer.scale, layer.alpha, layer.beta, layer.bias)
    x = inputs(200, 2)
    for bad, match in (({"x": x[:, :-1]}, "x must be"), ({"x": x.astype(np.float16)}, "x must be"),
                       ({"x": np.asfortranarray(x)}, "x must be a C-contiguous"),
                       ({"hi": hi[:, :-1]}, "hi must have the grid's shape"),
                       ({"scale": layer.scale[:, :-1].copy()}, "scale must have the grid's"),
                       ({"bias": layer.bias[:-1]}, "bias must have 130"),
                       ({"out": np.empty((2, 129), np.float32)}, "out must be"),
                       ({"out": np.empty((2, 130))}, "out must be")):
        arguments = {"x": x, "hi": hi, "scale": params[0], "alpha": params[1],
                     "beta": params[2], "bias": params[3], **bad}
        with pytest.raises(ValueError, match=match):
            plan.forward(**arguments)
    tables, sums = kernel.shape_tables(layer.block), layer._sums
    source = layer._source.copy()
    source[3] = 200                                  # one column past the input
    with pytest.raises(ValueError, match="outside"):
        _fused.ForwardPlan(200, 130, layer.block, tables, source, True, sums)
    with pytest.raises(ValueError, match="source must have"):
        _fused.ForwardPlan(200, 130, layer.block, tables, source[:-1], True, sums)
    with pytest.raises(ValueError, match="sums must be"):
        _fused.ForwardPlan(201, 130, layer.block, tables, layer._source, True, sums)
    with pytest.raises(ValueError, match="does not tile"):
        _fused.block_sums(np.ascontiguousarray(hi), *tables, 64, 200, 130,
                          np.empty((3, 4, rbe.fused.SUMS["n"])))
    with pytest.raises(ValueError, match="out must have shape"):
        _fused.block_sums(np.ascontiguousarray(hi), *tables, 64, 130, 200,
                          np.empty((3, 4, rbe.fused.SUMS["n"] - 1)))
    args, select = layer._kernel_args(), layer._kernel_select()
    factor = layer._block_terms().factor32
    xp = layer._grouped(inputs(200, 1))
    with pytest.raises(ValueError, match="outside"):
        _fused.fused_group(inputs(200, 1), source, np.empty_like(xp))
    with pytest.raises(ValueError, match="grouped inputs must have shape"):
        _fused.fused_ungroup(xp[:, :-1], layer._source, np.empty((1, 200), np.float32))
    stats = np.zeros(layer.seeds.shape + (rbe.fused.STATS["n"],))
    dy = np.zeros((1, 130), np.float32)
    with pytest.raises(ValueError, match="outputs do not fit"):
        _fused.fused_backward(*args, xp, np.zeros((1, 100), np.float32), np.empty_like(xp),
                              stats, factor, factor, **select)
    with pytest.raises(ValueError, match="stats must have shape"):
        _fused.fused_backward(*args, xp, dy, np.empty_like(xp), stats[:, :-1].copy(), factor,
                              factor, **select)
    with pytest.raises(ValueError, match="offset must have the seed grid's shape"):
        _fused.fused_backward(*args, xp, dy, np.empty_like(xp), stats, factor, factor[:-1].copy(),
                              **select)


# ---- training with the defaults ------------------------------------------------------------

def digits_mlp_loss(make_optimizer, epochs=3, seed=0):
    """Mean training loss of the last epoch of the digits MLP (64-256-256-10) whose hidden
    layers are default FusedLinear layers of 16 x 16 blocks (the head dense)."""
    pytest.importorskip("sklearn")
    from rbe import demo, optim
    Xtr, ytr, _, _ = demo.load_data(seed)
    model = demo.MLP([FusedLinear(64, 256, block=(16, 16), seed=seed),
                      FusedLinear(256, 256, block=(16, 16), seed=seed + 1),
                      demo.DenseLinear(256, 10, np.random.default_rng(seed))])
    opt = make_optimizer(optim, model.layers)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        losses = []
        for idx in np.array_split(rng.permutation(len(Xtr)), len(Xtr) // 64):
            logits = model.forward(Xtr[idx], keep=True)
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            losses.append(-np.mean(np.log(p[np.arange(len(idx)), ytr[idx]] + 1e-12)))
            p[np.arange(len(idx)), ytr[idx]] -= 1.0
            model.backward((p / len(idx)).astype(np.float32))
            opt.step()
    return float(np.mean(losses))


@pytest.mark.parametrize("make_optimizer", [
    lambda optim, layers: optim.Adam(layers, lr=1e-3),
    lambda optim, layers: optim.Adam(layers, lr=1e-2),
    lambda optim, layers: optim.SGD(layers, lr=0.1, momentum=0.9),
], ids=["adam-1e-3", "adam-1e-2", "sgd-momentum-0.1"])
def test_default_layers_do_not_collapse(make_optimizer):
    """The per-layer affine of the original parameterisation let one Adam step silence every
    unit (the loss stuck at ln 10 = 2.30); the defaults must learn at both ends of the range."""
    assert digits_mlp_loss(make_optimizer) < np.log(10) - 0.5
