"""The server's `Lifecycle`: its phases and what they let in (ready, accepting), the count of requests in flight,
and `wait_idle`, which the SIGTERM drain waits on."""

from __future__ import annotations

import asyncio

from service.lifecycle import Lifecycle, Phase


def test_a_new_server_is_starting_accepts_requests_and_is_not_ready():
    lifecycle = Lifecycle()
    assert lifecycle.phase is Phase.STARTING
    assert lifecycle.accepting and not lifecycle.ready
    assert lifecycle.in_flight == 0 and not lifecycle.retiring


def test_ready_once_marked_and_only_from_starting():
    lifecycle = Lifecycle()
    lifecycle.mark_ready()
    assert lifecycle.phase is Phase.READY and lifecycle.ready and lifecycle.accepting
    lifecycle.begin_drain()
    lifecycle.mark_ready()  # a draining server does not become ready again
    assert lifecycle.phase is Phase.DRAINING and not lifecycle.ready


def test_draining_refuses_new_requests_and_is_not_ready():
    lifecycle = Lifecycle()
    lifecycle.mark_ready()
    lifecycle.begin_drain()
    assert lifecycle.phase is Phase.DRAINING
    assert not lifecycle.accepting and not lifecycle.ready


def test_a_server_still_starting_can_drain():
    lifecycle = Lifecycle()
    lifecycle.begin_drain()
    assert lifecycle.phase is Phase.DRAINING and not lifecycle.accepting


def test_begin_drain_is_idempotent_and_does_not_undo_a_stop():
    lifecycle = Lifecycle()
    lifecycle.mark_ready()
    lifecycle.begin_drain()
    lifecycle.begin_drain()
    assert lifecycle.phase is Phase.DRAINING
    lifecycle.mark_stopped()
    lifecycle.begin_drain()
    assert lifecycle.phase is Phase.STOPPED
    assert not lifecycle.accepting and not lifecycle.ready


def test_phases_are_named_as_shown_to_clients():
    assert [str(phase) for phase in Phase] == ["starting", "ready", "draining", "stopped"]


def test_requests_in_flight_are_counted():
    lifecycle = Lifecycle()
    lifecycle.request_started()
    lifecycle.request_started()
    assert lifecycle.in_flight == 2
    lifecycle.request_finished()
    assert lifecycle.in_flight == 1
    lifecycle.request_finished()
    assert lifecycle.in_flight == 0


def test_wait_idle_is_true_at_once_when_nothing_is_in_flight():
    async def scenario() -> bool:
        lifecycle = Lifecycle()
        lifecycle.request_started()
        lifecycle.request_finished()
        return await lifecycle.wait_idle(timeout_s=60)

    assert asyncio.run(scenario()) is True


def test_wait_idle_is_false_when_a_request_stays_in_flight_past_the_timeout():
    async def scenario() -> tuple[bool, int]:
        lifecycle = Lifecycle()
        lifecycle.request_started()
        idle = await lifecycle.wait_idle(timeout_s=0.01)
        return idle, lifecycle.in_flight

    assert asyncio.run(scenario()) == (False, 1)


def test_wait_idle_returns_when_the_last_request_finishes():
    async def scenario() -> tuple[bool, int]:
        lifecycle = Lifecycle()
        lifecycle.request_started()
        lifecycle.request_started()
        waiting = asyncio.create_task(lifecycle.wait_idle(timeout_s=60))
        await asyncio.sleep(0)  # the waiter is waiting
        lifecycle.request_finished()
        await asyncio.sleep(0)
        still_waiting = not waiting.done()
        lifecycle.request_finished()
        idle = await waiting
        assert still_waiting, "wait_idle returned while a request was still in flight"
        return idle, lifecycle.in_flight

    assert asyncio.run(scenario()) == (True, 0)
