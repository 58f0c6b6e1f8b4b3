"""One admission per request, taken once at the edge before any of its body is read.

A `Ticket` is what a request carries from then on: room in its model's batcher for its images (one at first,
growing as its upload is counted) and its share of the process-wide budget of upload bytes in flight. Anything
that does not fit is refused at once with 503 and Retry-After, before it costs a decode; whatever the ticket holds
is given back on every exit path (it is a context manager).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from service.batching import ImageReservation
from service.errors import Overloaded, TooManyFiles

if TYPE_CHECKING:
    from service.registry import ServedModel


class ByteBudget:
    """Upload bytes held by requests in flight, across every model and front end of the process."""

    def __init__(self, limit_bytes: int, on_change: Callable[[int], None] | None = None) -> None:
        self.limit_bytes = limit_bytes
        self.in_use = 0
        self._on_change = on_change

    def take(self, count: int) -> None:
        if self.in_use + count > self.limit_bytes:
            raise Overloaded(
                f"the server holds {self.in_use} bytes of uploads in flight and this would pass its limit of "
                f"{self.limit_bytes}; retry later"
            )
        self.in_use += count
        if self._on_change:
            self._on_change(self.in_use)

    def give(self, count: int) -> None:
        self.in_use -= count
        if self._on_change and count:
            self._on_change(self.in_use)


class Ticket:
    """A request's admission: its model, k and deadline, and what it holds (image room and upload bytes, released
    together by `close()`)."""

    def __init__(self, model: ServedModel, *, top_k: int, received_at: float, deadline: float,
                 images: ImageReservation, budget: ByteBudget, max_images: int) -> None:
        self.model = model
        self.top_k = top_k
        self.received_at = received_at
        self.deadline = deadline
        self.images = images
        self._budget = budget
        self._max_images = max_images
        self._held_bytes = 0
        self._counted_bytes = 0

    def expect_bytes(self, declared: int) -> None:
        """Take a declared body size up front, so that a request the budget cannot hold is refused unread."""
        if declared > self._held_bytes:
            self._budget.take(declared - self._held_bytes)
            self._held_bytes = declared

    def count_bytes(self, count: int) -> None:
        """Count upload bytes as they arrive (beyond what was declared, they are taken from the budget)."""
        self._counted_bytes += count
        if self._counted_bytes > self._held_bytes:
            self._budget.take(self._counted_bytes - self._held_bytes)
            self._held_bytes = self._counted_bytes

    def count_images(self, total: int) -> None:
        """The request carries at least `total` images: refuse it (413 or 503) unless they fit."""
        if total > self._max_images:
            raise TooManyFiles(f"more than {self._max_images} images in one request; send at most {self._max_images}")
        self.images.grow_to(total)

    def close(self) -> None:
        self.images.release()
        self._budget.give(self._held_bytes)
        self._held_bytes = 0

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
