"""Per-key rates: `KeyRateLimits` over `limits`' sliding-window-counter strategy, and the counters' table in shared
memory (`rate_windows.SharedWindowStorage`), hit by real forked processes at once: together they are allowed the
configured rate, not that rate each."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
from limits import parse
from limits.strategies import SlidingWindowCounterRateLimiter

from service.auth import ApiKey
from service.errors import RateLimited
from service.rate_windows import SharedWindowStorage, TableFull
from service.ratelimit import SHARED_FILE_NAME, KeyRateLimits


def hour_of(moment: float) -> int:
    return int(moment // 3600)


def test_a_key_without_a_rate_is_never_limited_and_makes_nothing(tmp_path):
    limits = KeyRateLimits(tmp_path)
    for _ in range(100):
        limits.admit(ApiKey("free"))
    assert not (tmp_path / SHARED_FILE_NAME).exists()


def test_a_key_over_its_rate_is_refused_with_the_seconds_until_it_may_retry():
    while True:
        started = time.time()
        limits = KeyRateLimits()
        key = ApiKey(f"ci-{started}", rate="3/hour")
        admitted = 0
        refusals = []
        for _ in range(6):
            try:
                limits.admit(key)
                admitted += 1
            except RateLimited as refused:
                refusals.append(refused)
        if hour_of(time.time()) == hour_of(started):  # else the window moved on mid-test: once more
            break
    assert admitted == 3 and len(refusals) == 3
    refusal = refusals[0]
    assert (refusal.status_code, refusal.code, refusal.reason) == (429, "rate_limited", "rate_limited")
    assert 1 <= int(refusal.headers["Retry-After"]) <= 3600
    assert f"the API key 'ci-{started}' may make 3 requests per hour; retry after" in refusal.message


def _hit_many(path: str, key: str, hits: int, start, results) -> None:
    limiter = SlidingWindowCounterRateLimiter(SharedWindowStorage(Path(path)))
    item = parse("40/hour")
    start.wait()
    results.put(sum(limiter.hit(item, key) for _ in range(hits)))


def test_forked_processes_hitting_at_once_are_allowed_the_rate_together(tmp_path):
    context = multiprocessing.get_context("fork")  # as the worker supervisor starts its workers
    path = tmp_path / SHARED_FILE_NAME
    while True:
        started = time.time()
        key = f"shared-{started}"
        start, results = context.Event(), context.Queue()
        workers = [context.Process(target=_hit_many, args=(str(path), key, 30, start, results)) for _ in range(4)]
        for worker in workers:
            worker.start()
        start.set()
        admitted = [results.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
        if hour_of(time.time()) == hour_of(started):
            break
    assert sum(admitted) == 40, admitted  # 120 hits from 4 processes, 40 allowed in all
    assert all(worker.exitcode == 0 for worker in workers)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_counters_expire_and_their_places_are_reused():
    clock = Clock()
    storage = SharedWindowStorage(slots=8, clock=clock)
    for name in "abcdefgh":
        assert storage.incr(name, expiry=10) == 1
    assert storage.incr("a", expiry=10, amount=2) == 3 and storage.get("a") == 3
    assert storage.get_expiry("a") == clock.now + 10
    with pytest.raises(TableFull):
        storage.incr("i", expiry=10)  # every place taken and none expired
    clock.now += 10
    assert storage.get("a") == 0  # expired
    assert storage.incr("i", expiry=10) == 1  # in an expired counter's place
    storage.clear("i")
    assert storage.get("i") == 0


def test_the_sliding_window_weighs_the_previous_window():
    clock = Clock()
    clock.now = 3600.0 * 1000  # the start of a window of an hour
    limiter = SlidingWindowCounterRateLimiter(SharedWindowStorage(clock=clock))
    # (`limits` computes window statistics from the real clock; the storage's own decisions use this one.)
    item = parse("10/hour")
    assert sum(limiter.hit(item, "k") for _ in range(15)) == 10
    clock.now += 3600 * 1.5  # half way into the next window: the previous one still weighs half
    assert sum(limiter.hit(item, "k") for _ in range(15)) == 5
