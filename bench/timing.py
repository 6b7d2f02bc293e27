"""One way to time two things side by side on a shared, noisy machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(first: Callable[[], object], second: Callable[[], object],
                        repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median seconds of ``first`` and of ``second``, run alternately so that load drift hits
    both alike (after ``warmup`` untimed calls of each)."""
    for _ in range(warmup):
        first()
        second()
    a, b = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        first()
        a.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        second()
        b.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)
