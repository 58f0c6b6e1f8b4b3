"""Batch sizes that tune themselves: the choice rule, the memory budget and the search, on measured tables."""

from __future__ import annotations

import asyncio

import pytest

from service.autotune import (
    MAX_BATCH_INPUT_BYTES,
    BatchCurve,
    BatchTiming,
    choose,
    fastest,
    largest_batch,
    projected_memory_bytes,
    tune,
)

MIB = 1024 * 1024


def timings(per_image_ms: dict[int, float], mib_per_image: float | None = None) -> list[BatchTiming]:
    return [
        BatchTiming(
            size, size * ms / 1000, memory_bytes=None if mib_per_image is None else round(size * mib_per_image * MIB)
        )
        for size, ms in per_image_ms.items()
    ]


@pytest.mark.parametrize(
    "per_image_ms,expected",
    [
        ({1: 10.0, 2: 9.9, 4: 9.8, 8: 9.9}, 8),  # a CPU: flat, so the largest within 3% of the best
        ({1: 10.0, 2: 5.0, 4: 2.5, 8: 2.4}, 8),  # a GPU-like curve: steep, then flat
        ({1: 10.0, 2: 12.0, 4: 8.0, 8: 9.0}, 4),  # INT8 on a CPU: not monotonic, the best wins
        ({1: 1.0}, 1),
    ],
)
def test_choose_keeps_the_largest_batch_within_three_percent_of_the_best(per_image_ms, expected):
    assert choose(timings(per_image_ms)) == expected


def test_the_memory_budget_bounds_the_choice_and_batch_one_always_fits():
    measured = timings({1: 10.0, 2: 9.0, 4: 8.0, 8: 7.0}, mib_per_image=12.0)  # 8 images hold 96 MiB
    assert choose(measured, memory_limit_bytes=50 * MIB) == 4
    assert choose(measured, memory_limit_bytes=1 * MIB) == 1
    assert projected_memory_bytes(measured, 32) == 32 * 12 * MIB
    # What a doubling adds per image counts, not a first batch's fixed cost spread over its one image.
    with_fixed_cost = [
        BatchTiming(1, 0.1, memory_bytes=14 * MIB),
        BatchTiming(2, 0.2, memory_bytes=16 * MIB),
        BatchTiming(4, 0.4, memory_bytes=30 * MIB),
    ]
    assert projected_memory_bytes(with_fixed_cost, 8) == (30 + 4 * 7) * MIB
    assert projected_memory_bytes(with_fixed_cost[:1], 4) == 4 * 14 * MIB


class Measured:
    """Served seconds and memory per batch from a table; records which sizes were measured."""

    def __init__(self, per_image_ms: dict[int, float], mib_per_image: float = 0.0) -> None:
        self.per_image_ms = per_image_ms
        self.mib_per_image = mib_per_image
        self.sizes: list[int] = []

    async def __call__(self, size: int) -> BatchTiming:
        self.sizes.append(size)
        return BatchTiming(
            size, size * self.per_image_ms[size] / 1000, memory_bytes=round(size * self.mib_per_image * MIB)
        )


def test_the_search_moves_the_choice_after_every_size_and_stops_at_the_limit():
    measured = Measured({1: 10.0, 2: 9.0, 4: 8.0, 8: 7.9, 16: 8.0})
    steps: list[BatchCurve] = []
    curve = asyncio.run(tune(measured, limit=16, memory_limit_bytes=None, on_step=steps.append))
    # The sweep, then one pass over the contenders (within 90% of the best), largest first: the choice held.
    assert measured.sizes == [1, 2, 4, 8, 16, 16, 8, 4]
    assert [step.chosen for step in steps] == [1, 2, 4, 8, 16, 16, 16, 16] and not any(s.finished for s in steps)
    assert curve.finished and curve.chosen == 16 and curve.seconds_per_image(8) == pytest.approx(0.0079)


class Noisy(Measured):
    """A table whose sizes read slower the first time they are measured (a neighbour's burst), by `slowdown`."""

    def __init__(self, per_image_ms: dict[int, float], slowdown: dict[int, float]) -> None:
        super().__init__(per_image_ms, mib_per_image=1.0)
        self.slowdown = slowdown

    async def __call__(self, size: int) -> BatchTiming:
        timing = await super().__call__(size)
        factor = self.slowdown.pop(size, 1.0)
        return BatchTiming(size, timing.seconds * factor, memory_bytes=timing.memory_bytes * self.sizes.count(size))


def test_a_size_slowed_once_by_noise_wins_back_its_place_in_the_second_look():
    # A flat curve; 16 and 32 read 8% slow in the sweep, which alone would choose 8.
    measured = Noisy(dict.fromkeys((1, 2, 4, 8, 16, 32), 10.0), slowdown={16: 1.08, 32: 1.08})
    curve = asyncio.run(tune(measured, limit=32, memory_limit_bytes=None))
    # The first look moved the choice (8 to 32), so a second one confirmed it.
    assert measured.sizes == [1, 2, 4, 8, 16, 32] + [32, 16, 8, 4, 2, 1] * 2
    assert curve.chosen == 32 and curve.seconds_per_image(32) == pytest.approx(0.010)
    # Memory stays the first reading of each size: a later one holds the arena of the largest batch run.
    assert [t.memory_bytes for t in curve.timings] == [round(size * MIB) for size in (1, 2, 4, 8, 16, 32)]


def test_a_second_pass_runs_only_when_the_first_changed_the_choice():
    # 32 is 5% faster but reads 5% slower in the sweep: the first look moves the choice from 16 to 32, the
    # second finds it again and the search ends.
    measured = Noisy(dict.fromkeys((1, 2, 4, 8, 16), 10.0) | {32: 9.5}, slowdown={32: 1.1})
    curve = asyncio.run(tune(measured, limit=32, memory_limit_bytes=None))
    assert curve.chosen == 32
    assert measured.sizes == [1, 2, 4, 8, 16, 32] + [32, 16, 8, 4, 2, 1] * 2
    # The first look changing nothing ends it.
    measured = Measured({1: 12.0, 2: 9.0, 4: 9.0, 8: 9.0})
    assert asyncio.run(tune(measured, limit=8, memory_limit_bytes=None)).chosen == 8
    assert measured.sizes == [1, 2, 4, 8, 8, 4, 2]  # the sweep, then one look; batch 1, 25% slower, is no contender
    # A truly faster smaller size still wins when larger ones are past the 3% band.
    measured = Measured({1: 10.0, 2: 8.0, 4: 8.5, 8: 8.6})
    assert asyncio.run(tune(measured, limit=8, memory_limit_bytes=None)).chosen == 2


def test_the_search_stops_before_a_size_that_would_pass_the_memory_budget():
    measured = Measured(dict.fromkeys((1, 2, 4, 8, 16, 32), 10.0), mib_per_image=12.0)
    curve = asyncio.run(tune(measured, limit=32, memory_limit_bytes=100 * MIB))
    assert measured.sizes[:4] == [1, 2, 4, 8] and 16 not in measured.sizes  # 16 would hold 192 MiB
    assert curve.chosen == 8


def test_the_search_stops_once_larger_batches_clearly_serve_worse():
    measured = Measured({1: 10.0, 2: 8.0, 4: 9.5, 8: 12.0, 16: 14.0, 32: 5.0})
    curve = asyncio.run(tune(measured, limit=64, memory_limit_bytes=None))
    assert measured.sizes == [1, 2, 4, 8]  # 4 and 8 both below 90% of the best (2): 16 and 32 are never tried
    assert curve.chosen == 2


def test_the_input_cap_bounds_the_largest_batch():
    assert largest_batch(4 * 3 * 224 * 224) == 64  # ResNet-50's input: the count cap binds first
    assert largest_batch(4 * 3 * 512 * 512) == MAX_BATCH_INPUT_BYTES // (4 * 3 * 512 * 512) == 21


def test_fastest_takes_the_best_of_a_few_runs_within_its_budget():
    clock = iter(range(100))
    durations: list[int] = []

    def run(_: int) -> None:
        durations.append(1)

    best = fastest(run, 1, runs=20, budget_s=3.5, clock=lambda: float(next(clock)))
    assert best == 1.0 and 2 <= len(durations) < 20
