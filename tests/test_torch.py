"""rbe.torch: RBELinear and compress (skipped when PyTorch is not installed)."""
import copy
import pickle
import textwrap
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (extra rbe[torch])")

from torch import nn  # noqa: E402

import rbe  # noqa: E402
import rbe.torch as rt  # noqa: E402

needs_fused = pytest.mark.skipif(not hasattr(rbe, "FusedLinear"),
                                 reason="rbe.FusedLinear is not part of this build")
KINDS = ["hybrid", pytest.param("fused", marks=needs_fused), "code"]


def small(kind, seed=0, bias=True):
    """A 40 -> 24 layer of 8 x 8 blocks, 16 coefficients per hybrid block."""
    return rt.RBELinear(40, 24, kind=kind, block=(8, 8), k=16, bias=bias, seed=seed)


def reference(module, x):
    """x W^T + b from the dense weight, in float64."""
    weight = module.to_dense().double()
    y = x.double() @ weight.T
    return y if module.bias is None else y + module.bias.double()


def inputs(*shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape, np.float32))


def test_import_rbe_does_not_import_torch(run_python):
    code = "import sys, rbe; assert 'torch' not in sys.modules; import rbe.torch; " \
           "assert 'torch' in sys.modules and rbe.torch.RBELinear"
    done = run_python(code)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(40,), (5, 40), (2, 3, 40)])
def test_forward_matches_dense_weight(kind, shape):
    module = small(kind)
    x = inputs(*shape)
    y = module(x)
    assert y.dtype == torch.float32 and y.shape == shape[:-1] + (24,)
    torch.testing.assert_close(y.double(), reference(module, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_kernels_follow_torch_thread_count_unless_rbe_s_is_set(kind, threads):
    module = small(kind)
    layer, seen = module._layer, []
    forward, backward = layer.forward, layer.backward
    layer.forward = lambda *a: seen.append(rbe.get_num_threads()) or forward(*a)
    layer.backward = lambda *a: seen.append(rbe.get_num_threads()) or backward(*a)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        module(inputs(5, 40).requires_grad_()).sum().backward()
        threads(2)
        module(inputs(5, 40))
        with rbe.threads(3):
            module(inputs(5, 40))
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1, 2, 3]


@pytest.mark.parametrize("kind", KINDS)
def test_inference_modes_give_the_same_result(kind):
    module = small(kind)
    x = inputs(5, 40)
    y = module(x)
    assert y.grad_fn is not None
    with torch.no_grad():
        assert torch.equal(module(x), y)
    with torch.inference_mode():
        assert torch.equal(module(inputs(5, 40)), y)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch(kind):
    module = small(kind)
    x = torch.zeros(0, 40, requires_grad=True)
    y = module(x)
    assert y.shape == (0, 24)
    y.sum().backward()
    assert x.grad.shape == (0, 40) and not module.bias.grad.any()


@pytest.mark.parametrize("x, message", [
    (torch.zeros(3, 40, dtype=torch.float64), "float32"),
    (torch.zeros(3, 41), r"\(\.\.\., 40\)"),
    (torch.zeros(()), r"\(\.\.\., 40\)"),
    (torch.zeros(3, 40, device="meta"), "CPU"),
])
def test_bad_input_is_a_clear_error(x, message):
    with pytest.raises(ValueError, match=message):
        small("hybrid")(x)


def test_non_finite_input_is_refused():
    x = inputs(3, 40)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        small("hybrid")(x)


def test_non_tensor_input():
    with pytest.raises(TypeError, match="torch.Tensor"):
        small("hybrid")(np.zeros((3, 40), np.float32))


def test_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        rt.RBELinear(40, 24, kind="dense")


@pytest.mark.filterwarnings("ignore:Input #0 requires gradient and is not a double")
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_input(kind):
    # The module computes in float32, so gradcheck runs in float32. y is linear in x, so
    # central differences are exact up to rounding: with eps = 1e-2 the numerical Jacobian
    # is off by about ulp(|y|) / eps ~ 1e-5 for |y| ~ 1; atol and rtol of 1e-3 leave margin.
    module = small(kind)
    x = inputs(3, 40).requires_grad_()
    assert torch.autograd.gradcheck(module, (x,), eps=1e-2, atol=1e-3, rtol=1e-3)


def loss_weights(module, x):
    return inputs(*x.shape[:-1], module.out_features, seed=7)


def loss(module, x, g):
    with torch.no_grad():
        return float((module(x).double() * g.double()).sum())


@pytest.mark.parametrize("kind, step, tol", [
    ("hybrid", 1e-2, 1e-3),
    # r and theta enter nonlinearly and are quantised (Q0.20, Q1.23) on every change.
    pytest.param("fused", 1e-3, 3e-2, marks=needs_fused),
])
def test_parameter_gradients_match_finite_differences(kind, step, tol):
    module = small(kind)
    x, rng = inputs(6, 40), np.random.default_rng(1)
    g = loss_weights(module, x)
    (module(x) * g).sum().backward()
    for name, p in module.named_parameters():
        for i in rng.choice(p.numel(), size=min(4, p.numel()), replace=False):
            index = np.unravel_index(i, p.shape)
            values = []
            for sign in (1, -1):
                with torch.no_grad():
                    p[index] += sign * step
                values.append(loss(module, x, g))
                with torch.no_grad():
                    p[index] -= sign * step
            numeric = (values[0] - values[1]) / (2 * step)
            analytic = float(p.grad[index])
            assert abs(numeric - analytic) <= tol * (1 + abs(analytic)), (name, index)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_sgd_equals_rbe_sgd(kind):
    """Shared memory: a torch optimiser updates the rbe layer, and after_step follows."""
    module, twin = small(kind, seed=3), small(kind, seed=3)
    x = inputs(8, 40)
    torch_opt = torch.optim.SGD(module.parameters(), lr=0.05)
    rbe_opt = rbe.optim.SGD(twin._layer, lr=0.05)
    for _ in range(3):
        torch_opt.zero_grad()
        (module(x) ** 2).mean().backward()
        torch_opt.step()
        y = twin._layer.forward(x.numpy())
        twin._layer.backward(x.numpy(), (2 * y / y.size).astype(np.float32))
        rbe_opt.step()
    layer = module.layer   # applies the pending update
    for name, p in twin._layer.parameters().items():
        np.testing.assert_allclose(layer.parameters()[name], p, rtol=1e-5, atol=1e-6)
    if kind == "fused":
        # Same states; the quantised r and theta may differ in the last bit (torch casts the
        # float64 gradients to float32 before the update, rbe.optim after).
        ours, theirs = rbe.seeds.unpack(layer.seeds), rbe.seeds.unpack(twin._layer.seeds)
        np.testing.assert_array_equal(ours.sel, theirs.sel)
        np.testing.assert_allclose(ours.r, theirs.r, atol=1e-5)
        np.testing.assert_allclose(ours.theta, theirs.theta, atol=1e-5)


OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "adam-foreach": lambda params: torch.optim.Adam(params, lr=1e-2, foreach=True),
    "adam-loop": lambda params: torch.optim.Adam(params, lr=1e-2, foreach=False),
    # The fused CPU kernel updates without moving the version counters.
    "adam-fused": lambda params: torch.optim.Adam(params, lr=1e-2, fused=True),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_step_runs_after_step_once(kind, optimizer, monkeypatch):
    module = small(kind)
    calls = []
    after_step = module._layer.after_step
    monkeypatch.setattr(module._layer, "after_step", lambda: calls.append(1) or after_step())
    opt = OPTIMIZERS[optimizer](module.parameters())
    x = inputs(8, 40)
    for step in range(1, 4):
        opt.zero_grad()
        (module(x) ** 2).mean().backward()
        opt.step()
        assert len(calls) == step           # right after the step, not at the next forward
    module(x)
    assert len(calls) == 3


def test_manual_in_place_update_runs_after_step(monkeypatch):
    module = small("hybrid")
    calls = []
    monkeypatch.setattr(module._layer, "after_step", lambda: calls.append(1))
    module(inputs(2, 40))
    assert not calls
    with torch.no_grad():
        module.values.mul_(0.5)
    module(inputs(2, 40))
    assert len(calls) == 1


def test_conversions_that_would_detach_the_parameters_are_refused():
    module = small("hybrid")
    model = nn.Sequential(module)
    assert model.float().cpu().to(torch.float32) is model
    for convert in (model.double, model.half, model.share_memory,
                    lambda: model.to(torch.float64)):
        with pytest.raises(ValueError, match="not supported"):
            convert()
    assert module.coef.dtype == torch.float32
    assert module.coef.data_ptr() == module._layer.coef.ctypes.data


def test_adam_trains_a_regression():
    module = small("hybrid", seed=2)
    target = nn.Linear(40, 24)
    x = inputs(64, 40)
    with torch.no_grad():
        y = target(x)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        err = ((module(x) - y) ** 2).mean()
        err.backward()
        opt.step()
        losses.append(float(err.detach()))
    assert losses[-1] < 0.5 * losses[0]


@needs_fused
def test_fused_transitions_applied_by_the_optimizer_step():
    module = small("fused", seed=4)
    layer = module._layer
    layer.transition_every, layer.max_moves, layer.tau = 1, 1.0, 0.01
    x = inputs(8, 40)
    opt = torch.optim.SGD(module.parameters(), lr=0.0)    # the parameters stay: same choice
    (module(x) ** 2).sum().backward()
    chosen, moved = module._layer.candidate_states()
    assert moved.any()
    opt.step()
    assert module._layer.transition_stats is None
    assert (rbe.seeds.unpack(module._layer.seeds).sel == chosen).all()


def trained_pair(kind):
    """Two modules of the same shape with different structure and values."""
    if kind == "hybrid":
        a = rt.compress(nn.Linear(40, 24), block=(8, 8), k=16, basis=True)
        b = rt.compress(nn.Linear(40, 24), block=(8, 8), k=16, basis=True)
        return a, b
    return small(kind, seed=5), small(kind, seed=6)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip(kind, tmp_path):
    source, target = trained_pair(kind)
    x = inputs(4, 40)
    opt = torch.optim.SGD(target.parameters(), lr=0.1)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    target.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
    # Parameters keep their identity, so an optimiser created before loading still trains.
    assert all(p is q for p, q in zip(opt.param_groups[0]["params"], target.parameters()))
    (target(x) ** 2).sum().backward()
    opt.step()
    assert not torch.equal(target(x), source(x))


@needs_fused
def test_state_dict_of_another_kind_replaces_the_layer():
    seeded, module = small("fused"), small("hybrid")
    module.load_state_dict(seeded.state_dict())
    assert module.kind == "fused" and set(dict(module.named_parameters())) == \
        set(dict(seeded.named_parameters()))
    x = inputs(4, 40)
    torch.testing.assert_close(module(x), seeded(x), rtol=0, atol=0)


def test_state_dict_missing_and_unexpected_keys():
    module, other = trained_pair("hybrid")
    state = module.state_dict()
    del state["index"]
    with pytest.raises(RuntimeError, match="index"):
        other.load_state_dict(state)
    state = module.state_dict()
    state["extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="extra"):
        other.load_state_dict(state)
    result = other.load_state_dict({"_extra_state": state["_extra_state"]}, strict=False)
    assert "coef" in result.missing_keys


def test_state_dict_with_corrupted_index_is_refused():
    module, other = trained_pair("hybrid")
    state = module.state_dict()
    state["index"] = torch.zeros_like(state["index"])          # repeated positions
    with pytest.raises(RuntimeError, match="cannot rebuild"):
        other.load_state_dict(state)


@pytest.mark.parametrize("change, message", [
    (lambda state: state["values"].fill_(1e30), "beyond"),
    (lambda state: state["_extra_state"]["config"].update(block=[0, 8]), "block"),
    (lambda state: state["_extra_state"]["config"].update(unknown=1), "unknown"),
])
def test_state_dict_gets_the_checks_of_rbe_load(change, message):
    module, other = trained_pair("hybrid")
    state = copy.deepcopy(module.state_dict())
    change(state)
    with pytest.raises(RuntimeError, match=f"cannot rebuild.*{message}"):
        other.load_state_dict(state)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_in_the_stored_form_of_earlier_versions_loads(kind):
    """Earlier state dicts held the arrays of ``layer._state()`` (uint64 seed words, a ``lo``
    buffer, one- or two-byte positions)."""
    source, target = trained_pair(kind)
    config, arrays = source.layer._state()
    state = {name: torch.from_numpy(np.array(a)) for name, a in arrays.items()}
    state.update({name: p.detach().clone() for name, p in source.named_parameters()})
    state["_extra_state"] = {"kind": source._kind, "config": config}
    target.load_state_dict(state)
    x = inputs(4, 40)
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_state_dict_in_a_model():
    model = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 24))
    rt.compress(model, block=(8, 8), k=16)
    fresh = rt.compress(nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 24)),
                        block=(16, 16), k=8)
    fresh.load_state_dict(model.state_dict())
    x = inputs(3, 40)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_rbe_save_of_the_layer(kind, tmp_path):
    module = small(kind)
    x = inputs(4, 40)
    rbe.save(tmp_path / "layer.safetensors", module.layer)
    loaded = rt.RBELinear.from_layer(rbe.load(tmp_path / "layer.safetensors"))
    torch.testing.assert_close(loaded(x), module(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_deepcopy_and_pickle_keep_parameters_shared(kind):
    module = small(kind)
    x = inputs(4, 40)
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        torch.testing.assert_close(clone(x), module(x), rtol=0, atol=0)
        assert all(p._rbe_owner() is clone for p in clone.parameters())   # step hook target
        with torch.no_grad():
            clone.bias += 1.0
        torch.testing.assert_close(clone(x), module(x) + 1.0)


def test_compress_replaces_linear_layers():
    model = nn.Sequential(nn.Linear(40, 32), nn.ReLU(),
                          nn.Sequential(nn.Linear(32, 24, bias=False), nn.Tanh()))
    x = inputs(5, 40)
    with torch.no_grad():
        # Smooth weights, which hybrid blocks represent well.
        for linear in (model[0], model[2][0]):
            i, j = np.meshgrid(*map(np.arange, linear.weight.shape), indexing="ij")
            linear.weight.copy_(torch.from_numpy(np.cos(0.1 * i + 0.05 * j, dtype=np.float32)))
        expected = model(x)
    result = rt.compress(model, block=(16, 16), k=32, transform="dct", basis=True)
    assert result is model
    assert isinstance(model[0], rt.RBELinear) and isinstance(model[2][0], rt.RBELinear)
    assert model[2][0].bias is None
    # Only the encoding error of 32 of 256 coefficients per block remains.
    torch.testing.assert_close(model(x), expected, rtol=0.1, atol=0.05)


def test_compress_filter_and_bare_linear():
    model = nn.Sequential(nn.Linear(40, 32), nn.Linear(32, 24))
    rt.compress(model, block=(8, 8), k=16, filter=lambda name, m: m.out_features == 24)
    assert type(model[0]) is nn.Linear and isinstance(model[1], rt.RBELinear)
    assert isinstance(rt.compress(nn.Linear(40, 24), block=(8, 8)), rt.RBELinear)
    with pytest.raises(ValueError, match="kind"):
        rt.compress(model, kind="int8")


def test_compress_keeps_a_shared_layer_shared():
    shared = nn.Linear(24, 24)
    model = nn.Sequential(nn.Linear(40, 24), shared, nn.ReLU(), shared)
    rt.compress(model, block=(8, 8), k=16)
    assert isinstance(model[1], rt.RBELinear) and model[1] is model[3]


@needs_fused
def test_compress_fused_makes_fresh_layers_of_the_same_shape():
    model = nn.Sequential(nn.Linear(40, 32), nn.Linear(32, 24, bias=False))
    rt.compress(model, kind="fused", block=(8, 8))
    assert [m.kind for m in model] == ["fused", "fused"]
    assert model(inputs(3, 40)).shape == (3, 24) and model[1].bias is None


def test_compress_with_a_budget_alone_uses_the_best_measured_layout():
    model = nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 64, bias=False))
    rt.compress(model, ratio=8)
    for module in (model[0], model[2]):
        layer = module.layer
        assert layer.block == (16, 16) and not layer.has_basis and layer.precision == "float16"
        # The ratio counts the layer's float32 bytes, bias included.
        dense = 4 * module.out_features * (module.in_features + (module.bias is not None))
        assert dense / 8 - 3 <= layer.nbytes <= dense / 8


def test_compress_options_may_be_chosen_per_layer():
    model = nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 64))
    rt.compress(model, ratio=lambda name, m: 4 if m.in_features == m.out_features else 16,
                block=lambda name, m: (8, 8) if name == "2" else (16, 16))
    assert model[0].layer.block == (16, 16) and model[2].layer.block == (8, 8)
    assert 15.5 < model[0].layer.compression_ratio and 3.9 < model[2].layer.compression_ratio < 4.5


@pytest.mark.parametrize("kind", KINDS)
def test_threads_calling_one_module_match_serial_calls(kind):
    module = rt.RBELinear(256, 192, kind=kind, block=(32, 32), k=32, seed=0)
    xs = [inputs(b, 256, seed=b) for b in (1, 2, 7, 16, 33, 64) * 3]
    serial = [module(x) for x in xs]
    serial_dx = []
    for x in xs:
        x = x.clone().requires_grad_()
        module(x).sum().backward()
        serial_dx.append(x.grad)
    results, errors = {}, []

    def work(worker):
        try:
            for i in range(worker, len(xs), 4):
                x = xs[i].clone().requires_grad_()
                y = module(x)
                y.sum().backward()
                results[i] = (y.detach(), x.grad)
        except Exception as exc:   # reported below, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == len(xs)
    for i in range(len(xs)):
        assert torch.equal(results[i][0], serial[i])
        assert torch.equal(results[i][1], serial_dx[i])


CONCURRENT_TORCH_AND_RBE = textwrap.dedent("""
    import threading, sys
    {imports}
    import numpy as np
    a = torch.randn(512, 512)
    module = rbe.torch.RBELinear(512, 512, block=(64, 64), k=64, seed=0)
    x = torch.randn(32, 512)
    expected = module(x)
    errors = []

    def torch_work():
        for _ in range(20):
            b = a @ a
            torch.nn.functional.linear(b, a)

    def rbe_work():
        for _ in range(20):
            if not torch.equal(module(x), expected):
                errors.append("rbe result changed")
            rbe.HybridLinear(256, 256, seed=1).forward(np.ones((8, 256), np.float32))

    threads = [threading.Thread(target=f) for f in (torch_work, rbe_work, torch_work, rbe_work)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    print("ok", rbe.kernel_info()["openmp"], torch.get_num_threads())
""")


@pytest.mark.parametrize("imports", ["import torch\nimport rbe, rbe.torch",
                                     "import rbe, rbe.torch\nimport torch"],
                         ids=["torch-first", "rbe-first"])
def test_torch_and_rbe_openmp_in_threads(run_python, imports):
    code = CONCURRENT_TORCH_AND_RBE.format(imports=imports)
    done = run_python(code, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")


# ---- buffers are the layer's state -------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_buffers_have_dtypes_every_distributed_backend_broadcasts(kind):
    module = small(kind)
    names = {name for name, _ in module.named_buffers()}
    assert names == {"fused": {"hi", "alpha", "beta"}, "hybrid": {"index", "transform", "counts"},
                     "code": {"codes", "seed"}}[kind]
    # gloo and NCCL have no uint16, int16, uint32 or uint64
    assert {b.dtype for b in module.buffers()} <= {torch.int64, torch.uint8, torch.float32}


@needs_fused
def test_buffers_follow_the_layer_state_transitions():
    module = small("fused", seed=4)
    layer = module._layer
    layer.transition_every, layer.max_moves, layer.tau = 1, 1.0, 0.0
    hi = dict(module.named_buffers())["hi"]
    before = hi.clone()
    x = inputs(8, 40)
    opt = torch.optim.SGD(module.parameters(), lr=0.0)
    (module(x) ** 2).sum().backward()
    opt.step()
    assert not torch.equal(hi, before)                      # read without state_dict()
    np.testing.assert_array_equal(hi.numpy().view(np.uint64), layer.seeds["hi"])


def test_buffers_follow_hybrid_regrowth():
    module = rt.RBELinear(40, 24, block=(8, 8), k=16, seed=0, regrow_every=1)
    index = dict(module.named_buffers())["index"]
    before = index.clone()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    (module(inputs(8, 40)) ** 2).sum().backward()
    opt.step()
    assert not torch.equal(index, before)
    np.testing.assert_array_equal(index.numpy().view(np.uint16).ravel(), module._layer.index)


@pytest.mark.parametrize("kind", KINDS)
def test_writing_buffers_and_parameters_reaches_the_layer(kind):
    module, other = small(kind, seed=1), small(kind, seed=2)
    x = inputs(4, 40)
    with torch.no_grad():
        for mine, theirs in zip([*module.parameters(), *module.buffers()],
                                [*other.parameters(), *other.buffers()]):
            mine.copy_(theirs)
    torch.testing.assert_close(module(x), other(x), rtol=0, atol=0)


def test_written_index_is_validated():
    module = small("hybrid")
    index = dict(module.named_buffers())["index"]
    with torch.no_grad():
        index.view(torch.int16)[:] = 0           # repeated positions
    with pytest.raises(ValueError, match="index|position"):
        module(inputs(2, 40))
