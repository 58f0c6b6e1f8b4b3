"""Admission at the edge: the process-wide `ByteBudget` of upload bytes, a request's `Ticket` (its room in the
model's real `DynamicBatcher` and its share of the budget, given back by `close()`), and `Admission`, which takes
the ticket once with the declared body size and holds nothing when it refuses."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from service.admission import Admission, ByteBudget, Ticket
from service.batching import DynamicBatcher, ImageReservation
from service.errors import Overloaded, TooManyFiles

FAR = 1e9  # a deadline that never passes


class StandInModel:
    """Just what admission asks of a served model: its name and room in its (real) batcher."""

    def __init__(self, name: str = "toy", *, max_queue_size: int = 8) -> None:
        self.holds = 0
        """Requests resolved to this model that have not ended."""
        self.name = name
        self.version = "1"
        self.batcher: DynamicBatcher[object, object] = DynamicBatcher(
            self.run_batch, name=name, max_batch_size=4, max_queue_size=max_queue_size
        )

    @staticmethod
    def run_batch(payloads: list[object]) -> list[object]:
        return payloads

    def reserve(self, count: int) -> ImageReservation[object, object]:
        return self.batcher.reserve(count)

    def request_started(self) -> None:
        self.holds += 1

    def request_finished(self) -> None:
        self.holds -= 1


def ticket_for(model: StandInModel, budget: ByteBudget, *, max_images: int = 4, max_input_values: int = 1000) -> Ticket:
    return Ticket(
        model,
        received_at=0.0,
        deadline=FAR,
        images=model.reserve(1),
        budget=budget,
        max_images=max_images,
        max_input_values=max_input_values,
    )


def admission_for(
    model: StandInModel, budget: ByteBudget, *, max_images: int = 4, on_admitted: Callable[[], None] | None = None
) -> Admission:
    return Admission(
        model,
        received_at=1.0,
        deadline=FAR,
        budget=budget,
        max_images=max_images,
        max_input_values=1000,
        on_admitted=on_admitted,
    )


# --- ByteBudget ---------------------------------------------------------------------------------------------------


def test_budget_takes_and_gives_back_bytes():
    budget = ByteBudget(100)
    budget.take(60)
    budget.take(40)
    assert budget.in_use == 100
    budget.give(70)
    assert budget.in_use == 30


def test_budget_refuses_what_would_pass_its_limit_naming_the_numbers_and_takes_nothing():
    budget = ByteBudget(100)
    budget.take(60)
    with pytest.raises(Overloaded) as refused:
        budget.take(41)
    assert "60 bytes" in refused.value.message and "limit of 100" in refused.value.message
    assert refused.value.status_code == 503 and refused.value.headers["Retry-After"] == "1"
    assert budget.in_use == 60
    budget.take(40)  # exactly the limit fits
    assert budget.in_use == 100


def test_budget_reports_each_change_of_bytes_in_use():
    seen: list[int] = []
    budget = ByteBudget(100, on_change=seen.append)
    budget.take(10)
    budget.take(5)
    budget.give(15)
    budget.give(0)  # nothing changed: not reported
    with pytest.raises(Overloaded):
        budget.take(101)  # refused: nothing changed either
    assert seen == [10, 15, 0]


# --- Ticket -------------------------------------------------------------------------------------------------------


def test_ticket_holds_one_image_of_room_and_no_bytes_when_made():
    model, budget = StandInModel(), ByteBudget(1000)
    ticket = ticket_for(model, budget)
    assert model.batcher.reserved == 1
    assert budget.in_use == 0
    assert ticket.image_count == 0 and ticket.model is model and ticket.deadline == FAR


def test_ticket_counts_only_the_bytes_beyond_what_was_declared():
    model, budget = StandInModel(), ByteBudget(1000)
    ticket = ticket_for(model, budget)
    ticket.expect_bytes(100)
    assert budget.in_use == 100
    ticket.count_bytes(60)
    ticket.count_bytes(40)
    assert budget.in_use == 100  # within what was declared: already held
    ticket.count_bytes(25)
    assert budget.in_use == 125  # the excess is taken as it arrives
    ticket.expect_bytes(50)  # declaring less later gives nothing back and takes nothing
    assert budget.in_use == 125


def test_ticket_refuses_bytes_the_budget_cannot_hold():
    model, budget = StandInModel(), ByteBudget(100)
    ticket = ticket_for(model, budget)
    ticket.count_bytes(80)
    with pytest.raises(Overloaded):
        ticket.count_bytes(30)
    with pytest.raises(Overloaded):
        ticket_for(model, budget).expect_bytes(21)
    assert budget.in_use == 80


def test_ticket_grows_its_batcher_room_as_images_are_counted():
    model, budget = StandInModel(), ByteBudget(1000)
    ticket = ticket_for(model, budget, max_images=4)
    ticket.count_images(3)
    assert ticket.image_count == 3 and model.batcher.reserved == 3
    ticket.count_images(2)  # fewer than already counted: nothing changes
    assert ticket.image_count == 3 and model.batcher.reserved == 3


def test_ticket_refuses_more_images_than_a_request_may_carry():
    model, budget = StandInModel(), ByteBudget(1000)
    ticket = ticket_for(model, budget, max_images=2)
    ticket.count_images(2)
    with pytest.raises(TooManyFiles) as refused:
        ticket.count_images(3)
    assert refused.value.status_code == 413
    assert "3 images" in refused.value.message and "limit is 2" in refused.value.message
    assert ticket.image_count == 2 and model.batcher.reserved == 2


def test_ticket_refuses_images_its_batcher_has_no_room_for():
    model, budget = StandInModel(max_queue_size=3), ByteBudget(1000)
    ticket = ticket_for(model, budget, max_images=8)
    with pytest.raises(Overloaded) as refused:
        ticket.count_images(4)
    assert "model toy is overloaded" in refused.value.message
    assert ticket.image_count == 0 and model.batcher.reserved == 1


def test_ticket_close_gives_everything_back_and_is_safe_twice():
    changes: list[int] = []
    model, budget = StandInModel(), ByteBudget(1000, on_change=changes.append)
    ticket = ticket_for(model, budget)
    ticket.expect_bytes(100)
    ticket.count_bytes(150)
    ticket.count_images(3)
    ticket.close()
    assert model.batcher.reserved == 0 and budget.in_use == 0
    ticket.close()
    assert model.batcher.reserved == 0 and budget.in_use == 0
    assert changes == [100, 150, 0]  # the second close gives nothing back again


def test_ticket_as_a_context_manager_is_closed_on_an_error():
    model, budget = StandInModel(), ByteBudget(1000)

    def upload() -> None:
        with ticket_for(model, budget, max_images=1) as ticket:
            ticket.expect_bytes(10)
            ticket.count_images(2)

    with pytest.raises(TooManyFiles):
        upload()
    assert model.batcher.reserved == 0 and budget.in_use == 0


# --- Admission ----------------------------------------------------------------------------------------------------


def test_admission_called_once_returns_a_ticket_holding_the_declared_size():
    admitted: list[None] = []
    model, budget = StandInModel(), ByteBudget(1000)
    admission = admission_for(model, budget, max_images=3, on_admitted=lambda: admitted.append(None))
    ticket = admission(200)
    assert isinstance(ticket, Ticket) and admission.ticket is ticket
    assert ticket.model is model and ticket.received_at == 1.0
    assert budget.in_use == 200 and model.batcher.reserved == 1
    assert admitted == [None]
    with pytest.raises(TooManyFiles):
        ticket.count_images(4)  # the admission's image limit reached the ticket


def test_admission_is_taken_once():
    admitted: list[None] = []
    model, budget = StandInModel(), ByteBudget(1000)
    admission = admission_for(model, budget, on_admitted=lambda: admitted.append(None))
    admission(10)
    with pytest.raises(RuntimeError, match="admitted once"):
        admission(10)
    assert budget.in_use == 10 and model.batcher.reserved == 1
    assert admitted == [None]


@pytest.mark.parametrize("declared", [None, 0])
def test_admission_without_a_declared_size_holds_no_bytes(declared):
    model, budget = StandInModel(), ByteBudget(1000)
    admission_for(model, budget)(declared)
    assert budget.in_use == 0 and model.batcher.reserved == 1


def test_admission_over_the_byte_budget_refuses_and_holds_nothing():
    admitted: list[None] = []
    model, budget = StandInModel(), ByteBudget(100)
    budget.take(50)
    admission = admission_for(model, budget, on_admitted=lambda: admitted.append(None))
    with pytest.raises(Overloaded):
        admission(51)
    assert admission.ticket is None
    assert budget.in_use == 50 and model.batcher.reserved == 0
    assert admitted == []
    admission.close()
    assert budget.in_use == 50 and model.batcher.reserved == 0


def test_admission_with_a_full_queue_refuses_and_holds_nothing():
    model, budget = StandInModel(max_queue_size=1), ByteBudget(1000)
    first = admission_for(model, budget)
    first(10)
    second = admission_for(model, budget)
    with pytest.raises(Overloaded, match="overloaded"):
        second(10)
    assert second.ticket is None
    assert budget.in_use == 10 and model.batcher.reserved == 1
    first.close()
    assert budget.in_use == 0 and model.batcher.reserved == 0


def test_admission_close_without_a_ticket_is_fine():
    model, budget = StandInModel(), ByteBudget(1000)
    admission = admission_for(model, budget)
    admission.close()
    assert admission.ticket is None and budget.in_use == 0 and model.batcher.reserved == 0


def test_admission_close_gives_back_what_its_ticket_holds():
    model, budget = StandInModel(), ByteBudget(1000)
    admission = admission_for(model, budget)
    ticket = admission(100)
    ticket.count_bytes(300)
    ticket.count_images(2)
    assert budget.in_use == 300 and model.batcher.reserved == 2
    admission.close()
    assert budget.in_use == 0 and model.batcher.reserved == 0
