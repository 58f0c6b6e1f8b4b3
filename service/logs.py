"""Logging: text or one JSON object per line, every line about a request carrying its request ID, written by a
background thread so that a slow stderr never stalls the event loop.

The request ID lives in a context variable set by the serving gate for the request's task (and copied into the
tasks and threads asyncio starts from it), so every log line about the request carries it without being passed
around. Access lines are the gate's own (`service.access`), with the fields a log stack wants.
"""

from __future__ import annotations

import atexit
import contextvars
import itertools
import json
import logging
import logging.handlers
import os
import queue
import re
import secrets
import sys
import time
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
"""The ID of the request the current task or thread works for."""

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class _RequestIds:
    """New request IDs: a random per-process prefix and a counter, unique across workers and restarts.

    Cheaper than a uuid4 per request (a getrandom call and a UUID object), which showed in the event loop's profile.
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)  # a forked worker must not repeat its parent's IDs

    def reset(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"


_request_ids = _RequestIds()


def request_id_from(given: str | None) -> str:
    """A client's request ID when it is valid (1 to 128 characters of letters, digits and ``._:-``), else a new one."""
    return given if given is not None and _REQUEST_ID.fullmatch(given) else _request_ids.new()


ACCESS_LOGGER = "service.access"
ACCESS_FIELDS = (
    "method",
    "path",
    "status",
    "model",
    "version",
    "images",
    "bytes",
    "latency_ms",
    "timings_ms",
    "client",
    "api_key",
    "protocol",
)
"""What an access line may carry besides time, level and request ID (as `extra` on the record)."""
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(request_suffix)s"


class _RequestContext(logging.Filter):
    """Adds the current request ID to every record (as `request_id`, and as a suffix for the text format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = getattr(record, "request_id", None) or request_id.get()
        record.request_id = current
        record.request_suffix = f" [request {current}]" if current else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request ID, access fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        for field in ACCESS_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


def configure(level: str, log_format: str, *, background: bool = True) -> None:
    """Route every log record (ours, uvicorn's, the libraries') to stderr, through one background writer thread
    unless `background` is False (the worker supervisor, which must stay free of threads to fork workers)."""
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    handler: logging.Handler = writer
    if background:
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        handler = logging.handlers.QueueHandler(records)
        listener = logging.handlers.QueueListener(records, writer, respect_handler_level=False)
        listener.start()
        atexit.register(listener.stop)
    handler.addFilter(_RequestContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own handlers would write around the queue and in another format.
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
