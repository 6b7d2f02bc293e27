"""One way to time two things side by side on a shared, noisy machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(first: Callable[[], object], second: Callable[[], object],
                        repeats: int, warmup: int = 1, block: int | None = None,
                        pause: float = 0.02, seconds: float = 2.0) -> tuple[float, float]:
    """Median seconds of ``first`` and of ``second`` over at least ``repeats`` calls each (more
    for fast calls: as many as fit in ``seconds`` per side, at most 2000), run in alternating
    blocks so that load drift hits both alike.

    A few repeats of a millisecond call made one block per side, and one burst of load from
    this VM's neighbours in that block moved a ratio by 10-40 % (MobileNetV2 at batch 1 read
    1.17 and 1.41 minutes apart on 2026-11-27); the time budget gives dozens of blocks
    instead. Blocks are ~50 ms, sized from the median of five calls: sized from one call
    (which can take 10 ms after a session switch) they were as short as five 2 ms calls, every
    block's first calls paid for the switch from the other session's thread pool, and
    MobileNetV2 read 1.09-1.36 against 1.04-1.05 in 25-call blocks.

    Each block starts with ``warmup`` untimed calls: two ONNX Runtime sessions each own a
    thread pool whose threads spin for a while after a run, so a call made right after the
    *other* session's run competes with those spinning threads (on 2 cores this added up to
    40 % to a 0.5 ms inference, and which side it hit depended on the order). ``block``
    defaults to enough calls for ~50 ms per block, at least one; calls that long (one per
    block) skip the per-block warm-up, which would triple the run, and are preceded by an
    untimed ``pause`` instead, long enough for the other session's pool threads to stop
    spinning. Without it the side whose call ends in Python work (Eigen-CAM's SVDs) measured
    +8 %: its ONNX Runtime run always started right after the other session's, never the
    other way round."""
    for _ in range(warmup):
        first()
        second()
    call = max(_median_call(first, 5), 1e-6)
    repeats = max(repeats, min(2000, int(seconds / call)))
    if block is None:
        block = max(1, min(repeats, int(0.05 / call)))
    a: list[float] = []
    b: list[float] = []
    rewarm = warmup if block > 1 else 0
    while len(a) < repeats:
        count = min(block, repeats - len(a))
        for fn, out in ((first, a), (second, b)):
            for _ in range(rewarm):
                fn()
            if block == 1:
                time.sleep(pause)
            for _ in range(count):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def _median_call(fn: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
