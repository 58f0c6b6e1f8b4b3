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
    assert measured.sizes == [1, 2, 4, 8, 16]
    assert [step.chosen for step in steps] == [1, 2, 4, 8, 16] and not any(step.finished for step in steps)
    assert curve.finished and curve.chosen == 16 and curve.seconds_per_image(8) == pytest.approx(0.0079)


def test_the_search_stops_before_a_size_that_would_pass_the_memory_budget():
    measured = Measured(dict.fromkeys((1, 2, 4, 8, 16, 32), 10.0), mib_per_image=12.0)
    curve = asyncio.run(tune(measured, limit=32, memory_limit_bytes=100 * MIB))
    assert measured.sizes == [1, 2, 4, 8]  # 16 would hold 192 MiB
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
