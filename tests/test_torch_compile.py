"""rbe.torch under torch.compile, torch.export and autocast: the custom operators trace as
single nodes and give the eager results (skipped when PyTorch is not installed)."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (extra rbe[torch])")

from torch import nn  # noqa: E402

import rbe  # noqa: E402
import rbe.torch as rt  # noqa: E402

KINDS = ["hybrid", "fused", "code"]
# torch 2.13 deprecates TorchScript, and its tracing paths say so.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


def tiny(kind, seed=0):
    """Two small layers of one kind; state moves every second step (transitions, regrowth)."""
    if kind == "fused":
        first = rt.RBELinear.from_layer(rbe.FusedLinear(16, 12, block=(4, 4), seed=seed,
                                                        transition_every=2, tau=0.0))
    else:
        first = rt.RBELinear(16, 12, block=(4, 4), k=4, seed=seed, regrow_every=2)
    return nn.Sequential(first, nn.Tanh(), rt.RBELinear(12, 8, kind=kind, block=(4, 4),
                                                        seed=seed + 1))


def inputs(*shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape, np.float32))


def train(model, steps=5):
    x, y = inputs(6, 16), inputs(6, 8, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize("kind", KINDS)
def test_dynamo_explain_finds_no_graph_break(kind):
    explanation = torch._dynamo.explain(tiny(kind))(inputs(5, 16))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.parametrize("kind", KINDS)
def test_compiled_training_equals_eager(kind):
    """Forward, backward (the custom operators' autograd) and five Adam steps, through
    AOTAutograd; the step hook moves states and positions in both models alike."""
    model = tiny(kind)
    twin = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = inputs(5, 16)
    assert torch.equal(compiled(x), twin(x))
    before = copy.deepcopy(model.state_dict())
    train(compiled)
    train(twin)
    after = model.state_dict()
    for name, value in twin.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(after[name], value), name
    moved = "0.hi" if kind == "fused" else "0.index"
    assert not torch.equal(after[moved], before[moved])      # the hook did act
    assert torch.equal(compiled(x), twin(x))


def test_inductor_forward_and_backward_equal_eager():
    model = nn.Sequential(rt.RBELinear(16, 12, block=(4, 4), k=4, seed=0),
                          rt.RBELinear(12, 8, kind="fused", block=(4, 4), seed=1),
                          rt.RBELinear(8, 8, kind="code", bits=2, state_bits=8, seed=2))
    compiled = torch.compile(model, fullgraph=True)
    x = inputs(3, 16).requires_grad_()
    y = compiled(x)
    y.sum().backward()
    dx = x.grad.clone()
    x.grad = None
    model(x).sum().backward()
    assert torch.equal(y, model(x)) and torch.equal(dx, x.grad)


# r and theta are interleaved views of one seed array: saving finds no tensor covering it all.
@pytest.mark.filterwarnings("ignore:No complete tensor found in the group")
def test_export_runs_and_survives_save_and_load(tmp_path):
    model = nn.Sequential(tiny("hybrid"), rt.RBELinear(8, 8, kind="fused", block=(4, 4), seed=3),
                          rt.RBELinear(8, 8, kind="code", bits=2, state_bits=8, seed=4))
    x = inputs(5, 16)
    program = torch.export.export(model, (x,))
    assert torch.equal(program.module()(x), model(x))
    torch.export.save(program, tmp_path / "model.pt2")
    rt._REBUILT.clear()
    loaded = torch.export.load(tmp_path / "model.pt2").module()
    # The loaded program holds copies of the tensors: the operators rebuild the layers from
    # them, as in a process that never built the model.
    assert torch.equal(loaded(x), model(x)) and len(rt._REBUILT) == 4


# The input checks become constants of the trace (in_features is one).
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_jit_trace_records_the_operators():
    model = nn.Sequential(tiny("hybrid"), rt.RBELinear(8, 8, kind="fused", block=(4, 4), seed=3))
    x = inputs(5, 16)
    traced = torch.jit.trace(model, (x,))
    assert torch.equal(traced(x), model(x)) and torch.equal(traced(x[:2]), model(x[:2]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_computes_in_float32(kind, dtype):
    model = tiny(kind)
    x = inputs(5, 16)
    expected = model(x).detach()
    with torch.autocast("cpu", dtype=dtype):
        low = model(x.to(dtype))           # an input from a low-precision op
        from_float = model(x)
    assert low.dtype == dtype and from_float.dtype == dtype
    # The input and the output are rounded to 8 (bfloat16) or 11 (float16) significant
    # bits, the computation is float32: relative error about 2 * 2^-8 of |y| at most.
    tol = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    scale = float(expected.abs().max())
    torch.testing.assert_close(low.float(), expected, rtol=0, atol=4 * tol * scale)
    torch.testing.assert_close(from_float.float(), expected, rtol=0, atol=2 * tol * scale)
    with torch.autocast("cpu", dtype=dtype):
        x16 = x.to(dtype).requires_grad_()
        model(x16).float().sum().backward()
    assert x16.grad.dtype == dtype and torch.isfinite(x16.grad).all()


def test_low_precision_input_outside_autocast_is_refused():
    with pytest.raises(ValueError, match="autocast"):
        tiny("hybrid")(inputs(5, 16).bfloat16())
