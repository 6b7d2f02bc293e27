"""One way to time two things side by side on a shared, noisy machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(first: Callable[[], object], second: Callable[[], object],
                        repeats: int, warmup: int = 1, block: int | None = None,
                        pause: float = 0.02, seconds: float = 2.0,
                        settle: float = 0.02,
                        clock: Callable[[], float] = time.perf_counter) -> tuple[float, float]:
    """Median seconds of ``first`` and of ``second`` over at least ``repeats`` calls each (more
    for fast calls: as many as fit in ``seconds`` per side, at most 2000), run in alternating
    blocks of ~0.1 s so that load drift hits both alike.

    Each block starts with untimed calls for ``settle`` seconds (at least ``warmup`` calls):
    two ONNX Runtime sessions each own a thread pool whose threads spin for a while after a
    run, so the calls made right after a switch from the *other* session share the 2 cores
    with those spinning threads. That penalty lasts a span of time, not a number of calls: with
    blocks sized from one call measured right after a switch (up to 10 ms for a 2 ms model)
    and one warm-up call, MobileNetV2's plain run read 2.8 ms instead of 2.0 and ratios moved
    by 5-35 % (2026-11-27). Calls longer than a block (one per block) skip the warm-up, which
    would double the run, and are preceded by an untimed ``pause`` instead, long enough for
    the other session's pool threads to stop spinning (without it the side whose call ends
    in Python work, Eigen-CAM's SVDs, measured +8 %). The time budget gives dozens of blocks,
    so a burst of load from this VM's neighbours hits a few of them.

    ``clock`` times each call (wall time by default; ``time.process_time`` counts this
    process's CPU seconds, which other processes' load does not inflate, for calls that run
    on one thread)."""
    for _ in range(warmup):
        first()
        second()
    _run_for(first, settle, warmup)
    call = max(_median_call(first, 5), 1e-6)
    repeats = max(repeats, min(2000, int(seconds / call)))
    if block is None:
        block = max(1, min(repeats, int(0.1 / call)))
    a: list[float] = []
    b: list[float] = []
    while len(a) < repeats:
        count = min(block, repeats - len(a))
        for fn, out in ((first, a), (second, b)):
            if block > 1:
                _run_for(fn, settle, warmup)
            else:
                time.sleep(pause)
            for _ in range(count):
                t0 = clock()
                fn()
                out.append(clock() - t0)
    return statistics.median(a), statistics.median(b)


def _run_for(fn: Callable[[], object], seconds: float, calls: int) -> None:
    """Call ``fn`` at least ``calls`` times and until ``seconds`` have passed."""
    end = time.perf_counter() + seconds
    done = 0
    while done < calls or time.perf_counter() < end:
        fn()
        done += 1


def _median_call(fn: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
