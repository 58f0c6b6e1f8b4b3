"""Request receipt deadlines, framing checks and a connection cap, at the HTTP protocol level.

ASGI middleware runs only once a request's head is parsed, and uvicorn's keep-alive timer is reset by every
byte, so a client that sends its head or body one byte a second is never cut off there. `guarded_protocol`
wraps uvicorn's protocol class (h11 or httptools, the same way) so that each connection:

- gets its request head within `header_timeout_s` of the request's first byte (or of the connection opening),
  and the whole body within `body_timeout_s` of the request's first byte, else 408 and close (Go's
  ReadHeaderTimeout; nginx's client_header_timeout and client_body_timeout);
- is refused with 503 and closed at once when `max_connections` are already open, before it can hold a file
  descriptor idle;
- is refused before the parser or the app sees the bytes when its framing is hostile (`http_framing`):
  Content-Length with Transfer-Encoding (400), a Transfer-Encoding not ending in a single chunked (400) or with
  a coding we do not implement (501), a chunk declaring more than the upload limit (413), an oversized head (431).

Every refusal writes one JSON error (the shape of `service.errors.error_body`) with ``Connection: close`` and
closes the connection; what it refused is counted by the `observer`.

Closing a connection whose client may still be sending (a refusal, or an answer sent before the whole body
arrived) is a lingering close, as nginx and Apache do it: the server sends its answer and a FIN, then reads and
discards what still arrives, until the client closes, `LINGER_S` pass or an upload limit's worth of bytes came.
A plain close with unread bytes makes the kernel send a reset, which destroys the answer on its way: the client
sees "connection reset" where it should have read a 503 and its Retry-After.

Over TLS (`limits.tls_handshake_timeout_s` set) the event loop does the handshake before uvicorn's protocol sees the
connection, but it creates the protocol as it accepts: from then until the handshake ends (or its deadline passes,
when the loop aborts it) the connection counts in `max_connections`, so that clients that never finish a handshake
cost what clients that never finish a request head cost. TLS has no half-close (no `write_eof`): there the close
is TLS's own, which sends close_notify and reads and discards what still arrives until the client closes or the
listener's shutdown deadline passes (`service.server` sets it to `LINGER_S`).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol, cast

from service.errors import ConnectionRefusal, error_body
from service.http_framing import BodyComplete, FramingViolation, HeadComplete, RequestFramingScanner

REFUSAL_EXTENSION = "resnet_serve.refused"
"""Scope extension set on a request the guard refused while the app was reading it: {"status", "reason"}."""
BODY_RECEIVED_EXTENSION = "resnet_serve.body_received"
"""Scope extension on every request: a callable that says whether the request's whole body has reached the server
(read by the app or not). An answer sent before the app read the body need not close the connection when it has:
nothing more of that request will arrive, and a client of a burst keeps its connection instead of paying (and
making the server pay) for a new one after each refusal."""
LINGER_S = 2.0
"""Longest a closed connection keeps reading and discarding what its client still sends (see above)."""
_CODES = {
    400: "malformed_request",
    408: "request_timeout",
    413: "upload_too_large",
    431: "headers_too_large",
    501: "not_implemented",
    503: "too_many_connections",
}


@dataclass(frozen=True)
class ReceiptLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    max_head_bytes: int
    max_body_bytes: int
    """A chunked body declaring more than this is refused before its data arrives (the upload limit)."""
    tls_handshake_timeout_s: float | None = None
    """With TLS: the event loop aborts a handshake not done within this many seconds; until then it counts as a
    connection. None: plain HTTP."""


class PendingHandshakes:
    """TLS connections accepted whose handshake is under way, for the connection cap.

    Neither loop reliably tells the protocol that a handshake failed or that its client left before finishing it
    (uvloop reports a lost connection only when the deadline aborts it), so a handshake counts from its protocol's
    creation until its connection is made, and at most until its deadline, by which the loop has closed it."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._started: dict[object, float] = {}
        """Protocol -> when its connection was accepted; in that order (monotonic times only grow)."""

    def begin(self, protocol: object) -> None:
        self._started[protocol] = time.monotonic()

    def end(self, protocol: object) -> None:
        self._started.pop(protocol, None)

    def __len__(self) -> int:
        aborted_before = time.monotonic() - self._timeout_s
        for protocol, started in list(self._started.items()):
            if started > aborted_before:
                break
            del self._started[protocol]
        return len(self._started)


class ConnectionObserver(Protocol):
    """Where the guard reports: connections opening and closing, and each one it refused and why."""

    def connection_opened(self) -> None: ...

    def connection_closed(self) -> None: ...

    def count_connection_refused(self, reason: ConnectionRefusal) -> None: ...


def refusal_bytes(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection."""
    error = error_body(status, _CODES.get(status, "bad_request"), message)
    body = json.dumps(error, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    )
    if status == 503:
        head += "retry-after: 1\r\n"
    return head.encode("latin-1") + b"\r\n" + body


class _LingeringCloseTransport:
    """The transport as uvicorn sees it: everything passes through, but `close()` asks the protocol first, and
    small writes made in one turn of the event loop leave as one.

    uvicorn writes a response's head and its body separately, two system calls where one does: on a loopback or
    a busy server each costs as much as the rest of a refusal's sending. Writes are gathered until the end of the
    loop's current turn (`call_soon`), so a head and a body written back to back go out together; a write that
    would gather more than `COALESCE_BYTES` goes out at once, after what was gathered, so large bodies are never
    copied. Closing, `write_eof` and the buffer size uvicorn's flow control reads all count what is gathered."""

    COALESCE_BYTES = 64 * 1024

    def __init__(self, transport: asyncio.Transport, close: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._close = close
        self._loop = loop
        self._gathered: list[bytes] = []
        self._gathered_bytes = 0
        self.close_requested = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._gathered_bytes + len(data) > self.COALESCE_BYTES:
            self.flush()
            self._transport.write(data)
            return
        if not self._gathered:
            self._loop.call_soon(self.flush)
        self._gathered.append(bytes(data))
        self._gathered_bytes += len(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Write what was gathered now (a no-op when nothing is)."""
        if not self._gathered:
            return
        data = self._gathered[0] if len(self._gathered) == 1 else b"".join(self._gathered)
        self._gathered.clear()
        self._gathered_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._gathered_bytes

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self.close_requested = True
        self._close()

    def abort(self) -> None:
        self._gathered.clear()
        self._gathered_bytes = 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self.close_requested or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def guarded_protocol(
    base: type[asyncio.Protocol], limits: ReceiptLimits, observer: ConnectionObserver
) -> type[asyncio.Protocol]:
    """A subclass of uvicorn's `base` protocol class that enforces `limits` on every connection."""

    handshakes = PendingHandshakes(limits.tls_handshake_timeout_s) if limits.tls_handshake_timeout_s else None

    class GuardedProtocol(base):  # type: ignore[misc, valid-type]
        _scanner: RequestFramingScanner
        _timer: asyncio.TimerHandle | None = None
        _deadline: float | None = None
        _request_started_at: float | None = None
        _refused = False
        _lingering: asyncio.TimerHandle | None = None
        _discarded = 0
        _heads = 0
        _bodies = 0
        _marked_cycle: Any = None
        _made = False

        if handshakes is not None:

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                handshakes.begin(self)  # the loop makes the protocol as it accepts, before the TLS handshake

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self._made = True
            if handshakes is not None:
                handshakes.end(self)
            self._socket_transport: Any = transport
            self._wrapped = _LingeringCloseTransport(cast(asyncio.Transport, transport), self._close, self.loop)
            super().connection_made(self._wrapped)
            observer.connection_opened()
            self._scanner = RequestFramingScanner(
                max_head_bytes=limits.max_head_bytes, max_body_bytes=limits.max_body_bytes
            )
            if len(self.connections) + (len(handshakes) if handshakes is not None else 0) > limits.max_connections:
                self._refuse(
                    503,
                    f"the server has {limits.max_connections} connections open, its limit; retry shortly",
                    ConnectionRefusal.MAX_CONNECTIONS,
                )
                return
            # A socket that never sends a request is bounded like one that sends its head slowly.
            self._arm(time.monotonic() + limits.header_timeout_s, ConnectionRefusal.HEADER_TIMEOUT)

        def data_received(self, data: bytes) -> None:
            if self._lingering is not None:
                self._discarded += len(data)
                if self._discarded > limits.max_body_bytes:
                    self._socket_transport.close()
                return
            if self._refused:
                return
            scanner = self._scanner
            was_between = scanner.between_requests
            events = scanner.feed(data)
            for event in events:
                if isinstance(event, FramingViolation):
                    self._refuse(event.status, event.message, ConnectionRefusal.FRAMING)
                    return
            now = time.monotonic()
            if (was_between and data) or any(isinstance(event, BodyComplete) for event in events):
                self._request_started_at = now
            for event in events:
                if isinstance(event, HeadComplete):
                    self._heads += 1
                elif isinstance(event, BodyComplete):
                    self._bodies += 1
            self._follow(now)
            super().data_received(data)
            self._mark_body_received()

        def _mark_body_received(self) -> None:
            """Give the request uvicorn made last its BODY_RECEIVED_EXTENSION: it is the one whose head the scanner
            saw last. (A request whose head arrived with a later one in the same read is never the last made; it
            goes without, and an early answer to it closes the connection, as without the guard's help.)"""
            cycle: Any = getattr(self, "cycle", None)
            if cycle is None or cycle is self._marked_cycle or not self._scanner.following:
                return
            self._marked_cycle = cycle
            index = self._heads
            cycle.scope.setdefault("extensions", {})[BODY_RECEIVED_EXTENSION] = lambda: self._bodies >= index

        def eof_received(self) -> bool | None:
            if self._lingering is not None:
                return False  # the client is done sending: the transport closes
            return cast(bool | None, super().eof_received())

        def connection_lost(self, exc: Exception | None) -> None:
            if not self._made:  # a TLS handshake that failed: uvloop says so at its deadline, asyncio never
                if handshakes is not None:
                    handshakes.end(self)
                return
            self._disarm()
            if self._lingering is not None:
                self._lingering.cancel()
            observer.connection_closed()
            super().connection_lost(exc)

        def _close(self) -> None:
            """Close now, or linger when the client may still be sending the request it was answered for."""
            transport = self._socket_transport
            if (
                self._lingering is not None
                or transport.is_closing()
                or (self._scanner.between_requests and not self._refused)
            ):
                transport.close()
                return
            self._disarm()
            try:
                transport.write_eof()  # the answer, then FIN: the client reads it, then sees the end
                transport.resume_reading()
            except (AttributeError, NotImplementedError, RuntimeError, OSError):
                transport.close()
                return
            self._lingering = self.loop.call_later(LINGER_S, transport.close)

        def _follow(self, now: float) -> None:
            scanner = self._scanner
            started = self._request_started_at if self._request_started_at is not None else now
            if scanner.between_requests:
                self._disarm()  # the app answers; afterwards uvicorn's keep-alive timer bounds the idle socket
            elif scanner.in_head:
                self._arm(started + limits.header_timeout_s, ConnectionRefusal.HEADER_TIMEOUT)
            else:
                self._arm(started + limits.body_timeout_s, ConnectionRefusal.BODY_TIMEOUT)

        def _arm(self, deadline: float, reason: ConnectionRefusal) -> None:
            if self._timer is not None and self._deadline == deadline:
                return
            self._disarm()
            self._deadline = deadline
            self._timer = self.loop.call_later(max(0.0, deadline - time.monotonic()), self._expired, reason)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._deadline = None

        def _expired(self, reason: ConnectionRefusal) -> None:
            self._timer = self._deadline = None
            what = "request head" if reason is ConnectionRefusal.HEADER_TIMEOUT else "request body"
            limit = limits.header_timeout_s if reason is ConnectionRefusal.HEADER_TIMEOUT else limits.body_timeout_s
            self._refuse(408, f"the {what} did not arrive within {limit:g} s", reason)

        def send_400_response(self, msg: str) -> None:
            """The parser (h11 or httptools) refused the bytes: answer in the service's JSON shape."""
            self._refuse(
                400, f"the request cannot be parsed as HTTP/1.1 ({msg.rstrip('.')})", ConnectionRefusal.FRAMING
            )

        def _refuse(self, status: int, message: str, reason: ConnectionRefusal) -> None:
            self._refused = True
            self._disarm()
            observer.count_connection_refused(reason)
            cycle: Any = getattr(self, "cycle", None)
            answering = cycle is not None and not cycle.response_complete
            if answering:
                # The app is reading this request: it learns of the refusal as a disconnect and writes nothing;
                # the scope tells it why, so that it counts a timeout rather than a client that left.
                cycle.scope.setdefault("extensions", {})[REFUSAL_EXTENSION] = {"status": status, "reason": reason}
                cycle.disconnected = True
                cycle.message_event.set()
            if not (answering and cycle.response_started) and not self.transport.is_closing():
                self.transport.write(refusal_bytes(status, message))
            self.transport.close()

    GuardedProtocol.__name__ = GuardedProtocol.__qualname__ = f"Guarded{base.__name__}"
    return GuardedProtocol
