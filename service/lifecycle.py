"""The server's phase (starting, ready, draining, stopped) and its count of requests in flight.

Readiness, the refusal of new requests while draining, and the SIGTERM drain all read this one object.
"""

from __future__ import annotations

import asyncio
import os
from enum import StrEnum
from pathlib import Path

from service import peer_readiness


class Phase(StrEnum):
    STARTING = "starting"
    """Models are loading or warming up; /readyz answers 503."""
    READY = "ready"
    DRAINING = "draining"
    """SIGTERM arrived: /readyz answers 503 and new requests are refused, in-flight ones finish."""
    STOPPED = "stopped"


class Lifecycle:
    """Phase plus in-flight request accounting; used from the event loop only."""

    def __init__(self, workers_folder: Path | None = None) -> None:
        """`workers_folder`: the folder the worker supervisor shares with its workers (None when serving alone)."""
        self._workers_folder = workers_folder
        self.retiring = False
        """This worker leaves a pool that goes on serving (service.workers): answers close their connections, so
        that clients reconnect to the others; nothing is refused."""
        self.phase = Phase.STARTING
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def ready_everywhere(self) -> bool:
        """Ready, and no other worker process that takes connections is still warming up (service.peer_readiness):
        what the readiness probes say."""
        if not self.ready:
            return False
        return self._workers_folder is None or not peer_readiness.others_warming(self._workers_folder, os.getpid())

    @property
    def accepting(self) -> bool:
        """Whether new requests are let in (refused only while draining or stopped)."""
        return self.phase in (Phase.STARTING, Phase.READY)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def mark_ready(self) -> None:
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY
        self._clear_warming_mark()

    def begin_drain(self) -> None:
        """Stop admitting new requests; idempotent."""
        if self.phase in (Phase.STARTING, Phase.READY):
            self.phase = Phase.DRAINING
        self._clear_warming_mark()

    def mark_stopped(self) -> None:
        self.phase = Phase.STOPPED
        self._clear_warming_mark()

    def _clear_warming_mark(self) -> None:
        if self._workers_folder is not None:
            peer_readiness.clear_mark(self._workers_folder, os.getpid())

    def request_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False if `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
        except TimeoutError:
            return False
        return True
