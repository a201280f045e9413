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
