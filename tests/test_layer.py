"""The layer contract (rbe.layer) and the registry of stored kinds (rbe.io)."""
import numpy as np
import pytest

import rbe
from rbe import io
from rbe.layer import Layer, Stored, Trainable


@pytest.fixture(scope="module")
def objects():
    return {"fused_linear": rbe.FusedLinear(32, 24, block=(8, 8), seed=0),
            "hybrid_linear": rbe.HybridLinear(32, 24, block=(8, 8), k=4, seed=0),
            "code_linear": rbe.CodeLinear(32, 24, bits=2, state_bits=8),
            "hybrid_matrix": rbe.encode(np.ones((24, 32)), block=(8, 8), k=2)}


def test_layers_keep_the_whole_contract_and_matrices_the_stored_part(objects):
    for kind in ("fused_linear", "hybrid_linear", "code_linear"):
        assert isinstance(objects[kind], Layer) and isinstance(objects[kind], Trainable)
    matrix = objects["hybrid_matrix"]
    assert isinstance(matrix, Stored)
    assert not isinstance(matrix, Trainable) and not isinstance(matrix, Layer)
    assert not isinstance(np.zeros(3), Stored)


def test_every_layer_has_its_block_shape(objects):
    for kind, obj in objects.items():
        assert obj.block == ((16, 16) if kind == "code_linear" else (8, 8))    # code: tiles


def test_the_registry_maps_kinds_to_classes_and_back(objects):
    assert set(io.layer_kinds()) == {"fused_linear", "hybrid_linear", "code_linear"}
    assert set(io.entry_kinds()) == set(io.layer_kinds()) | {"hybrid_matrix"}
    for kind, obj in objects.items():
        assert io.kind_of(obj) == kind and type(obj) is io.entry_kinds()[kind]
    assert io.kind_of(np.zeros(2)) == "tensor"
    with pytest.raises(ValueError, match="dict is not an rbe layer"):
        io.kind_of({})
    io.entry_kinds().clear()                    # a copy: the registry is not changed
    assert io.kind_of(objects["fused_linear"]) == "fused_linear"


def test_optimisers_train_any_object_keeping_the_trainable_contract():
    class Quadratic:
        """Minimises |p - 3|^2 with the gradient set by hand; counts its steps."""

        def __init__(self):
            self.p = np.zeros(4)
            self.grads = {"p": np.zeros(4)}
            self.steps = 0

        def parameters(self):
            return {"p": self.p}

        def after_step(self, loss=None):
            self.steps += 1

    layer = Quadratic()
    opt = rbe.optim.SGD(layer, lr=0.25)
    for _ in range(20):
        layer.grads["p"][...] = 2 * (layer.p - 3)
        opt.step()
    np.testing.assert_allclose(layer.p, 3, atol=1e-5)      # error halves each step
    assert layer.steps == 20


def test_optimisers_refuse_what_is_not_trainable():
    class NoSteps:
        grads: dict = {}

        def parameters(self):
            return {}

    with pytest.raises(ValueError, match="NoSteps is not a trainable rbe layer"):
        rbe.optim.Adam([NoSteps()])
