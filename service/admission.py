"""One admission per request, taken once at the edge before any of its body is read.

The data plane makes an `Admission` for each request it has found a model for; the front end's body reader calls
it once, with the declared body size, before it reads anything. That returns the request's `Ticket`, what it
carries from then on: room in its model's batcher for its images (one at first, growing as they are counted) and
its share of the process-wide budget of upload bytes in flight. Anything that does not fit is refused at once
with 503 and Retry-After, before it costs a decode; whatever the ticket holds is given back on every exit path
(`Admission.close`, or the ticket as a context manager).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from service.errors import Overloaded, TooManyFiles

if TYPE_CHECKING:
    import numpy as np

    from service.batching import ImageReservation
    from service.contract import ServableModel


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

    def __init__(
        self,
        model: ServableModel,
        *,
        received_at: float,
        deadline: float,
        images: ImageReservation[np.ndarray, np.ndarray],
        budget: ByteBudget,
        max_images: int,
        max_input_values: int,
    ) -> None:
        self.model = model
        self.received_at = received_at
        self.deadline = deadline
        self.images = images
        self.max_input_values = max_input_values
        """Most numbers the request's inputs may hold (its model's largest request): a bound for parsers that
        would make a Python object of each one."""
        self._budget = budget
        self._max_images = max_images
        self._held_bytes = 0
        self._counted_bytes = 0
        self.image_count = 0
        """Images counted so far."""

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
            raise TooManyFiles(
                f"{total} images in one request; the limit is {self._max_images}, send at most {self._max_images}"
            )
        self.images.grow_to(total)
        self.image_count = max(self.image_count, total)

    def close(self) -> None:
        self.images.release()
        self._budget.give(self._held_bytes)
        self._held_bytes = 0

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Admission:
    """A request's admission, not yet taken: calling it with the declared body size takes it (once) and returns the
    ticket; `close()` releases whatever the ticket holds, whether or not it was taken."""

    def __init__(
        self,
        model: ServableModel,
        *,
        received_at: float,
        deadline: float,
        budget: ByteBudget,
        max_images: int,
        max_input_values: int,
        on_admitted: Callable[[], None] | None = None,
    ) -> None:
        self._model = model
        self._received_at = received_at
        self._deadline = deadline
        self._budget = budget
        self._max_images = max_images
        self._max_input_values = max_input_values
        self._on_admitted = on_admitted
        self.ticket: Ticket | None = None
        self._closed = False
        model.request_started()  # from the moment the request is resolved to it, the version stays loaded

    def __call__(self, declared_bytes: int | None) -> Ticket:
        """Room for one image in the model's queue and wait bound, and the declared body size in the byte budget;
        `Overloaded` or `ShuttingDown` (nothing held) when there is none."""
        if self.ticket is not None:
            raise RuntimeError("a request is admitted once")
        ticket = Ticket(
            self._model,
            received_at=self._received_at,
            deadline=self._deadline,
            images=self._model.reserve(1),
            budget=self._budget,
            max_images=self._max_images,
            max_input_values=self._max_input_values,
        )
        try:
            if declared_bytes:
                ticket.expect_bytes(declared_bytes)
        except BaseException:
            ticket.close()
            raise
        self.ticket = ticket
        if self._on_admitted is not None:
            self._on_admitted()
        return ticket

    def close(self) -> None:
        if self.ticket is not None:
            self.ticket.close()
        if not self._closed:
            self._closed = True
            self._model.request_finished()
