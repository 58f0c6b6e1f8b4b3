"""Batch sizes that tune themselves: measured per model and machine on the served path, within a memory budget.

A model with `max_batch_size` "auto" becomes ready at batch 1 as soon as one batch of one has run; then, in the
background, its batcher's own thread times batch sizes 1, 2, 4, ... as it serves them (the hand-off to that
thread and the stacking of the batch included, not the session's time alone) and reads how much resident memory
each new size added (ONNX Runtime's arena keeps the memory of the largest batch run). After each size the
maximum moves to the best choice so far, so capacity grows within seconds of start-up; after the sweep, the
leading sizes are timed again, as a shared machine's noise can slow one size's runs. The choice: among the
sizes whose memory fits the model's budget, the largest whose images per second are within `MIN_SHARE` of the
best measured. A larger batch costs nothing when requests are few (a lone request runs alone, and batches only
form from what waits), and on a CPU the raw curve is flat: each doubling buying under 5% said "batch 1", while
serving at a larger batch amortises every per-batch cost and let request handling overlap inference (measured in
docs/BENCHMARKS.md). What Triton leaves to an offline tool (Model Analyzer) happens here while serving.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

MIN_SHARE = 0.97
"""A batch size is chosen while its served throughput is within 3% of the best measured (the noise of a timing)."""
MAX_AUTO_BATCH = 64
MAX_BATCH_INPUT_BYTES = 64 * 1024 * 1024
"""The largest batch whose input tensor stays within this many bytes is the largest the search tries."""
TIMED_RUNS = 2
"""Runs timed per batch size after one untimed run (which plans that shape's memory); the fastest counts."""
DECLINE_SHARE = 0.90
"""The search stops once two sizes in a row serve below this share of the best: larger ones will not pay."""
CONFIRM_PASSES = 2
"""Passes over the contenders (the sizes within `DECLINE_SHARE` of the best) after the sweep, largest first; a
second runs only when the first changed the choice. A size keeps its fastest timing of all passes: on a shared
machine a neighbour's burst slows every run of one size for a while, and a single sweep of a flat curve chose
batch 2, 8 or 32 for ResNet-50 in three bench runs on 2026-12-03, 13:26-14:51 UTC."""


@dataclass(frozen=True)
class BatchTiming:
    batch_size: int
    seconds: float
    """Served: from handing the batch to the model's thread to having its logits (fastest of the timed runs)."""
    inference_s: float | None = None
    """The session's own share of `seconds`."""
    memory_bytes: int | None = None
    """Resident memory held above what the model held before its first batch, after its first run at this size
    (None where the platform does not say)."""

    @property
    def images_per_second(self) -> float:
        return self.batch_size / self.seconds


@dataclass(frozen=True)
class BatchCurve:
    timings: list[BatchTiming]
    chosen: int
    memory_limit_bytes: int | None = None
    finished: bool = True
    """False while the search goes on."""

    def seconds_per_image(self, batch_size: int) -> float | None:
        for timing in self.timings:
            if timing.batch_size == batch_size:
                return timing.seconds / batch_size
        return None


def largest_batch(image_bytes: int, cap: int = MAX_AUTO_BATCH) -> int:
    """The largest batch size the search may try: `cap`, or fewer when their input would pass the input cap."""
    return max(1, min(cap, MAX_BATCH_INPUT_BYTES // max(1, image_bytes)))


def _fits(timing: BatchTiming, memory_limit_bytes: int | None) -> bool:
    return timing.batch_size == 1 or memory_limit_bytes is None or (timing.memory_bytes or 0) <= memory_limit_bytes


def choose(timings: Sequence[BatchTiming], memory_limit_bytes: int | None = None, min_share: float = MIN_SHARE) -> int:
    """The largest batch size within the memory budget whose served throughput is within `min_share` of the best
    within it; batch 1 always fits (a model must serve)."""
    fitting = [timing for timing in timings if _fits(timing, memory_limit_bytes)]
    best = max(timing.images_per_second for timing in fitting)
    return max(timing.batch_size for timing in fitting if timing.images_per_second >= best * min_share)


def projected_memory_bytes(timings: Sequence[BatchTiming], batch_size: int) -> int | None:
    """What a batch of `batch_size` would hold: the largest measured, plus the most memory any measured doubling
    added per image, for each image more (one measurement alone: its memory per image). None: unknown."""
    known = [t for t in timings if t.memory_bytes is not None]
    if not known:
        return None
    last = max(known, key=lambda t: t.batch_size)
    assert last.memory_bytes is not None
    slopes = [
        (later.memory_bytes - earlier.memory_bytes) / (later.batch_size - earlier.batch_size)
        for earlier, later in pairwise(known)
        if earlier.memory_bytes is not None and later.memory_bytes is not None and later.batch_size > earlier.batch_size
    ]
    per_image = max(slopes) if slopes else last.memory_bytes / last.batch_size
    return round(last.memory_bytes + max(0.0, per_image) * (batch_size - last.batch_size))


async def tune(
    measure: Callable[[int], Awaitable[BatchTiming]],
    *,
    limit: int,
    memory_limit_bytes: int | None,
    on_step: Callable[[BatchCurve], None] | None = None,
) -> BatchCurve:
    """Measure batch sizes 1, 2, 4, ... up to `limit`, telling `on_step` the choice after each one. Stops before a
    size projected to pass the memory budget, and once two sizes in a row serve clearly worse than the best; then
    measures the contenders again (`CONFIRM_PASSES`)."""
    timings: list[BatchTiming] = []
    size = 1
    below = 0
    while size <= limit:
        projected = projected_memory_bytes(timings, size)
        if timings and memory_limit_bytes is not None and projected is not None and projected > memory_limit_bytes:
            break
        timing = await measure(size)
        timings.append(timing)
        curve = BatchCurve(list(timings), choose(timings, memory_limit_bytes), memory_limit_bytes, finished=False)
        if on_step is not None:
            on_step(curve)
        best = max(t.images_per_second for t in timings if _fits(t, memory_limit_bytes))
        below = below + 1 if timing.images_per_second < best * DECLINE_SHARE else 0
        if below >= 2 or not _fits(timing, memory_limit_bytes):
            break
        size *= 2
    for _ in range(CONFIRM_PASSES):
        chosen = choose(timings, memory_limit_bytes)
        best = max(t.images_per_second for t in timings if _fits(t, memory_limit_bytes))
        contenders = [
            index
            for index, t in enumerate(timings)
            if _fits(t, memory_limit_bytes) and t.images_per_second >= best * DECLINE_SHARE
        ]
        if len(contenders) < 2:
            break
        for index in sorted(contenders, key=lambda i: timings[i].batch_size, reverse=True):
            timings[index] = _faster(timings[index], await measure(timings[index].batch_size))
            if on_step is not None:
                on_step(BatchCurve(list(timings), choose(timings, memory_limit_bytes), memory_limit_bytes, False))
        if choose(timings, memory_limit_bytes) == chosen:
            break
    return BatchCurve(list(timings), choose(timings, memory_limit_bytes), memory_limit_bytes, finished=True)


def _faster(first: BatchTiming, again: BatchTiming) -> BatchTiming:
    """The faster timing of one size; memory stays the first reading's (later ones include larger batches')."""
    if again.seconds >= first.seconds:
        return first
    return BatchTiming(first.batch_size, again.seconds, again.inference_s, first.memory_bytes)


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
