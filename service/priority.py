"""Thread priorities: the event loop ahead of the threads that decode and infer.

The event loop admits and refuses requests; when ONNX Runtime's threads and the decode pool hold every core, a
refusal waits for CPU behind them. Linux keeps a nice value per thread, and a thread inherits its creator's, so
running the decode pool, the batcher threads and the creation of each ONNX Runtime session (whose own thread
pool is created then) at a higher nice value lets the loop run first. Raising one's own nice value needs no
privilege; where it fails (another OS), threads keep the default priority.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


def lower_current_thread(nice: int) -> None:
    """Raise this thread's nice value by `nice` (0: leave it)."""
    if nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except (AttributeError, OSError) as exc:  # not Linux, or a sandbox that forbids it
        logger.warning("cannot lower the priority of worker threads (%s); they keep the event loop's", exc)


def thread_initializer(nice: int) -> Callable[[], None]:
    """An `initializer` for a thread pool whose threads run at `nice`."""
    return lambda: lower_current_thread(nice)


def call_in_lowered_thread(function: Callable[[], T], nice: int) -> T:
    """Call `function` in a new thread lowered by `nice` and wait for it (threads it creates inherit the value)."""
    outcome: Future[T] = Future()

    def run() -> None:
        lower_current_thread(nice)
        try:
            outcome.set_result(function())
        except BaseException as exc:  # handed to the caller
            outcome.set_exception(exc)

    thread = threading.Thread(target=run, name="lowered")
    thread.start()
    thread.join()
    return outcome.result()
