"""Clients for the reliability tests: raw HTTP over sockets, /metrics, and readings of the server process.

Raw sockets see exactly what the server writes and when it closes the connection; `exchange` and `metrics` send
``Connection: close`` so that the server has released the connection (and its file descriptor) by the time they
return; `ProcessProbe` reads memory, open file descriptors, threads and nice values from /proc.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import select
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from tests.integration.conftest import REPO_ROOT, ServerProcess, parse_metrics, poll  # noqa: F401 - poll is for the tests

HANG_LIMIT_S = 60.0
"""Only turns a hang into a failure; no test asserts that anything is fast."""
GRACE_S = 10.0
"""Added to a server deadline for the latest moment its answer may arrive (a guard against hangs, not a timing)."""
EXAMPLES = REPO_ROOT / "examples"
MODEL = "fashion-mnist-resnet20"
"""The bundled model, served when no --model-dir is given."""

SERVER_FLAGS: tuple[str, ...] = ("--no-access-log", *(("--workers", "1") if "workers" in Settings.model_fields else ()))
"""Every server here is one process: the attacks aim at one connection cap, one byte budget and one queue, and
/proc readings of the subprocess are readings of the server itself. (A server that can run several worker
processes splits those limits between them and is started here with one.)"""
HTTP_PARSERS: tuple[str | None, ...] = (
    tuple(parser for parser in ("h11", "httptools") if importlib.util.find_spec(parser) is not None)
    if "http" in Settings.model_fields
    else (None,)
)
"""The HTTP/1.1 parsers the server can be told to use (--http) and has installed; None: the server has one."""


def parser_flags(parser: str | None) -> tuple[str, ...]:
    return () if parser is None else ("--http", parser)


from tests.integration.conftest import MetricSamples as Samples  # noqa: E402

# --- raw HTTP ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    """Lower-case names; the last value of a repeated header."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str | None:
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


def parse_responses(data: bytes) -> list[Response]:
    """Every complete HTTP/1.1 response in `data`, in order (bodies framed by Content-Length); trailing bytes that
    are not a complete response fail the test."""
    responses: list[Response] = []
    rest = data
    while rest:
        head, separator, after = rest.partition(b"\r\n\r\n")
        if not separator:
            pytest.fail(f"incomplete response head after {len(responses)} response(s): {rest[:300]!r}")
        lines = head.decode("latin-1").split("\r\n")
        match = re.match(r"HTTP/1\.[01] (\d{3}) ", lines[0] + " ")
        if not match:
            pytest.fail(f"not an HTTP response: {rest[:300]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(after) < length:
            pytest.fail(f"response body cut short ({len(after)} of {length} bytes): {rest[:300]!r}")
        responses.append(Response(int(match.group(1)), headers, after[:length]))
        rest = after[length:]
    return responses


def connect(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=HANG_LIMIT_S)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


CLOSED_BY_PEER = (errno.ECONNRESET, errno.EPIPE)


def _wait_readable(connection: socket.socket, give_up: float, data: bytes, what: str) -> None:
    left = give_up - time.monotonic()
    if left <= 0 or not select.select([connection], [], [], left)[0]:
        pytest.fail(f"gave up waiting for {what} after {HANG_LIMIT_S:g} s; the server had sent {data[:300]!r}")


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server writes until it closes the connection (with a FIN, or a reset after its answer)."""
    data = b""
    give_up = time.monotonic() + HANG_LIMIT_S
    while True:
        _wait_readable(connection, give_up, data, "the server to close the connection")
        try:
            chunk = connection.recv(65536)
        except OSError as exc:
            if exc.errno in CLOSED_BY_PEER:
                return data
            raise
        if not chunk:
            return data
        data += chunk


def _response_end(data: bytes) -> int | None:
    """Where the first response in `data` ends, once its head and its Content-Length body are all there."""
    head, separator, _ = data.partition(b"\r\n\r\n")
    if not separator:
        return None
    length = re.search(rb"(?im)^content-length:[ \t]*(\d+)", head)
    end = len(head) + len(separator) + (int(length.group(1)) if length else 0)
    return end if len(data) >= end else None


def read_one_response(connection: socket.socket) -> Response:
    """One complete response (head and Content-Length body), without waiting for the connection to close. Takes
    no byte past it from the socket: a pipelined answer that arrived in the same segment is left for the next
    read (reading it here and dropping it made a second answer look missing)."""
    data = b""
    give_up = time.monotonic() + HANG_LIMIT_S
    while True:
        _wait_readable(connection, give_up, data, "a complete response")
        try:
            waiting = connection.recv(65536, socket.MSG_PEEK)
            end = _response_end(data + waiting)
            # What arrived belongs to this response up to its end; all of it when the response is not complete yet.
            chunk = connection.recv(len(waiting) if end is None else end - len(data)) if waiting else b""
        except OSError as exc:
            if exc.errno not in CLOSED_BY_PEER:
                raise
            chunk = b""
        if not chunk:
            pytest.fail(f"the connection closed before a complete response; the server had sent {data[:300]!r}")
        data += chunk
        if _response_end(data) is not None:
            return parse_responses(data)[0]


def request_bytes(
    method: str,
    path: str,
    *,
    body: bytes = b"",
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
    content_length: int | None = None,
) -> bytes:
    """A request head (Host and Content-Length included unless given) followed by `body`."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or content_length is not None:
        lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def exchange(port: int, request: bytes) -> Response:
    """Send one request with ``Connection: close`` and read its answer until the server closes the connection,
    so that the server has released the connection (and its file descriptor) when this returns."""
    head, separator, body = request.partition(b"\r\n\r\n")
    with connect(port) as connection:
        connection.sendall(head + b"\r\nConnection: close" + separator + body)
        data = read_until_closed(connection)
    responses = parse_responses(data)
    assert len(responses) == 1, f"expected one response, got {responses}"
    return responses[0]


BOUNDARY = "reliability-boundary-7f3a"


def multipart_body(files: list[tuple[str, bytes]]) -> bytes:
    """A multipart/form-data body with one part named 'file' per (filename, PNG bytes)."""
    out = b""
    for filename, data in files:
        out += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return out + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def classify_request(files: list[tuple[str, bytes]]) -> bytes:
    return request_bytes("POST", "/v1/classify", body=multipart_body(files), content_type=MULTIPART)


# --- metrics -----------------------------------------------------------------------------------------------------


def metrics(port: int) -> Samples:
    """/metrics as {(sample name, sorted labels): value}, read over a connection the server has closed on return."""
    response = exchange(port, request_bytes("GET", "/metrics"))
    assert response.status == 200, response
    return parse_metrics(response.body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every series of `name` whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (sample, sample_labels), v in samples.items() if sample == name and wanted <= set(sample_labels))


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# --- the server process, from /proc ------------------------------------------------------------------------------


class ProcessProbe:
    """Readings of a live process from /proc: memory, descriptors, threads and their nice values."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.root = Path(f"/proc/{pid}")

    def _status_kib(self, key: str) -> int:
        for line in (self.root / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        pytest.fail(f"/proc/{self.pid}/status has no {key}")

    def rss_bytes(self) -> int:
        return self._status_kib("VmRSS") * 1024

    def peak_rss_bytes(self) -> int:
        """VmHWM: the largest resident set the process has had since it started."""
        return self._status_kib("VmHWM") * 1024

    def open_fds(self) -> int:
        return len(os.listdir(self.root / "fd"))

    def threads(self) -> int:
        return len(os.listdir(self.root / "task"))

    def thread_nices(self) -> dict[int, int]:
        """{thread id: nice value}; nice is field 19 of /proc/PID/task/TID/stat (the 17th after the ')' that ends
        the command name, which may itself hold spaces and parentheses)."""
        nices = {}
        for tid in os.listdir(self.root / "task"):
            try:
                stat = (self.root / "task" / tid / "stat").read_text()
            except FileNotFoundError:  # the thread ended while we listed them
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            nices[int(tid)] = int(fields[16])
        return nices


def probe(server: ServerProcess) -> ProcessProbe:
    assert server.process is not None
    return ProcessProbe(server.process.pid)


MB = 1_000_000
MiB = 1 << 20
