"""The serving benchmark's measuring helpers (the benchmark itself runs for minutes)."""
import numpy as np

from rbe import serving


def test_latencies_time_each_call_after_its_untimed_neighbour():
    calls, before = [], []
    times = serving._latencies(lambda: calls.append(1), 5, lambda: before.append(1))
    assert times.shape == (5,) and (times >= 0).all() and len(calls) == len(before) == 5


def test_concurrent_calls_report_every_latency_and_a_throughput():
    times, throughput = serving._concurrent(lambda: sum(range(100)), 7, threads=3)
    assert times.shape == (21,) and throughput > 0
    summary = serving._summary(times)
    assert 0 <= summary["p50"] <= summary["p99"] <= times.max()


def test_hybrid_contender_has_two_transforms_and_matches_its_dense_form():
    layer = serving._hybrid_layer(128)
    assert layer._nslots == 2 and layer.bias is not None
    x = np.random.default_rng(0).standard_normal((3, 128)).astype(np.float32)
    dense = layer.to_dense().astype(np.float64)
    np.testing.assert_allclose(layer.forward(x), x @ dense.T + layer.bias, rtol=1e-4, atol=1e-4)


def test_turns_alternate_the_contenders_and_report_median_figures(monkeypatch):
    order = []
    figures = iter([1.0, 10.0, 3.0, 30.0, 2.0, 20.0])

    def worker(spec):
        order.append(spec["kind"])
        value = next(figures)
        return {"model": {"p50": value, "p99": 2 * value}}

    monkeypatch.setattr(serving, "_in_process", worker)
    result = serving._in_turns({"a": {"kind": "a", "task": "t"}, "b": {"kind": "b", "task": "t"}},
                               3, lambda line: None)
    assert order == ["a", "b"] * 3
    assert result == {"a": {"model": {"p50": 2.0, "p99": 4.0}},
                      "b": {"model": {"p50": 20.0, "p99": 40.0}}}
