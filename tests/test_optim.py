"""rbe.optim on FusedLinear, and the original's training scenarios with both rules."""
import numpy as np
import pytest

from rbe import optim, scenarios, seeds
from rbe.fused import FusedLinear


def trained_layer(seed=0, tau=0.01):
    """A layer of the original parameterisation (alpha and beta trained) after one backward,
    deciding transitions every step."""
    layer = FusedLinear(200, 130, block=(32, 32), seed=seed, tau=tau, center=False,
                        block_scale=False, transition_every=1, max_moves=1.0)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((16, 200)).astype(np.float32)
    layer.backward(X, rng.standard_normal((16, 130)).astype(np.float32))
    return layer


def snapshot(layer):
    return {k: np.array(v, dtype=np.float64, copy=True) for k, v in layer.parameters().items()}


def test_sgd_step_updates_masters_then_requantizes_and_applies_transitions():
    layer = trained_layer()
    before, grads = snapshot(layer), {k: np.array(v) for k, v in layer.grads.items()}
    pending = layer.candidate_states()[0]
    optim.SGD(layer, lr=1e-3).step()
    after = snapshot(layer)
    for name in ("alpha", "beta", "bias"):
        assert np.allclose(after[name], before[name] - 1e-3 * grads[name], rtol=0, atol=1e-6)
    expected_r = np.clip(before["r"] - 1e-3 * grads["r"], 0, seeds.R_MAX)
    assert np.allclose(after["r"], expected_r, atol=1e-6)
    fields = seeds.unpack(layer.seeds)
    assert np.array_equal(fields.sel, pending)
    assert np.allclose(fields.r, fields.r_master, atol=2.0**-20)
    assert np.allclose(fields.theta, fields.theta_master, atol=2.0**-23)


def test_adam_matches_bias_corrected_formula():
    layer = trained_layer()
    adam = optim.Adam(layer, lr=1e-2)
    m = {k: 0.0 for k in ("alpha", "beta")}
    v = dict(m)
    p = {k: float(layer.parameters()[k]) for k in m}
    for t in (1, 2, 3):
        g = {k: float(layer.grads[k]) for k in m}
        adam.step()
        for k in m:
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
            p[k] -= 1e-2 * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
            assert float(layer.parameters()[k]) == pytest.approx(p[k], abs=1e-6)


def test_optimizer_takes_a_list_and_zero_grad_clears():
    layers = [trained_layer(0), trained_layer(1)]
    adam = optim.Adam(layers, lr=1e-3)
    adam.step()
    assert all(layer.transition_stats is None for layer in layers)
    adam.zero_grad()
    assert all(not np.any(g) for layer in layers for g in layer.grads.values())


@pytest.mark.parametrize("make", [lambda layers: optim.SGD(layers, lr=0.0),
                                  lambda layers: optim.SGD(layers, lr=np.nan),
                                  lambda layers: optim.Adam(object(), lr=0.1)])
def test_bad_optimizer_arguments(make):
    with pytest.raises(ValueError):
        make(trained_layer())


@pytest.mark.parametrize("kw", [{}, {"center": False, "block_scale": False}])
def test_training_lowers_loss_deterministically(kw):
    def run():
        layer = FusedLinear(96, 80, block=(32, 32), seed=3, transition_every=5, **kw)
        rng = np.random.default_rng(4)
        X = rng.standard_normal((32, 96)).astype(np.float32)
        target = X @ rng.uniform(0, 0.05, (96, 80)).astype(np.float32)
        adam, losses = optim.Adam(layer, lr=0.02), []
        for _ in range(40):
            Y = layer.forward(X)
            losses.append(float(np.mean((Y - target) ** 2)))
            layer.backward(X, 2 * (Y - target) / Y.size)
            adam.step()
        return losses, layer.seeds.copy()
    (losses, final), (again, final_again) = run(), run()
    assert losses[-1] < 0.2 * losses[0]
    assert losses == again and np.array_equal(final, final_again)


# ---- the original's scenarios (docs/design.md, "Test scenarios") -------------------------

@pytest.fixture(scope="module")
def results():
    return {name: scenarios.compare(name, scenarios.FUSED_EPOCHS.get(name))
            for name in scenarios.SCENARIOS}


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_ours_ends_at_least_as_good_in_no_more_epochs(results, name):
    r = results[name]
    assert r["fused_epochs"] <= r["original_epochs"]
    assert r["fused"] <= r["original"]
    assert r["fused_reaches_original_at"] is not None
    assert r["fused"] < r["zero"] and r["original"] < r["zero"]


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_seed_alone_learns(results, name):
    # The seed alone (alpha = 1, beta = 0) is the original's model class with our rule: it
    # must learn and beat the all-zero predictor; it does not beat the original everywhere
    # (docs/fused.md has the numbers).
    r = results[name]
    assert r["fused_seed_only"] < r["zero"]


def test_gravity_beats_the_zero_predictor_clearly(results):
    # Predicting 0 already scores 0.0599; the README's 0.050 barely beats it.
    r = results["gravity"]
    assert r["fused"] < 0.6 * r["zero"]


def test_step_with_a_closure_reaches_every_layer():
    """A closure (the exact transition check) goes to every layer's after_step; hybrid layers
    ignore it, and the seed layer's moves never raise the loss it returns."""
    from rbe import HybridLinear
    rng = np.random.default_rng(0)
    seed_layer = FusedLinear(200, 130, block=(32, 32), seed=0, transition_every=1, tau=0.0,
                             max_moves=1.0)
    hybrid = HybridLinear(130, 40, block=(32, 32), k=8, seed=0)
    X, T = rng.standard_normal((16, 200)).astype(np.float32), rng.standard_normal((16, 40))

    def loss():
        return 0.5 * float(np.sum((hybrid.forward(seed_layer.forward(X)) - T) ** 2))

    H = seed_layer.forward(X)
    seed_layer.backward(X, hybrid.backward(H, (hybrid.forward(H) - T).astype(np.float32)))
    for grads in (seed_layer.grads, hybrid.grads):    # only the transitions change the loss
        for g in grads.values():
            g[...] = 0
    calls = []
    before = loss()
    optim.SGD([seed_layer, hybrid], lr=1e-3).step(lambda: calls.append(1) or loss())
    assert len(calls) == 2 and loss() <= before
