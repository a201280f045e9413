"""Interleaved timing shared by the benchmark scripts.

Each round runs every case once, in order, so slow drifts of the machine (other processes,
frequency changes) affect all cases alike; the figure reported is the median over rounds.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

#: Idle long enough for numpy's OpenBLAS to stop spinning its idle threads (about 0.1 s).
BLAS_SETTLE = 0.2
#: Steady-state samples: untimed calls, then timed back-to-back calls whose mean is the sample.
STEADY_WARM, STEADY_TIMED = 2, 3


def _sample(fn: Callable[[], object], steady: bool) -> float:
    if not steady:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    time.sleep(BLAS_SETTLE)
    for _ in range(STEADY_WARM):
        fn()
    start = time.perf_counter()
    for _ in range(STEADY_TIMED):
        fn()
    return (time.perf_counter() - start) / STEADY_TIMED


def interleaved_medians(cases: dict[str, Callable[[], object]], rounds: int = 7,
                        warmup: int = 1, steady: bool = False) -> dict[str, float]:
    """Median wall time in seconds of each case over interleaved rounds.

    steady: each sample is taken as a loop of back-to-back calls sees it, which is how a
    service calling the case sees it: after BLAS_SETTLE seconds idle the case runs
    STEADY_WARM times untimed, then STEADY_TIMED times, and the sample is the mean of those.
    Otherwise a case pays for what the previous one left behind: OpenBLAS keeps its idle
    threads spinning for about 0.1 s after a call, competing with the next case's threads
    for the cores, and the first calls after an idle spell run slower on a virtual machine
    (waking cores and thread pools).
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(_sample(fn, steady))
    return {name: float(np.median(t)) for name, t in times.items()}
