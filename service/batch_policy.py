"""The batch-forming policy: a plain object over a bounded FIFO queue, with no clock and no event loop.

Every decision takes the current time as an argument, so the rules are unit-tested synchronously; the async
loop that drives it is `service.batching.DynamicBatcher`.

- admission, once per image, before any work: a request reserves room for its images before its body is read
  (one image, then one more as each further image is counted), and its reservation turns into queued items when
  its images are decoded, or is released. Room is refused when queued plus reserved images would pass the
  bounded queue or, with ``max_wait_s`` set, when the last of them would not be done within that time, estimated
  from the running batch and the images ahead of it at the measured seconds per image;
- with ``max_delay_s == 0`` a batch is ready as soon as an image is queued; with ``max_delay_s > 0`` when it is
  full or when its first image has waited that long, one fixed deadline from that image's arrival;
- images whose client has gone (their waiter is done) are skipped; images past their deadline are set aside;
- a batch takes the images of the highest priority first (per API key, `auth.Priority`), in arrival order within
  a priority; with no priorities set, plain arrival order. Priority orders the queue, it reserves no room in it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

P = TypeVar("P")
R = TypeVar("R")


class Waiter(Protocol):
    """What the policy needs of a future: whether its client still waits for it."""

    def done(self) -> bool: ...


@dataclass(eq=False)
class QueuedItem(Generic[P]):
    """One unit of work (one image) waiting in a batcher's queue."""

    payload: P
    enqueued_at: float
    deadline: float
    waiter: Any
    """An asyncio.Future (or anything with `done()`); done means the client no longer waits."""
    priority: int = 0
    """Lower runs first; 0 is the default."""
    trace: Any = None
    """Its request's span context, for the batch's span to link to (service.tracing); None when tracing is off."""


@dataclass
class FormedBatch(Generic[P]):
    """What `BatchPolicy.take_batch` decided: items to run now, items to fail as expired, abandoned ones dropped."""

    items: list[QueuedItem[P]] = field(default_factory=list)
    expired: list[QueuedItem[P]] = field(default_factory=list)
    abandoned: int = 0


class BatchPolicy(Generic[P]):
    """The batch-forming rules over a bounded FIFO queue; every decision takes the current time as an argument."""

    # Weight of the newest batch in the running estimate of seconds per image: recent enough to follow a change
    # of load or batch size within a few batches, smooth enough that one slow batch does not slam the door.
    SMOOTHING = 0.2

    def __init__(
        self, *, max_batch_size: int, max_queue_size: int, max_delay_s: float = 0.0, max_wait_s: float | None = None
    ) -> None:
        if max_batch_size < 1 or max_queue_size < 1 or max_delay_s < 0 or (max_wait_s is not None and max_wait_s <= 0):
            raise ValueError("max_batch_size and max_queue_size must be >= 1, max_delay_s >= 0, max_wait_s > 0")
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size
        self.max_delay_s = max_delay_s
        self.max_wait_s = max_wait_s
        self.seconds_per_image: float | None = None
        """Running estimate of inference seconds per image at the batch sizes recently run; None before any."""
        self._queue: deque[QueuedItem[P]] = deque()
        self._abandoned_since_last_batch = 0
        self.reserved = 0
        """Images admitted and not yet queued: their requests are uploading or decoding."""

    def __len__(self) -> int:
        return len(self._queue)

    def _prune_abandoned(self) -> None:
        kept = deque(item for item in self._queue if not item.waiter.done())
        self._abandoned_since_last_batch += len(self._queue) - len(kept)
        self._queue = kept

    def record_batch(self, size: int, seconds: float) -> None:
        """Feed the time a batch of `size` images took into the seconds-per-image estimate."""
        per_image = seconds / max(1, size)
        previous = self.seconds_per_image
        self.seconds_per_image = per_image if previous is None else previous + self.SMOOTHING * (per_image - previous)

    def expected_wait_s(self, count: int, in_flight: int = 0) -> float | None:
        """Estimated seconds until the last of `count` new items finishes, with `in_flight` items running now:
        every image ahead of it and its own, at the measured seconds per image.

        Later arrivals may still join the batch the last one runs in and make it finish later, by at most one
        batch: that is the documented bound (wait bound + one batch). Counting the batch as already full instead
        refused everything behind a running batch whenever a full batch alone takes longer than the bound
        (ResNet-50 with batches of 32 on 2 cores: 1.6 s against 1.5 s), which halved goodput under a burst."""
        if self.seconds_per_image is None:
            return None
        return (in_flight + len(self._queue) + self.reserved + count) * self.seconds_per_image

    def has_room(self, count: int, in_flight: int = 0) -> bool:
        """Whether `count` more items fit beside those queued and reserved (abandoned items do not count): the
        queue has space and, with `max_wait_s` set, they would be done within it. An idle model always takes a
        request whole, so no request is too big to ever run."""
        if len(self._queue) + self.reserved + count > self.max_queue_size:
            self._prune_abandoned()
            if len(self._queue) + self.reserved + count > self.max_queue_size:
                return False
        if self.max_wait_s is None or (not self._queue and not self.reserved and not in_flight):
            return True
        expected = self.expected_wait_s(count, in_flight)
        if expected is not None and expected > self.max_wait_s:
            self._prune_abandoned()
            expected = self.expected_wait_s(count, in_flight)
        return expected is None or expected <= self.max_wait_s

    def reserve(self, count: int, in_flight: int = 0) -> bool:
        """Hold room for `count` more images of a request that is still uploading or decoding; False if none."""
        if not self.has_room(count, in_flight):
            return False
        self.reserved += count
        return True

    def release(self, count: int) -> None:
        """Give back reserved room that will not be queued (the request failed or carried fewer images)."""
        if not 0 <= count <= self.reserved:
            raise ValueError(f"releasing {count} images but {self.reserved} are reserved")
        self.reserved -= count

    def enqueue_reserved(self, items: Sequence[QueuedItem[P]]) -> None:
        """Queue items whose room was reserved: admitted already, so never refused now."""
        self.release(len(items))
        self._queue.extend(items)

    def admit(self, items: Sequence[QueuedItem[P]], in_flight: int = 0) -> bool:
        """Reserve and queue all of `items` or none of them; False when they do not fit."""
        if not self.reserve(len(items), in_flight):
            return False
        self.enqueue_reserved(items)
        return True

    def ready_at(self) -> float | None:
        """When the next batch should be formed (a time on the caller's clock), or None while the queue is empty."""
        while self._queue and self._queue[0].waiter.done():
            self._queue.popleft()
            self._abandoned_since_last_batch += 1
        if not self._queue:
            return None
        first_arrival = self._queue[0].enqueued_at
        if self.max_delay_s == 0 or len(self._queue) >= self.max_batch_size:
            return first_arrival
        return first_arrival + self.max_delay_s

    def take_abandoned(self) -> int:
        """How many abandoned items were dropped since this was last asked (or a batch was last taken)."""
        count, self._abandoned_since_last_batch = self._abandoned_since_last_batch, 0
        return count

    def take_batch(self, now: float) -> FormedBatch[P]:
        """Take up to `max_batch_size` live items, the highest priority first, in arrival order within one; expired
        ones are set aside, abandoned dropped."""
        formed: FormedBatch[P] = FormedBatch(abandoned=self._abandoned_since_last_batch)
        self._abandoned_since_last_batch = 0
        if any(item.priority for item in self._queue):
            self._queue = deque(sorted(self._queue, key=_by_priority))  # stable: arrival order within a priority
        while self._queue and len(formed.items) < self.max_batch_size:
            item = self._queue.popleft()
            if item.waiter.done():
                formed.abandoned += 1
            elif item.deadline <= now:
                formed.expired.append(item)
            else:
                formed.items.append(item)
        return formed

    def take_all(self) -> list[QueuedItem[P]]:
        """Empty the queue, returning everything in it (used when closing)."""
        items = list(self._queue)
        self._queue.clear()
        return items


def _by_priority(item: QueuedItem[Any]) -> int:
    return item.priority
