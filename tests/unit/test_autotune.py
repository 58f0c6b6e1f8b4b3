"""Batch sizes that tune themselves: the choice rule and the search, on a fake clock."""

from __future__ import annotations

import pytest

from service.autotune import MAX_BATCH_INPUT_BYTES, BatchTiming, choose, largest_batch, measure


def timings(per_image_ms: dict[int, float]) -> list[BatchTiming]:
    return [BatchTiming(size, size * ms / 1000) for size, ms in per_image_ms.items()]


@pytest.mark.parametrize(
    "per_image_ms,expected",
    [
        ({1: 10.0, 2: 9.9, 4: 5.0}, 1),  # a CPU: doubling buys 1%, so batch 1, whatever comes after
        ({1: 10.0, 2: 5.0, 4: 2.5, 8: 2.4}, 4),  # a GPU-like curve: steep, then flat
        ({1: 10.0, 2: 9.4, 4: 8.9}, 4),  # each doubling buys just over 5%
        ({1: 1.0}, 1),
    ],
)
def test_choose_keeps_the_largest_batch_that_still_pays(per_image_ms, expected):
    assert choose(timings(per_image_ms)) == expected


class FakeModel:
    """Seconds per batch from a table; `run` advances a fake clock by that much."""

    def __init__(self, per_image_s: dict[int, float]) -> None:
        self.per_image_s = per_image_s
        self.now = 0.0
        self.sizes_run: list[int] = []

    def clock(self) -> float:
        return self.now

    def run(self, size: int) -> None:
        self.sizes_run.append(size)
        self.now += size * self.per_image_s[size]


def test_search_stops_at_the_first_doubling_that_does_not_pay_and_warms_each_size():
    model = FakeModel({1: 0.010, 2: 0.005, 4: 0.0025, 8: 0.0024, 16: 0.001})
    curve = measure(model.run, limit=64, clock=model.clock)
    assert curve.chosen == 4
    assert [t.batch_size for t in curve.timings] == [1, 2, 4, 8]  # 16 is never tried
    assert model.sizes_run == [1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8, 8]  # one untimed run each, then two timed
    assert curve.seconds_per_image(4) == pytest.approx(0.0025)


def test_search_stops_at_the_limit():
    model = FakeModel({size: 1.0 / size for size in (1, 2, 4, 8)})
    assert measure(model.run, limit=8, clock=model.clock).chosen == 8
    assert max(model.sizes_run) == 8


def test_the_memory_cap_bounds_the_largest_batch():
    assert largest_batch(4 * 3 * 224 * 224) == 64  # ResNet-50's input: the count cap binds first
    assert largest_batch(4 * 3 * 512 * 512) == MAX_BATCH_INPUT_BYTES // (4 * 3 * 512 * 512) == 21
    assert largest_batch(10**9) == 1


def test_fastest_keeps_the_best_run_within_its_budget():
    from service.autotune import fastest

    model = FakeModel({1: 0.001})
    stalls = iter([0.5, 0.0, 0.0, 0.0])

    def run(size: int) -> None:
        model.run(size)
        model.now += next(stalls, 0.0)

    assert fastest(run, 1, runs=10, budget_s=0.4, clock=model.clock) == pytest.approx(0.001)
    assert len(model.sizes_run) == 2  # a stall, then a clean run; the budget was spent: no more
