"""Batch sizes that tune themselves: time the model at batch sizes 1, 2, 4, ... at start-up and keep the largest
one that still buys throughput.

On a CPU a bigger batch buys little (ResNet-50 here: 26.0 img/s at batch 1, 27.0 at 32) but costs latency, memory
and warm-up; on a GPU the curve is steep. So the choice is measured, per model and machine, instead of fixed:
the search doubles the batch while the doubled batch raises images per second by at least `MIN_GAIN`, and stops at
the first that does not, or at the memory cap. What Triton leaves to an offline tool (Model Analyzer) happens here
within the warm-up, whose runs are also what warms each measured shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MIN_GAIN = 0.05
"""A doubled batch must raise throughput by at least this share to be chosen."""
MAX_AUTO_BATCH = 64
MAX_BATCH_INPUT_BYTES = 64 * 1024 * 1024
"""The memory cap: the largest batch whose input tensor stays within this many bytes."""
TIMED_RUNS = 2
"""Runs timed per batch size after one untimed run (which is the warm-up of that shape); the fastest counts."""


@dataclass(frozen=True)
class BatchTiming:
    batch_size: int
    seconds: float
    """Fastest of the timed runs of one batch."""

    @property
    def images_per_second(self) -> float:
        return self.batch_size / self.seconds


@dataclass(frozen=True)
class BatchCurve:
    timings: list[BatchTiming]
    chosen: int

    def seconds_per_image(self, batch_size: int) -> float | None:
        for timing in self.timings:
            if timing.batch_size == batch_size:
                return timing.seconds / batch_size
        return None


def largest_batch(image_bytes: int, cap: int = MAX_AUTO_BATCH) -> int:
    """The largest batch size the search may try: `cap`, or fewer when their input would pass the memory cap."""
    return max(1, min(cap, MAX_BATCH_INPUT_BYTES // max(1, image_bytes)))


def choose(timings: Sequence[BatchTiming], min_gain: float = MIN_GAIN) -> int:
    """The largest batch size of a doubling series whose throughput beat the previous one's by `min_gain`."""
    chosen = timings[0]
    for timing in timings[1:]:
        if timing.images_per_second < chosen.images_per_second * (1 + min_gain):
            break
        chosen = timing
    return chosen.batch_size


def fastest(
    run: Callable[[int], object],
    batch_size: int,
    *,
    runs: int,
    budget_s: float,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """The fastest of up to `runs` timed runs of one batch (at least two), within about `budget_s`: robust to the
    stalls of a busy machine, and cheap for a cheap model, which is where it matters."""
    best = float("inf")
    started = clock()
    for done in range(runs):
        before = clock()
        run(batch_size)
        best = min(best, clock() - before)
        if done >= 1 and clock() - started > budget_s:
            break
    return best


def measure(
    run: Callable[[int], object],
    limit: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
    min_gain: float = MIN_GAIN,
) -> BatchCurve:
    """Time `run(batch_size)` at 1, 2, 4, ... up to `limit`, stopping at the first size that does not pay."""
    timings: list[BatchTiming] = []
    size = 1
    while size <= limit:
        run(size)  # the first run at a shape plans its memory and picks its kernels: not representative
        best = float("inf")
        for _ in range(TIMED_RUNS):
            started = clock()
            run(size)
            best = min(best, clock() - started)
        timings.append(BatchTiming(size, best))
        if choose(timings, min_gain) != size:
            break
        size *= 2
    return BatchCurve(timings, choose(timings, min_gain))
