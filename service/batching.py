"""Dynamic batching, model-agnostic: one `DynamicBatcher` per model wraps a plain `run_batch(payloads)` callable.

The batch-forming rules live in `service.batch_policy.BatchPolicy` (no clock, no event loop, tested
synchronously); `DynamicBatcher` is the thin async loop around it:

- admission first: a request whose images do not all fit in the bounded queue is refused at once (`Overloaded`);
  with ``max_wait_s`` set, so is one whose last image would not be done within that time, estimated from the
  running batch and the images ahead of it, at the measured seconds per image;
- when the model is idle the first image runs at once (``max_delay_s == 0``); while a batch runs, arrivals queue
  up and the next batch takes up to ``max_batch_size`` of them as soon as the model is free;
- with ``max_delay_s > 0`` a batch is formed when it is full or when its first image has waited that long,
  one fixed deadline from that image's arrival (not a timeout that restarts on every arrival);
- images whose client has gone (their future is done) are skipped, images past their deadline are failed with
  `DeadlineExceeded` without running, and a result is only ever set on a future that is not done;
- once the model has been idle for ``idle_after_s`` after serving, ``on_idle(largest batch since the last call)``
  runs in the batcher's thread (a model gives back the memory its batches held);
- `close()` fails whatever is still queued with `ShuttingDown` and lets the running batch finish.

All times come from a monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from service import tracing
from service.batch_policy import BatchPolicy, FormedBatch, QueuedItem
from service.errors import DeadlineExceeded, DropReason, InferenceFailed, Overloaded, ShuttingDown

logger = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")
X = TypeVar("X")
T = TypeVar("T")


@dataclass(frozen=True)
class ItemResult(Generic[R]):
    """One item's output plus what happened to it in the batcher."""

    value: R
    queue_wait_s: float
    inference_s: float
    batch_size: int
    started_at: float = 0.0
    """When its batch started (the batcher's monotonic clock)."""


class BatchObserver(Protocol):
    """Hooks for metrics; every method is called on the event loop."""

    def batch_ran(self, size: int, inference_s: float) -> None: ...

    def item_dequeued(self, queue_wait_s: float) -> None: ...

    def items_dropped(self, reason: DropReason, count: int) -> None: ...

    def queue_changed(self, depth: int, drain_s: float = 0.0) -> None:
        """`depth` images wait; the model needs `drain_s` seconds to finish them and those running or reserved."""
        ...

    def max_batch_size_changed(self, size: int) -> None: ...


class DynamicBatcher(Generic[P, R]):
    """Queues payloads from many requests and runs them through `run_batch` in batches, one batch at a time.

    `run_batch` receives a list of payloads and must return one result per payload, in order; it runs in the
    batcher's own worker thread, never on the event loop.
    """

    def __init__(
        self,
        run_batch: Callable[[list[P]], Collection[R]],
        *,
        name: str,
        max_batch_size: int,
        max_queue_size: int,
        max_delay_s: float = 0.0,
        max_wait_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: BatchObserver | None = None,
        thread_initializer: Callable[[], None] | None = None,
        on_idle: Callable[[int], None] | None = None,
        idle_after_s: float = 0.0,
    ) -> None:
        self.name = name
        self._run_batch = run_batch
        self._policy: BatchPolicy[P] = BatchPolicy(
            max_batch_size=max_batch_size, max_queue_size=max_queue_size, max_delay_s=max_delay_s, max_wait_s=max_wait_s
        )
        self._clock = clock
        self._observer = observer
        self._thread_initializer = thread_initializer
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._running_batch_size = 0
        self._alone_running = False
        """A lone image runs (`run_alone`): the loop starts no batch until it is done."""
        self._on_idle = on_idle
        self._idle_after_s = idle_after_s
        self._largest_since_idle = 0
        """The largest batch run since `on_idle` was last called (0: none, nothing to call it for)."""

    @property
    def max_batch_size(self) -> int:
        return self._policy.max_batch_size

    def set_max_batch_size(self, max_batch_size: int) -> None:
        """Change the largest batch from the next one formed on (batch-size tuning, while serving)."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._policy.max_batch_size = max_batch_size
        if self._observer:
            self._observer.max_batch_size_changed(max_batch_size)
        self._wakeup.set()

    def seed_seconds_per_image(self, seconds_per_image: float) -> None:
        """Seed the wait estimate with a measured time, so that the wait bound holds from the first request on."""
        if self._policy.seconds_per_image is None:
            self._policy.record_batch(1, seconds_per_image)

    async def run_in_thread(self, function: Callable[[], T]) -> T:
        """Call `function` in the batcher's own thread, between batches (measurements that must not run beside
        the model's inference, such as batch-size tuning)."""
        if self._executor is None:
            raise RuntimeError(f"batcher {self.name} is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    @property
    def max_queue_size(self) -> int:
        return self._policy.max_queue_size

    @property
    def max_delay_s(self) -> float:
        return self._policy.max_delay_s

    @property
    def max_wait_s(self) -> float | None:
        return self._policy.max_wait_s

    @property
    def seconds_per_image(self) -> float | None:
        """Measured inference seconds per image over recent batches (None before the first)."""
        return self._policy.seconds_per_image

    @property
    def queue_depth(self) -> int:
        """Items waiting (not counting the batch being run)."""
        return len(self._policy)

    @property
    def running(self) -> bool:
        """True between `start()` and `close()` while the batch loop is alive."""
        return self._task is not None and not self._task.done() and not self._closed

    def start(self) -> None:
        """Start the batch loop on the running event loop."""
        if self._task is not None:
            raise RuntimeError(f"batcher {self.name} already started")
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"batcher-{self.name}", initializer=self._thread_initializer
        )
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    def has_room(self, count: int) -> bool:
        return not self._closed and self._policy.has_room(count, self._running_batch_size)

    @property
    def reserved(self) -> int:
        """Images admitted whose requests are still uploading or decoding."""
        return self._policy.reserved

    def reserve(self, count: int = 1) -> ImageReservation[P, R]:
        """Room for `count` images of a request not yet read, or `Overloaded` / `ShuttingDown` at once."""
        reservation: ImageReservation[P, R] = ImageReservation(self)
        reservation.grow_to(count)
        return reservation

    def _reserve(self, count: int) -> None:
        if self._closed:
            raise ShuttingDown(f"model {self.name} is shutting down")
        if not self._policy.reserve(count, self._running_batch_size):
            raise Overloaded(self.overload_message(count), retry_after_s=self.retry_after_s())

    def _enqueue(
        self, payloads: Sequence[P], deadline: float, priority: int = 0
    ) -> list[asyncio.Future[ItemResult[R]]]:
        loop = asyncio.get_running_loop()
        now = self._clock()
        link = tracing.link()
        items = [QueuedItem(payload, now, deadline, loop.create_future(), priority, link) for payload in payloads]
        self._policy.enqueue_reserved(items)
        self._wakeup.set()
        self._report_queue()
        return [item.waiter for item in items]

    def drain_s(self) -> float:
        """Seconds the model needs to finish what it holds (running, queued and reserved images) at its measured
        drain rate; 0 before the first measurement."""
        return self.expected_wait_s(0) or 0.0

    def retry_after_s(self) -> int:
        """What a refused client is told to wait: until what the model holds now is done (at least a second)."""
        return max(1, math.ceil(self.drain_s()))

    def _report_queue(self) -> None:
        if self._observer:
            self._observer.queue_changed(len(self._policy), self.drain_s())

    def expected_wait_s(self, count: int) -> float | None:
        """Estimated seconds until `count` new images would be done; None before the first batch has run."""
        return self._policy.expected_wait_s(count, self._running_batch_size)

    def submit(self, payloads: Sequence[P], deadline: float, priority: int = 0) -> list[asyncio.Future[ItemResult[R]]]:
        """Queue all payloads (all or none) and return one future per payload (lower `priority` runs first).

        Raises `Overloaded` at once when they do not fit and `ShuttingDown` after `close()`. Cancelling a
        returned future tells the batcher its client is gone: the item is dropped before inference.
        """
        with self.reserve(len(payloads)) as reservation:
            return reservation.submit(payloads, deadline, priority)

    def overload_message(self, count: int) -> str:
        """Why a request of `count` images is refused right now, for the client."""
        expected = self.expected_wait_s(count)
        ahead = f"{self.queue_depth} images are queued and {self.reserved} are being received or decoded"
        if self.max_wait_s is not None and expected is not None and expected > self.max_wait_s:
            return (
                f"model {self.name} is overloaded: {ahead}, about {expected:.1f} s of work (limit "
                f"{self.max_wait_s:g} s); retry later"
            )
        return f"model {self.name} is overloaded: {ahead} (limit {self.max_queue_size}); retry later"

    async def close(self) -> None:
        """Refuse new work, fail queued items with `ShuttingDown`, let the running batch finish, stop the loop."""
        self._closed = True
        queued = self._policy.take_all()
        for item in queued:
            if not item.waiter.done():
                item.waiter.set_exception(ShuttingDown(f"model {self.name} shut down before this image ran"))
        if queued and self._observer:
            self._observer.items_dropped(DropReason.SHUTDOWN, len(queued))
        if self._observer:
            self._observer.queue_changed(0)
        self._wakeup.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            # Joined from another thread: the event loop serves other models meanwhile.
            await asyncio.to_thread(self._executor.shutdown, True)

    def _idle_for(self, reserved: int) -> bool:
        """Nothing queued, running, or held by a request other than the one holding `reserved` images, and no
        batch delay asked for (with one, a lone image waits for company as configured)."""
        return (
            self.running
            and self._policy.max_delay_s == 0
            and not self._alone_running
            and self._running_batch_size == 0
            and len(self._policy) == 0
            and self._policy.reserved == reserved
        )

    async def _run_alone(
        self, reservation: ImageReservation[P, R], prepare: Callable[[], tuple[X, P]]
    ) -> tuple[X, ItemResult[R]]:
        """Prepare one payload and run it as a batch of one, in one hand-off to the batcher's thread."""
        assert self._executor is not None
        if self._closed:
            raise ShuttingDown(f"model {self.name} is shutting down")
        reservation.release()  # its one image is the batch that runs now
        self._alone_running = True
        self._running_batch_size = 1
        clock, run_batch = self._clock, self._run_batch

        def job() -> tuple[X, Collection[R], float, float]:
            prepared, payload = prepare()
            started = clock()
            try:
                outputs = run_batch([payload])
            except Exception as exc:
                raise _InferenceError from exc
            return prepared, outputs, started, clock()

        running = asyncio.get_running_loop().run_in_executor(self._executor, job)
        running.add_done_callback(self._alone_done)
        try:
            # Shielded: a caller that leaves (deadline, client gone) does not end the run, which holds the
            # thread until it is done; `_alone_done` lets the loop go on then.
            prepared, outputs, started, ended = await asyncio.shield(running)
        except _InferenceError as failure:
            logger.error("inference failed for a batch of 1 on model %s", self.name, exc_info=failure.__cause__)
            raise InferenceFailed(f"inference failed on model {self.name}; see the server log") from None
        inference_s = ended - started
        if self._observer:
            self._observer.item_dequeued(0.0)
            self._observer.batch_ran(1, inference_s)
        if tracing.enabled():
            tracing.batch_ran(self.name, [tracing.link()], started, ended)
        self._policy.record_batch(1, inference_s)
        self._largest_since_idle = max(self._largest_since_idle, 1)
        (output,) = outputs
        return prepared, ItemResult(output, 0.0, inference_s, 1, started)

    def _alone_done(self, running: asyncio.Future[Any]) -> None:
        if not running.cancelled():
            running.exception()  # retrieved here too: its caller may have left
        self._alone_running = False
        self._running_batch_size = 0
        self._wakeup.set()

    async def _loop(self) -> None:
        while not self._closed:
            if self._alone_running:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            ready_at = self._policy.ready_at()
            if ready_at is None:
                # Abandoned images found while nothing else is queued are counted now, not with a later batch
                # (which a lone request running alone may never form).
                abandoned = self._policy.take_abandoned()
                if abandoned and self._observer:
                    self._observer.items_dropped(DropReason.CLIENT_DISCONNECTED, abandoned)
                self._wakeup.clear()
                if self._on_idle is None or not self._largest_since_idle:
                    await self._wakeup.wait()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=self._idle_after_s)
                if not self._wakeup.is_set() and not self._alone_running and self._policy.reserved == 0:
                    await self._call_on_idle()
                continue
            delay = ready_at - self._clock()
            if delay > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
                continue
            batch = self._policy.take_batch(self._clock())
            self._report_dropped(batch)
            if batch.items:
                await self._run(batch.items)

    async def _call_on_idle(self) -> None:
        assert self._on_idle is not None
        largest, self._largest_since_idle = self._largest_since_idle, 0
        try:
            await self.run_in_thread(partial(self._on_idle, largest))
        except Exception:
            logger.exception("the idle hook of model %s failed", self.name)

    def _report_dropped(self, batch: FormedBatch[P]) -> None:
        for item in batch.expired:
            if not item.waiter.done():
                item.waiter.set_exception(
                    DeadlineExceeded(f"the request deadline passed while the image waited for model {self.name}")
                )
        self._report_queue()
        if self._observer:
            if batch.expired:
                self._observer.items_dropped(DropReason.TIMEOUT, len(batch.expired))
            if batch.abandoned:
                self._observer.items_dropped(DropReason.CLIENT_DISCONNECTED, batch.abandoned)

    async def _run(self, items: list[QueuedItem[P]]) -> None:
        assert self._executor is not None
        started = self._clock()
        if self._observer:
            for item in items:
                self._observer.item_dequeued(started - item.enqueued_at)
        self._running_batch_size = len(items)
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_batch, [item.payload for item in items]
            )
            if len(outputs) != len(items):
                raise RuntimeError(f"run_batch returned {len(outputs)} results for {len(items)} inputs")
        except Exception:
            logger.exception("inference failed for a batch of %d on model %s", len(items), self.name)
            for item in items:
                if not item.waiter.done():
                    item.waiter.set_exception(
                        InferenceFailed(f"inference failed on model {self.name}; see the server log")
                    )
            return
        finally:
            self._running_batch_size = 0
            self._report_queue()  # the batch is done: less to drain
        ended = self._clock()
        inference_s = ended - started
        self._policy.record_batch(len(items), inference_s)
        self._largest_since_idle = max(self._largest_since_idle, len(items))
        if self._observer:
            self._observer.batch_ran(len(items), inference_s)
        if tracing.enabled():
            tracing.batch_ran(self.name, [item.trace for item in items], started, ended)
        for item, output in zip(items, outputs, strict=False):
            if not item.waiter.done():
                item.waiter.set_result(ItemResult(output, started - item.enqueued_at, inference_s, len(items), started))


class _InferenceError(Exception):
    """`run_batch` raised (its cause) inside a lone run, as opposed to the payload's preparation."""


class ImageReservation(Generic[P, R]):
    """Room for one request's images in a batcher, taken before its body is read and carried with it.

    It grows as the request's images are counted, turns into queued items when they are submitted, and gives
    back whatever was not queued when released; as a context manager it is released on every exit path.
    """

    def __init__(self, batcher: DynamicBatcher[P, R]) -> None:
        self._batcher = batcher
        self.count = 0
        """Images held and not yet queued."""

    def grow_to(self, count: int) -> None:
        """Hold room for `count` images in all; `Overloaded` (nothing more held) if there is none."""
        if count > self.count:
            self._batcher._reserve(count - self.count)
            self.count = count

    def submit(self, payloads: Sequence[P], deadline: float, priority: int = 0) -> list[asyncio.Future[ItemResult[R]]]:
        """Queue `payloads` in the reserved room (never refused for room) and release any room left over; under
        load, items of a lower `priority` number run first.

        Raises `ShuttingDown` after the batcher's `close()`. Cancelling a returned future tells the batcher its
        client is gone: the item is dropped before inference."""
        if len(payloads) > self.count:
            self.grow_to(len(payloads))
        if self._batcher._closed:
            self.release()
            raise ShuttingDown(f"model {self._batcher.name} is shutting down")
        futures = self._batcher._enqueue(payloads, deadline, priority)
        self.count -= len(payloads)
        self.release()
        return futures

    def alone(self) -> bool:
        """Whether this request's one image would run at once on an idle model with nothing else in flight: then
        `run_alone` skips the queue, and the hand-offs batching needs."""
        return self.count == 1 and self._batcher._idle_for(reserved=1)

    async def run_alone(self, prepare: Callable[[], tuple[X, P]]) -> tuple[X, ItemResult[R]]:
        """Run `prepare()` (what the request still needs done before inference, such as decoding; it returns
        something for the caller and the payload) and the payload's inference, one after the other in the
        batcher's thread, as a batch of one. Only when `alone()`; raises what `prepare` raises, `InferenceFailed`
        or `ShuttingDown`."""
        return await self._batcher._run_alone(self, prepare)

    def release(self) -> None:
        if self.count:
            self._batcher._policy.release(self.count)
            self.count = 0

    def __enter__(self) -> ImageReservation[P, R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
