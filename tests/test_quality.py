"""The accuracy-per-byte benchmark: equal bytes for every variant, and a short run end to end."""
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from rbe import quality


def dense_bytes(n_in, hidden):
    return 4 * (n_in * hidden + hidden + hidden * hidden + hidden)


@pytest.mark.parametrize("variant", ["low-rank", "low-rank fp16", "hybrid", "seed"])
@pytest.mark.parametrize("ratio", [8, 32])
def test_variants_fit_the_budget(variant, ratio):
    sizes = [(64, 256), (256, 256)]
    layers = quality.hidden_layers(variant, sizes, ratio, seed=0, steps=100)
    used = sum(quality.stored_bytes(layer) for layer in layers)
    assert used <= dense_bytes(64, 256) / ratio
    if variant != "seed":        # seed blocks have fixed sizes; one rank step is 3328 bytes
        assert used >= dense_bytes(64, 256) / ratio - 4 * (64 + 256 + 256 + 256)


def test_narrower_width_is_the_widest_that_fits():
    w = quality.narrower_width(64, 256, 8)
    assert dense_bytes(64, w) <= dense_bytes(64, 256) / 8 < dense_bytes(64, w + 1)


def test_short_run_prints_a_table(monkeypatch):
    monkeypatch.setitem(quality.TASKS, "digits", quality.Task("digits", 64, 1))
    lines = []
    results = quality.run(tasks=("digits",), ratios=(8,), seeds=(0, 1), lrs=(1e-3, 3e-3),
                          variants=("dense", "narrower", "int8", "hybrid", "compressed"),
                          log=lines.append)
    assert [r.variant for r in results] == ["dense", "narrower", "int8", "hybrid", "compressed"]
    for r in results:
        assert len(r.accuracies) == 2 and all(0 <= a <= 1 for a in r.accuracies)
        assert r.lr in (1e-3, 3e-3)
    budget = dense_bytes(64, 64) / 8
    assert all(r.nbytes <= budget for r in results if r.variant in ("narrower", "hybrid",
                                                                      "compressed"))
    assert "| hybrid | " in lines[-1] and "digits 1/8" in lines[-1]
