"""The digits demo (rbe demo) and the headline benchmark (rbe bench)."""
import numpy as np
import pytest

from rbe import cli

pytest.importorskip("sklearn", reason="the demo uses scikit-learn's bundled digits")
from rbe import demo  # noqa: E402


@pytest.fixture(scope="module")
def results():
    return {r.name: r for r in demo.run(epochs=8, plot=None)}


def test_demo_trains_every_variant(results):
    dense = results["dense float32"]
    assert dense.accuracy > 0.9
    assert results["dense, hybrid-encoded + fine-tuned"].accuracy > 0.9
    assert results["hybrid blocks (HybridLinear), from scratch"].accuracy > 0.5
    assert results["seed blocks (FusedLinear), from scratch"].accuracy > 0.8
    for name, r in results.items():
        assert 0.0 <= r.accuracy <= 1.0 and r.seconds > 0
        if name != "dense float32":
            assert r.nbytes < dense.nbytes / 5, name


def test_demo_layers_match_their_dense_weights():
    """The compressed MLP computes with its hybrid blocks exactly as with their decoding."""
    rng = np.random.default_rng(0)
    dense = demo.dense_mlp(rng)
    compressed = demo.compressed_mlp(dense, k=32)
    X = rng.random((5, 64)).astype(np.float32)
    decoded = demo.MLP([demo.DenseLinear(1, 1, rng) for _ in compressed.layers])
    for d, c in zip(decoded.layers, compressed.layers):
        d.weight, d.bias = c.to_dense(), c.bias
    np.testing.assert_allclose(compressed.forward(X), decoded.forward(X), rtol=2e-5, atol=2e-5)


def test_bench_prints_the_headline_ratios(capsys):
    assert cli.main(["bench", "--seeds", "64", "--size", "512"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ratios = [float(line.split()[-1].rstrip("x")) for line in lines[1:]]
    assert len(ratios) == 3 and all(r > 0 for r in ratios)
