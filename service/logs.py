"""Logging: text or one JSON object per line, every line about a request carrying its request ID, written by a
background thread so that a slow stderr never stalls the event loop.

The request ID lives in a context variable set by the serving gate for the request's task (and copied into the
tasks and threads asyncio starts from it), so every log line about the request carries it without being passed
around. Access lines are the gate's own (`service.access`), with the fields a log stack wants.

Everything else that writes to the log stream goes through logging too, so that JSON mode never shows a line that
is not JSON: Python warnings (numpy's RuntimeWarning, ...) are captured (logger ``py.warnings``), and in JSON mode
the process's file descriptor 2 becomes a pipe whose lines a thread wraps into log records (logger ``stderr``,
level from the line's own marker): what gRPC core and ONNX Runtime write from C++, and anything else written
straight to stderr. Their own log levels follow ``--log-level`` as far as they have one (``GRPC_VERBOSITY``, ONNX
Runtime's default logger severity).
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
import threading
import time
from collections.abc import Callable
from typing import IO, Any

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


_GRPC_VERBOSITY = {"critical": "NONE", "error": "ERROR", "warning": "ERROR", "info": "ERROR", "debug": "INFO"}
"""gRPC core's log level for ours: its INFO is a trace of its internals, so only our debug shows it."""
_ORT_SEVERITY = {"critical": 4, "error": 3, "warning": 2, "info": 2, "debug": 1}
"""ONNX Runtime's logger severity (0 verbose ... 4 fatal) for ours."""
_NATIVE_LEVEL = re.compile(r"\[?(?P<letter>[VDIWEF])[:\d]")
"""The severity a native library puts first: gRPC core (absl: ``E1202 20:46:41.12 ...``), ONNX Runtime
(``[W:onnxruntime:...]``)."""
_LETTER_LEVELS = {"V": logging.DEBUG, "D": logging.DEBUG, "I": logging.INFO, "W": logging.WARNING}
STDERR_LOGGER = "stderr"
_TERMINAL_COLOURS = re.compile(r"\x1b\[[0-9;]*m")
"""ONNX Runtime colours its lines for a terminal; a log stack wants the text."""


def native_level(line: str) -> int:
    """The logging level of a line a native library wrote to stderr: its own marker, else WARNING."""
    found = _NATIVE_LEVEL.match(line)
    if found is None:
        return logging.WARNING
    return _LETTER_LEVELS.get(found.group("letter"), logging.ERROR)


class _StderrLines:
    """File descriptor 2 made a pipe: a thread reads its lines and logs each one (logger ``stderr``), so that C++
    libraries and stray writes reach the log stream in its format. The log stream itself writes to a duplicate of
    the original stderr."""

    def __init__(self) -> None:
        self.original = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._read = read
        self._logger = logging.getLogger(STDERR_LOGGER)
        self._thread = threading.Thread(target=self._pump, name="stderr-lines", daemon=True)
        self._thread.start()

    def stream(self) -> IO[str]:
        return os.fdopen(os.dup(self.original), "w", buffering=1, encoding="utf-8", errors="backslashreplace")

    def _pump(self) -> None:
        with os.fdopen(self._read, "rb") as lines:
            for raw in lines:
                line = _TERMINAL_COLOURS.sub("", raw.decode("utf-8", errors="backslashreplace")).rstrip("\r\n")
                if line.strip():
                    self._logger.log(native_level(line), "%s", line)

    def close(self, timeout_s: float = 2.0) -> None:
        """Give fd 2 back to the original stderr; the pipe ends, and what it still held is logged first."""
        sys.stderr.flush()
        os.dup2(self.original, 2)
        self._thread.join(timeout_s)


def _native_log_levels(level: str) -> None:
    # Read by gRPC core when it starts, which is after this (the server imports grpc later); an operator's own wins.
    os.environ.setdefault("GRPC_VERBOSITY", _GRPC_VERBOSITY.get(level, "ERROR"))
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a dependency; tools may run without it
        return
    onnxruntime.set_default_logger_severity(_ORT_SEVERITY.get(level, 2))


_on_stop: list[Callable[[], None]] = []


def stop() -> None:
    """Write out what the background writer still holds, and stop it. Runs at exit; a forked worker process calls it
    itself, since multiprocessing ends a child with os._exit, which skips atexit (its last lines, such as why it
    could not start, were lost when the writer thread had not reached them)."""
    while _on_stop:
        _on_stop.pop()()


def configure(level: str, log_format: str, *, background: bool = True) -> None:
    """Route every log record (ours, uvicorn's, the libraries', Python warnings) to stderr, through one background
    writer thread unless `background` is False (the worker supervisor, which must stay free of threads and native
    libraries to fork workers: each worker configures its own). In JSON mode with `background`, file descriptor 2
    itself is wrapped as well (`_StderrLines`)."""
    logging.captureWarnings(True)
    stream: IO[str] = sys.stderr
    native_lines: _StderrLines | None = None
    if background:
        _native_log_levels(level.lower())
        if log_format == "json":
            native_lines = _StderrLines()
            stream = native_lines.stream()
    writer = logging.StreamHandler(stream)
    writer.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    handler: logging.Handler = writer
    if background:
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        handler = logging.handlers.QueueHandler(records)
        listener = logging.handlers.QueueListener(records, writer, respect_handler_level=False)
        listener.start()
        _on_stop.append(listener.stop)
        if native_lines is not None:
            _on_stop.append(native_lines.close)  # runs first (last in, first out), the listener then
        atexit.register(stop)
    handler.addFilter(_RequestContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own handlers would write around the queue and in another format.
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
