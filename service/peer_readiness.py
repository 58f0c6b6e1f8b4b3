"""Readiness across worker processes: a worker that takes connections before it is warm keeps the others' /readyz
at 503.

The worker supervisor (service.workers) lets the first worker take connections from the start, so that probes and
scrapes are answered while the models load, and the others only once warm. A request that follows a 200 from
/readyz may reach any worker, so no worker may say ready while one taking connections still warms up (it would
answer that request 503 not_ready). The supervisor marks such a worker in the workers' shared folder before it starts
the others; the worker takes its mark away once ready, or as it drains or stops; a mark of a worker that died is
ignored. Imports nothing heavy: the supervisor uses it.
"""

from __future__ import annotations

import os
from pathlib import Path

_FOLDER = "warming"


def mark_warming(shared: Path, pid: int) -> None:
    """Worker `pid` takes connections before it is warm."""
    folder = shared / _FOLDER
    folder.mkdir(exist_ok=True)
    (folder / str(pid)).touch()


def clear_mark(shared: Path, pid: int) -> None:
    (shared / _FOLDER / str(pid)).unlink(missing_ok=True)


def others_warming(shared: Path, pid: int) -> bool:
    """Whether a live worker other than `pid` takes connections and is not warm yet."""
    try:
        marks = list((shared / _FOLDER).iterdir())
    except FileNotFoundError:
        return False
    for mark in marks:
        if not mark.name.isdigit() or int(mark.name) == pid:
            continue
        try:
            os.kill(int(mark.name), 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        return True
    return False
