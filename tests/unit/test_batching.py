"""The batcher: its policy synchronously with explicit times, and the async loop with a deterministic fake runtime."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import pytest

from service.batch_policy import BatchPolicy, QueuedItem
from service.batching import DynamicBatcher
from service.errors import DeadlineExceeded, InferenceFailed, Overloaded, ShuttingDown

FAR = 1e9  # a deadline that never passes


def item(payload: object, at: float = 0.0, deadline: float = FAR, priority: int = 0) -> QueuedItem:
    return QueuedItem(payload=payload, enqueued_at=at, deadline=deadline, waiter=Future(), priority=priority)


def payloads(items: list[QueuedItem]) -> list[object]:
    return [i.payload for i in items]


# --- the policy, without an event loop --------------------------------------------------------------------------


def test_policy_full_batch_is_taken_in_arrival_order_up_to_the_limit():
    policy = BatchPolicy(max_batch_size=4, max_queue_size=10)
    assert policy.admit([item(n, at=n * 0.001) for n in range(6)])
    assert policy.ready_at() == 0.0
    assert payloads(policy.take_batch(now=1.0).items) == [0, 1, 2, 3]
    assert payloads(policy.take_batch(now=1.0).items) == [4, 5]
    assert policy.ready_at() is None


def test_policy_idle_fast_path_runs_a_lone_item_at_once():
    policy = BatchPolicy(max_batch_size=8, max_queue_size=8, max_delay_s=0.0)
    policy.admit([item("only", at=5.0)])
    assert policy.ready_at() == 5.0  # due the moment it arrived
    assert payloads(policy.take_batch(now=5.0).items) == ["only"]


def test_policy_delay_is_one_fixed_deadline_from_the_first_arrival():
    policy = BatchPolicy(max_batch_size=3, max_queue_size=8, max_delay_s=0.010)
    policy.admit([item("a", at=1.000)])
    assert policy.ready_at() == pytest.approx(1.010)
    policy.admit([item("b", at=1.008)])
    assert policy.ready_at() == pytest.approx(1.010)  # later arrivals do not push it back
    policy.admit([item("c", at=1.009)])
    assert policy.ready_at() == 1.000  # full: due now


def test_policy_queue_full_refuses_all_or_nothing():
    policy = BatchPolicy(max_batch_size=2, max_queue_size=3)
    assert policy.admit([item(1), item(2)])
    assert not policy.admit([item(3), item(4)])
    assert len(policy) == 2
    assert policy.admit([item(3)])
    assert not policy.admit([item(4)])


def test_policy_abandoned_items_free_their_room():
    policy = BatchPolicy(max_batch_size=2, max_queue_size=2)
    gone, kept = item("gone"), item("kept")
    policy.admit([gone, kept])
    gone.waiter.cancel()
    assert policy.admit([item("new")])
    assert payloads(policy.take_batch(now=0.0).items) == ["kept", "new"]


def test_policy_expired_items_are_set_aside_not_run():
    policy = BatchPolicy(max_batch_size=4, max_queue_size=4)
    policy.admit([item("late", deadline=1.0), item("fine", deadline=3.0)])
    batch = policy.take_batch(now=2.0)
    assert payloads(batch.items) == ["fine"]
    assert payloads(batch.expired) == ["late"]


def test_policy_cancelled_items_are_dropped_and_counted():
    policy = BatchPolicy(max_batch_size=4, max_queue_size=4)
    a, b, c = item("a"), item("b"), item("c")
    policy.admit([a, b, c])
    b.waiter.cancel()
    batch = policy.take_batch(now=0.0)
    assert payloads(batch.items) == ["a", "c"]
    assert batch.abandoned == 1


def test_policy_take_all_empties_the_queue():
    policy = BatchPolicy(max_batch_size=1, max_queue_size=4)
    policy.admit([item(1), item(2)])
    assert payloads(policy.take_all()) == [1, 2]
    assert len(policy) == 0


def test_policy_takes_the_highest_priority_first_in_arrival_order_within_each():
    policy = BatchPolicy(max_batch_size=3, max_queue_size=16)
    arrivals = [("low-1", 1), ("normal-1", 0), ("high-1", -1), ("low-2", 1), ("high-2", -1), ("normal-2", 0)]
    policy.admit([item(name, at=n * 0.001, priority=priority) for n, (name, priority) in enumerate(arrivals)])
    assert payloads(policy.take_batch(now=1.0).items) == ["high-1", "high-2", "normal-1"]
    policy.admit([item("high-3", at=1.0, priority=-1)])  # a later arrival of a higher priority goes ahead
    assert payloads(policy.take_batch(now=1.0).items) == ["high-3", "normal-2", "low-1"]
    assert payloads(policy.take_batch(now=1.0).items) == ["low-2"]


def test_policy_priorities_keep_the_drop_rules():
    policy = BatchPolicy(max_batch_size=4, max_queue_size=8)
    gone, late = item("gone", priority=-1), item("late", deadline=1.0, priority=-1)
    policy.admit([item("low", priority=1), gone, late, item("high", priority=-1)])
    gone.waiter.cancel()
    batch = policy.take_batch(now=2.0)
    assert payloads(batch.items) == ["high", "low"]
    assert payloads(batch.expired) == ["late"] and batch.abandoned == 1


def test_policy_wait_bound_refuses_what_would_finish_too_late():
    policy = BatchPolicy(max_batch_size=4, max_queue_size=100, max_wait_s=1.0)
    policy.record_batch(4, 0.4)  # 0.1 s per image
    assert policy.admit([item(n) for n in range(4)], in_flight=4)  # 4 running + 4 queued: 0.8 s
    assert policy.expected_wait_s(1, in_flight=4) == pytest.approx(0.9)  # every image ahead, and its own
    assert not policy.admit([item(4), item(5), item(6)], in_flight=4)  # 1.1 s: refused, all or nothing
    assert len(policy) == 4
    assert policy.admit([item(4)], in_flight=4)  # 0.9 s


def test_policy_wait_bound_admits_behind_a_running_batch_that_alone_takes_most_of_it():
    # ResNet-50 on 2 cores with batches of 32: a full batch (1.6 s) is longer than the bound (1.5 s), yet a request
    # behind one running image is done in 0.1 s and must be admitted.
    policy = BatchPolicy(max_batch_size=32, max_queue_size=256, max_wait_s=1.5)
    policy.record_batch(1, 0.05)
    assert policy.admit([item("next")], in_flight=1)
    assert policy.expected_wait_s(1, in_flight=1) == pytest.approx(0.15)


def test_policy_wait_bound_needs_a_measurement_and_never_refuses_an_idle_model():
    policy = BatchPolicy(max_batch_size=4, max_queue_size=100, max_wait_s=0.5)
    assert policy.expected_wait_s(1) is None
    assert policy.admit([item(n) for n in range(30)])  # nothing measured yet: only the count limit applies
    policy.take_all()
    policy.record_batch(1, 1.0)  # one image takes longer than the whole budget...
    assert policy.admit([item("big"), item("request")])  # ...yet an idle model still takes a request whole
    assert not policy.admit([item("next")])


def test_policy_seconds_per_image_follows_recent_batches():
    policy = BatchPolicy(max_batch_size=4, max_queue_size=4)
    policy.record_batch(2, 2.0)
    assert policy.seconds_per_image == pytest.approx(1.0)
    policy.record_batch(4, 0.0)
    assert policy.seconds_per_image == pytest.approx(1.0 - BatchPolicy.SMOOTHING)


# --- the async loop, with a fake runtime the test controls ------------------------------------------------------


class GatedRuntime:
    """Records every batch; each batch blocks until the test opens the gate (once open, it stays open)."""

    def __init__(self, *, fail_on: object = None) -> None:
        self.batches: list[list[object]] = []
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()
        self.fail_on = fail_on

    def __call__(self, batch: list[object]) -> list[object]:
        self.batches.append(list(batch))
        self.entered.release()
        self.gate.wait()
        if self.fail_on is not None and self.fail_on in batch:
            raise RuntimeError("boom")
        return [f"out-{p}" for p in batch]

    async def wait_until_running(self) -> None:
        """Return once a batch has entered the runtime (no sleeps: the runtime itself signals)."""
        await asyncio.to_thread(self.entered.acquire)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=60))  # the timeout only guards against a hang


def test_idle_fast_path_single_item_runs_alone_at_once():
    async def scenario():
        runtime = GatedRuntime()
        runtime.gate.set()
        batcher = DynamicBatcher(runtime, name="m", max_batch_size=8, max_queue_size=8)
        batcher.start()
        (future,) = batcher.submit(["a"], deadline=FAR)
        result = await future
        await batcher.close()
        return runtime, result

    runtime, result = run(scenario())
    assert runtime.batches == [["a"]]
    assert result.value == "out-a"
    assert result.batch_size == 1


def test_arrivals_while_busy_fill_the_next_batches_up_to_the_limit():
    async def scenario():
        runtime = GatedRuntime()
        batcher = DynamicBatcher(runtime, name="m", max_batch_size=4, max_queue_size=16)
        batcher.start()
        first = batcher.submit([0], deadline=FAR)
        await runtime.wait_until_running()
        later = [batcher.submit([n], deadline=FAR)[0] for n in range(1, 7)]  # six separate requests
        assert batcher.queue_depth == 6
        runtime.gate.set()
        results = await asyncio.gather(*first, *later)
        await batcher.close()
        return runtime, results

    runtime, results = run(scenario())
    assert runtime.batches == [[0], [1, 2, 3, 4], [5, 6]]
    assert [r.value for r in results] == [f"out-{n}" for n in range(7)]
    assert [r.batch_size for r in results] == [1, 4, 4, 4, 4, 2, 2]


def test_once_idle_after_batches_the_idle_hook_runs_once_in_the_batcher_thread_with_the_largest_batch():
    async def scenario():
        runtime = GatedRuntime()
        idle_calls: list[tuple[int, str]] = []
        called = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_idle(largest: int) -> None:
            idle_calls.append((largest, threading.current_thread().name))
            loop.call_soon_threadsafe(called.set)

        batcher = DynamicBatcher(
            runtime, name="m", max_batch_size=4, max_queue_size=16, on_idle=on_idle, idle_after_s=0.05
        )
        batcher.start()
        await asyncio.sleep(0.3)
        assert idle_calls == []  # nothing ran yet: nothing to give back
        first = batcher.submit([0], deadline=FAR)
        await runtime.wait_until_running()
        later = [batcher.submit([n], deadline=FAR)[0] for n in range(1, 4)]
        runtime.gate.set()
        await asyncio.gather(*first, *later)
        await called.wait()
        await asyncio.sleep(0.3)
        calls_after_one_idle_period = list(idle_calls)
        called.clear()
        await asyncio.gather(*batcher.submit([7], deadline=FAR))  # served again: idle again later
        await called.wait()
        await batcher.close()
        return runtime, calls_after_one_idle_period, idle_calls

    runtime, after_one, calls = run(scenario())
    assert runtime.batches == [[0], [1, 2, 3], [7]]
    assert [largest for largest, _ in after_one] == [3]  # once per idle period, not again while nothing ran
    assert after_one[0][1].startswith("batcher-m")
    assert [largest for largest, _ in calls] == [3, 1]


def test_the_idle_hook_waits_while_an_admitted_request_is_still_arriving():
    async def scenario():
        runtime = GatedRuntime()
        runtime.gate.set()
        idle_calls: list[int] = []
        batcher = DynamicBatcher(
            runtime, name="m", max_batch_size=4, max_queue_size=16, on_idle=idle_calls.append, idle_after_s=0.05
        )
        batcher.start()
        await asyncio.gather(*batcher.submit([0, 1], deadline=FAR))
        with batcher.reserve(1):  # uploading or decoding: the model is not idle
            await asyncio.sleep(0.3)
            held = list(idle_calls)
        for _ in range(200):
            if idle_calls:
                break
            await asyncio.sleep(0.05)
        await batcher.close()
        return held, idle_calls

    held, calls = run(scenario())
    assert held == []
    assert calls == [2]


def test_under_load_the_next_batches_run_the_higher_priority_first():
    async def scenario():
        runtime = GatedRuntime()
        batcher = DynamicBatcher(runtime, name="m", max_batch_size=2, max_queue_size=16)
        batcher.start()
        first = batcher.submit(["first"], deadline=FAR)
        await runtime.wait_until_running()
        queued = [batcher.submit(["low-1", "low-2"], deadline=FAR, priority=1)]
        queued.append(batcher.submit(["normal"], deadline=FAR))
        queued.append(batcher.submit(["high"], deadline=FAR, priority=-1))
        runtime.gate.set()
        await asyncio.gather(*first, *(future for futures in queued for future in futures))
        await batcher.close()
        return runtime

    runtime = run(scenario())
    assert runtime.batches == [["first"], ["high", "normal"], ["low-1", "low-2"]]


def test_a_full_batch_does_not_wait_for_the_delay():
    async def scenario():
        runtime = GatedRuntime()
        runtime.gate.set()
        # An hour-long delay: the test only finishes because a full batch runs at once.
        batcher = DynamicBatcher(runtime, name="m", max_batch_size=3, max_queue_size=8, max_delay_s=3600)
        batcher.start()
        futures = batcher.submit(["a", "b", "c"], deadline=FAR)
        results = await asyncio.gather(*futures)
        await batcher.close()
        return runtime, results

    runtime, results = run(scenario())
    assert runtime.batches == [["a", "b", "c"]]
    assert [r.value for r in results] == ["out-a", "out-b", "out-c"]


def test_queue_full_is_refused_at_once_and_all_or_nothing():
    async def scenario():
        runtime = GatedRuntime()
        batcher = DynamicBatcher(runtime, name="m", max_batch_size=1, max_queue_size=2)
        batcher.start()
        running = batcher.submit(["a"], deadline=FAR)
        await runtime.wait_until_running()
        queued = batcher.submit(["b"], deadline=FAR)
        with pytest.raises(Overloaded, match="overloaded"):
            batcher.submit(["c", "d"], deadline=FAR)  # one slot left, two images: none admitted
        assert batcher.queue_depth == 1
        queued += batcher.submit(["c"], deadline=FAR)
        with pytest.raises(Overloaded):
            batcher.submit(["d"], deadline=FAR)
        runtime.gate.set()
        results = await asyncio.gather(*running, *queued)
        await batcher.close()
        return runtime, results

    runtime, results = run(scenario())
    assert runtime.batches == [["a"], ["b"], ["c"]]
    assert [r.value for r in results] == ["out-a", "out-b", "out-c"]


def test_item_past_its_deadline_fails_with_504_and_never_runs():
    async def scenario():
        runtime = GatedRuntime()
        clock = FakeClock()
        batcher = DynamicBatcher(runtime, name="m", max_batch_size=4, max_queue_size=8, clock=clock)
        batcher.start()
        running = batcher.submit(["a"], deadline=clock.now + 10)
        await runtime.wait_until_running()
        late = batcher.submit(["late"], deadline=clock.now + 1)
        on_time = batcher.submit(["on-time"], deadline=clock.now + 10)
        clock.now += 5  # "late" is now past its deadline, "on-time" is not
        runtime.gate.set()
        first = await running[0]
        with pytest.raises(DeadlineExceeded):
            await late[0]
        second = await on_time[0]
        await batcher.close()
        return runtime, first, second

    runtime, first, second = run(scenario())
    assert runtime.batches == [["a"], ["on-time"]]
    assert (first.value, second.value) == ("out-a", "out-on-time")
    assert second.queue_wait_s == 5.0  # measured on the batcher's (monotonic) clock


def test_cancelled_client_is_dropped_before_inference():
    async def scenario():
        runtime = GatedRuntime()
        batcher = DynamicBatcher(runtime, name="m", max_batch_size=4, max_queue_size=8)
        batcher.start()
        running = batcher.submit(["a"], deadline=FAR)
        await runtime.wait_until_running()
        gone = batcher.submit(["gone-1", "gone-2"], deadline=FAR)
        staying = batcher.submit(["stays"], deadline=FAR)
        for future in gone:
            future.cancel()
        runtime.gate.set()
        results = await asyncio.gather(*running, *staying)
        after = batcher.submit(["after"], deadline=FAR)  # the batcher is not stuck after cancellations
        results.append(await after[0])
        await batcher.close()
        return runtime, results

    runtime, results = run(scenario())
    assert runtime.batches == [["a"], ["stays"], ["after"]]
    assert [r.value for r in results] == ["out-a", "out-stays", "out-after"]


def test_close_fails_the_queued_lets_the_running_batch_finish_and_refuses_new_work():
    async def scenario():
        runtime = GatedRuntime()
        batcher = DynamicBatcher(runtime, name="m", max_batch_size=1, max_queue_size=8)
        batcher.start()
        running = batcher.submit(["a"], deadline=FAR)
        await runtime.wait_until_running()
        queued = batcher.submit(["b", "c"], deadline=FAR)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0)  # let close() fail the queue while "a" still runs
        for future in queued:
            with pytest.raises(ShuttingDown):
                await future
        runtime.gate.set()
        finished = await running[0]
        await closing
        with pytest.raises(ShuttingDown):
            batcher.submit(["d"], deadline=FAR)
        return runtime, finished, batcher

    runtime, finished, batcher = run(scenario())
    assert finished.value == "out-a"
    assert runtime.batches == [["a"]]
    assert not batcher.running


def test_runtime_error_fails_that_batch_only():
    async def scenario():
        runtime = GatedRuntime(fail_on="bad")
        runtime.gate.set()
        batcher = DynamicBatcher(runtime, name="m", max_batch_size=2, max_queue_size=8)
        batcher.start()
        failing = batcher.submit(["bad", "neighbour"], deadline=FAR)
        outcomes = await asyncio.gather(*failing, return_exceptions=True)
        fine = await batcher.submit(["good"], deadline=FAR)[0]
        await batcher.close()
        return outcomes, fine

    outcomes, fine = run(scenario())
    assert all(isinstance(o, InferenceFailed) for o in outcomes)
    assert fine.value == "out-good"


def test_results_are_never_set_on_a_cancelled_future():
    async def scenario():
        runtime = GatedRuntime()
        batcher = DynamicBatcher(runtime, name="m", max_batch_size=4, max_queue_size=8)
        batcher.start()
        (future,) = batcher.submit(["a"], deadline=FAR)
        await runtime.wait_until_running()
        future.cancel()  # the client leaves while its batch is running
        runtime.gate.set()
        survivor = await batcher.submit(["b"], deadline=FAR)[0]
        await batcher.close()
        return future, survivor

    future, survivor = run(scenario())
    assert future.cancelled()
    assert survivor.value == "out-b"


def test_wait_bound_uses_measured_inference_time_and_says_why_it_refuses():
    async def scenario():
        runtime = GatedRuntime()
        clock = FakeClock()
        batcher = DynamicBatcher(runtime, name="m", max_batch_size=2, max_queue_size=100, max_wait_s=1.5, clock=clock)
        batcher.start()
        try:
            first = batcher.submit(["a", "b"], deadline=FAR)
            await runtime.wait_until_running()
            clock.now += 1.0  # the batch of two takes one second: 0.5 s per image
            runtime.gate.set()
            await asyncio.gather(*first)
            assert batcher.seconds_per_image == pytest.approx(0.5)
            runtime.gate.clear()
            running = batcher.submit(["c"], deadline=FAR)
            await runtime.wait_until_running()
            queued = batcher.submit(["d", "e"], deadline=FAR)  # (1 running + 2 queued) x 0.5 s = 1.5 s
            assert not batcher.has_room(1)
            with pytest.raises(Overloaded, match=r"about 2\.0 s of work \(limit 1\.5 s\)"):
                batcher.submit(["f"], deadline=FAR)  # (1 + 2 + 1) x 0.5 s = 2.0 s
            runtime.gate.set()
            await asyncio.gather(*running, *queued)
        finally:
            runtime.gate.set()  # never leave the worker thread blocked, even when an assertion fails
            await batcher.close()
        return runtime

    runtime = run(scenario())
    assert runtime.batches == [["a", "b"], ["c"], ["d", "e"]]


class RecordingObserver:
    def __init__(self) -> None:
        self.drains: list[float] = []

    def batch_ran(self, size: int, inference_s: float) -> None:
        pass

    def item_dequeued(self, queue_wait_s: float) -> None:
        pass

    def items_dropped(self, reason, count: int) -> None:
        pass

    def queue_changed(self, depth: int, drain_s: float = 0.0) -> None:
        self.drains.append(drain_s)


def test_retry_after_and_the_drain_gauge_follow_the_measured_drain_rate():
    async def scenario():
        runtime = GatedRuntime()
        clock = FakeClock()
        observer = RecordingObserver()
        batcher = DynamicBatcher(runtime, name="m", max_batch_size=2, max_queue_size=4, clock=clock, observer=observer)
        batcher.start()
        try:
            assert batcher.retry_after_s() == 1  # nothing measured yet: the least
            first = batcher.submit(["a", "b"], deadline=FAR)
            await runtime.wait_until_running()
            clock.now += 3.0  # 1.5 s per image
            runtime.gate.set()
            await asyncio.gather(*first)
            assert observer.drains[-1] == 0.0  # nothing left once the batch is done
            runtime.gate.clear()
            running = batcher.submit(["c"], deadline=FAR)
            await runtime.wait_until_running()
            queued = batcher.submit(["d", "e", "f", "g"], deadline=FAR)  # the queue is full
            assert batcher.drain_s() == pytest.approx(5 * 1.5)
            assert observer.drains[-1] == pytest.approx(7.5)
            with pytest.raises(Overloaded) as refused:
                batcher.submit(["h"], deadline=FAR)
            assert refused.value.headers["Retry-After"] == "8"  # 7.5 s to drain, rounded up
            runtime.gate.set()
            await asyncio.gather(*running, *queued)
        finally:
            runtime.gate.set()
            await batcher.close()

    run(scenario())
