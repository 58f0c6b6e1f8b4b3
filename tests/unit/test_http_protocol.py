"""The protocol guard (`guarded_protocol`) around both of uvicorn's HTTP/1.1 protocol classes, h11 and httptools:
the real guarded classes, a real `uvicorn.Config` and `ServerState` and a tiny ASGI app, fed bytes through a fake
transport inside a running event loop (no socket). Normal requests reach the app; hostile framing, a head or body
that does not arrive in time and a connection past the cap are answered by the guard itself, in the service's JSON
error shape with ``Connection: close``, and each refusal is reported to the observer with its reason.

The guard subclasses uvicorn's private protocol classes, so the last test checks that every private attribute and
method it relies on is still there in the installed uvicorn."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.errors import ConnectionRefusal
from service.http_protocol import REFUSAL_EXTENSION, ReceiptLimits, guarded_protocol

PARSERS = pytest.mark.parametrize("base", [H11Protocol, HttpToolsProtocol], ids=["h11", "httptools"])
LIMITS = ReceiptLimits(
    header_timeout_s=60.0, body_timeout_s=60.0, max_connections=8, max_head_bytes=8192, max_body_bytes=10_000
)
GET = b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n"


class FakeTransport(asyncio.Transport):
    """A socket transport as far as uvicorn and the guard use one: it records what is written and how it ends."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.eof_written = False
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50123), "sslcontext": None}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def write_eof(self) -> None:
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    @property
    def ended(self) -> bool:
        """The server is done with the connection: closed, or its FIN sent (a lingering close)."""
        return self.closed or self.eof_written


class RecordingObserver:
    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.refusals: list[ConnectionRefusal] = []

    def connection_opened(self) -> None:
        self.opened += 1

    def connection_closed(self) -> None:
        self.closed += 1

    def count_connection_refused(self, reason: ConnectionRefusal) -> None:
        self.refusals.append(reason)


class App:
    """Answers 200 with the path and the body it read; records the requests it saw and any disconnect."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.disconnects: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        assert scope["type"] == "http"
        self.requests.append(scope)
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects.append(scope)
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        answer = scope["path"].encode() + b" " + body
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(answer)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": answer})


class Server:
    """One listening server's shared parts: its config, state, app, observer and guarded protocol class."""

    def __init__(self, base: type[asyncio.Protocol], limits: ReceiptLimits = LIMITS) -> None:
        self.app = App()
        self.config = uvicorn.Config(app=self.app, log_config=None, lifespan="off", access_log=False)
        self.config.load()
        self.state = ServerState()
        self.observer = RecordingObserver()
        self.protocol_class = guarded_protocol(base, limits, self.observer)

    def accept(self) -> Any:
        """A protocol as the loop makes it when it accepts a connection (over TLS: before the handshake)."""
        return self.protocol_class(
            config=self.config, server_state=self.state, app_state={}, _loop=asyncio.get_running_loop()
        )

    def connect(self) -> tuple[Any, FakeTransport]:
        protocol = self.accept()
        transport = FakeTransport()
        protocol.connection_made(transport)
        return protocol, transport


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll the event loop until `condition` holds (a generous bound only stops a broken test from hanging)."""
    try:
        async with asyncio.timeout(10):
            while not condition():
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, separator, body = bytes(raw).partition(b"\r\n\r\n")
    assert separator, f"no complete response head in {raw!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def json_error(body: bytes, status: int, code: str) -> str:
    """The message of a JSON error body of the service's shape, checked to be that shape."""
    error = json.loads(body)["error"]
    assert error["status"] == status and error["code"] == code, error
    assert set(error) == {"status", "code", "message"}, error
    return error["message"]


@PARSERS
def test_a_normal_request_is_answered_by_the_app(base):
    async def scenario() -> None:
        server = Server(base)
        protocol, transport = server.connect()
        protocol.data_received(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello")
        await until(lambda: b"/echo hello" in transport.written, "the app's answer")
        status, headers, body = response(transport.written)
        assert (status, body) == (200, b"/echo hello")
        assert headers.get("connection") != "close" and not transport.ended  # kept alive for the next request
        transport.written.clear()
        protocol.data_received(GET)
        await until(lambda: b"/hello " in transport.written, "the app's answer to the GET")
        status, _, body = response(transport.written)
        assert (status, body) == (200, b"/hello ")
        assert [scope["method"] for scope in server.app.requests] == ["POST", "GET"]
        assert server.observer.refusals == []
        protocol.connection_lost(None)
        assert (server.observer.opened, server.observer.closed) == (1, 1)
        await until(lambda: not server.state.tasks, "the request's task to end")

    asyncio.run(scenario())


@PARSERS
def test_content_length_with_transfer_encoding_is_refused_400_before_the_app(base):
    async def scenario() -> None:
        server = Server(base)
        protocol, transport = server.connect()
        protocol.data_received(
            b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: test\r\n\r\n"
        )
        status, headers, body = response(transport.written)
        assert status == 400 and headers["connection"] == "close"
        assert headers["content-type"] == "application/json" and int(headers["content-length"]) == len(body)
        assert "Content-Length" in json_error(body, 400, "malformed_request")
        assert transport.ended
        assert server.app.requests == []  # neither the smuggled request nor the first reached the app
        assert server.observer.refusals == [ConnectionRefusal.FRAMING]
        protocol.connection_lost(None)

    asyncio.run(scenario())


@PARSERS
def test_bytes_the_parser_refuses_are_answered_400_in_the_json_shape(base):
    async def scenario() -> None:
        server = Server(base)
        protocol, transport = server.connect()
        protocol.data_received(b"THIS IS NOT HTTP\r\n\r\n")
        status, headers, body = response(transport.written)
        assert status == 400 and headers["connection"] == "close"
        assert "cannot be parsed as HTTP/1.1" in json_error(body, 400, "malformed_request")
        assert transport.ended and server.app.requests == []
        assert server.observer.refusals == [ConnectionRefusal.FRAMING]
        protocol.connection_lost(None)

    asyncio.run(scenario())


@PARSERS
def test_a_head_that_does_not_arrive_in_time_is_answered_408(base):
    async def scenario() -> None:
        server = Server(base, dataclasses.replace(LIMITS, header_timeout_s=0.05))
        protocol, transport = server.connect()
        protocol.data_received(b"GET /hello HTTP/1.1\r\nHost: te")
        await until(lambda: transport.ended, "the guard to end the connection")
        status, headers, body = response(transport.written)
        assert status == 408 and headers["connection"] == "close"
        assert "request head did not arrive within 0.05 s" in json_error(body, 408, "request_timeout")
        assert server.app.requests == []
        assert server.observer.refusals == [ConnectionRefusal.HEADER_TIMEOUT]
        protocol.connection_lost(None)
        assert (server.observer.opened, server.observer.closed) == (1, 1)

    asyncio.run(scenario())


@PARSERS
def test_a_connection_that_sends_nothing_is_answered_408_too(base):
    async def scenario() -> None:
        server = Server(base, dataclasses.replace(LIMITS, header_timeout_s=0.05))
        protocol, transport = server.connect()
        await until(lambda: transport.ended, "the guard to end the idle connection")
        status, _, body = response(transport.written)
        assert status == 408
        json_error(body, 408, "request_timeout")
        assert server.observer.refusals == [ConnectionRefusal.HEADER_TIMEOUT]
        protocol.connection_lost(None)

    asyncio.run(scenario())


@PARSERS
def test_a_body_that_does_not_arrive_in_time_is_408_and_the_app_reading_it_learns_why(base):
    async def scenario() -> None:
        server = Server(base, dataclasses.replace(LIMITS, body_timeout_s=0.05))
        protocol, transport = server.connect()
        protocol.data_received(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nhel")
        await until(lambda: transport.ended, "the guard to end the connection")
        await until(lambda: bool(server.app.disconnects), "the app to see the disconnect")
        status, headers, body = response(transport.written)
        assert status == 408 and headers["connection"] == "close"
        assert "request body did not arrive within 0.05 s" in json_error(body, 408, "request_timeout")
        (scope,) = server.app.disconnects
        assert scope["extensions"][REFUSAL_EXTENSION] == {"status": 408, "reason": ConnectionRefusal.BODY_TIMEOUT}
        assert transport.written.count(b"HTTP/1.1 ") == 1  # the guard's answer only, none from the app or uvicorn
        assert server.observer.refusals == [ConnectionRefusal.BODY_TIMEOUT]
        protocol.connection_lost(None)
        await until(lambda: not server.state.tasks, "the request's task to end")

    asyncio.run(scenario())


@PARSERS
def test_a_connection_past_the_cap_is_answered_503_with_retry_after(base):
    async def scenario() -> None:
        server = Server(base, dataclasses.replace(LIMITS, max_connections=1))
        first, first_transport = server.connect()
        second, second_transport = server.connect()
        status, headers, body = response(second_transport.written)
        assert status == 503 and headers["connection"] == "close" and headers["retry-after"] == "1"
        assert "1 connections open" in json_error(body, 503, "too_many_connections")
        assert second_transport.ended
        assert server.observer.refusals == [ConnectionRefusal.MAX_CONNECTIONS]
        second.connection_lost(None)

        first.data_received(GET)  # the connection within the cap is served
        await until(lambda: b"/hello " in first_transport.written, "the app's answer on the first connection")
        assert response(first_transport.written)[0] == 200
        first.connection_lost(None)
        assert (server.observer.opened, server.observer.closed) == (2, 2)
        assert server.observer.refusals == [ConnectionRefusal.MAX_CONNECTIONS]
        await until(lambda: not server.state.tasks, "the request's task to end")

    asyncio.run(scenario())


@PARSERS
def test_a_refused_connection_lingers_and_discards_what_its_client_still_sends(base):
    async def scenario() -> None:
        server = Server(base)
        protocol, transport = server.connect()
        protocol.data_received(
            b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nTransfer-Encoding: x\r\n\r\n"
        )
        answered = bytes(transport.written)
        assert response(answered)[0] == 400
        assert transport.eof_written and not transport.closed  # the answer and a FIN, the socket still read
        protocol.data_received(b"more of the upload")
        assert bytes(transport.written) == answered and server.app.requests == []
        assert protocol.eof_received() is False  # the client is done: the transport may close
        protocol.connection_lost(None)
        assert server.observer.refusals == [ConnectionRefusal.FRAMING]

    asyncio.run(scenario())


@PARSERS
def test_tls_handshakes_under_way_count_in_the_cap_until_done_or_their_deadline(base):
    async def scenario() -> None:
        limits = dataclasses.replace(LIMITS, max_connections=2, tls_handshake_timeout_s=0.2)
        server = Server(base, limits)
        handshaking = [server.accept(), server.accept()]  # accepted; their handshakes go on
        refused, refused_transport = server.connect()
        status, _, body = response(refused_transport.written)
        assert status == 503
        assert "2 connections open" in json_error(body, 503, "too_many_connections")
        refused.connection_lost(None)

        # A handshake that fails is reported as a lost connection that was never made (uvloop, at the deadline):
        # nothing was opened, so nothing is closed.
        handshaking[0].connection_lost(ConnectionAbortedError("SSL handshake is taking longer than 0.2 seconds"))
        assert (server.observer.opened, server.observer.closed) == (1, 1)

        # The other finishes its handshake and is served within the cap; the failed one no longer counts.
        done = handshaking[1]
        done_transport = FakeTransport()
        done.connection_made(done_transport)
        done.data_received(GET)
        await until(lambda: b"/hello " in done_transport.written, "the app's answer after the handshake")
        assert response(done_transport.written)[0] == 200

        # One that never reports (asyncio) counts no longer than its deadline.
        server.accept()

        def next_connection_is_served() -> bool:
            protocol, transport = server.connect()
            protocol.connection_lost(None)
            return not transport.written  # not refused

        await until(next_connection_is_served, "the silent handshake's deadline to pass")
        done.connection_lost(None)
        await until(lambda: not server.state.tasks, "the request's task to end")

    asyncio.run(scenario())


def _missing(obj: object, names: list[str]) -> list[str]:
    return [name for name in names if not hasattr(obj, name)]


@PARSERS
def test_the_private_uvicorn_interface_the_guard_uses_is_there(base):
    """What service/http_protocol.py takes from uvicorn's private protocol classes. If this fails, uvicorn moved
    something the guard relies on: re-test the guard (and adapt it) before moving the uvicorn pin."""
    where = f"uvicorn {uvicorn.__version__} {base.__module__}.{base.__name__}"
    advice = (
        "the protocol guard (service/http_protocol.py) relies on it: re-test the guard before moving the uvicorn pin"
    )

    for method in ("connection_made", "data_received", "eof_received", "connection_lost", "send_400_response"):
        assert callable(getattr(base, method, None)), f"{where} has no method {method!r}; {advice}"
    assert "send_400_response" in base.__dict__, f"{where} no longer defines send_400_response itself; {advice}"

    async def scenario() -> None:
        config = uvicorn.Config(app=App(), log_config=None, lifespan="off", access_log=False)
        config.load()
        state = ServerState()
        try:
            protocol: Any = base(config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop())
        except TypeError as exc:
            raise AssertionError(
                f"{where} is no longer made with (config, server_state, app_state, _loop) ({exc}); {advice}"
            ) from None
        for name in _missing(protocol, ["connections", "loop", "cycle"]):
            raise AssertionError(f"{where} instances have no attribute {name!r}; {advice}")
        assert isinstance(protocol.loop, asyncio.AbstractEventLoop), f"{where}.loop is not the event loop; {advice}"
        assert protocol.cycle is None, f"{where}.cycle is not None before a request; {advice}"

        transport = FakeTransport()
        protocol.connection_made(transport)
        assert getattr(protocol, "transport", None) is transport, (
            f"{where}.connection_made does not keep the transport it is given as 'transport'; {advice}"
        )
        assert protocol in protocol.connections, f"{where}.connections does not hold the open connection; {advice}"

        protocol.data_received(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nhel")
        cycle = getattr(protocol, "cycle", None)
        assert cycle is not None, f"{where} has no 'cycle' once a request has started; {advice}"
        for name in _missing(
            cycle, ["scope", "response_complete", "response_started", "disconnected", "message_event"]
        ):
            raise AssertionError(f"{where}'s request-response cycle has no attribute {name!r}; {advice}")
        assert isinstance(cycle.scope, dict), f"{where}'s cycle.scope is not the ASGI scope; {advice}"
        assert isinstance(cycle.message_event, asyncio.Event), (
            f"{where}'s cycle.message_event is not an Event; {advice}"
        )
        assert (cycle.response_started, cycle.response_complete, cycle.disconnected) == (False, False, False), (
            f"{where}'s cycle flags do not start False; {advice}"
        )

        protocol.connection_lost(None)
        assert protocol not in protocol.connections, f"{where}.connection_lost keeps the connection; {advice}"
        await until(lambda: not state.tasks, "the request's task to end")

    asyncio.run(scenario())


class CountingTransport(FakeTransport):
    """Counts the writes that reach the socket."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        super().write(data)


@PARSERS
def test_a_response_head_and_body_leave_in_one_write(base):
    """uvicorn writes the head and the body separately; the guard's transport gathers what is written in one turn
    of the event loop, so a small response is one system call."""

    async def scenario() -> None:
        server = Server(base)
        protocol: Any = server.protocol_class(
            config=server.config, server_state=server.state, app_state={}, _loop=asyncio.get_running_loop()
        )
        transport = CountingTransport()
        protocol.connection_made(transport)
        protocol.data_received(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello")
        await until(lambda: b"/echo hello" in transport.written, "the app's answer")
        assert transport.writes == 1
        assert response(transport.written)[0] == 200
        protocol.connection_lost(None)

    asyncio.run(scenario())


def test_large_writes_are_not_gathered_and_order_is_kept():
    from service.http_protocol import _LingeringCloseTransport

    async def scenario() -> None:
        inner = CountingTransport()
        closed: list[bool] = []
        wrapped = _LingeringCloseTransport(inner, lambda: closed.append(True), asyncio.get_running_loop())
        wrapped.write(b"head")
        big = b"x" * (_LingeringCloseTransport.COALESCE_BYTES + 1)
        wrapped.write(big)  # what was gathered goes first, then the large write, at once
        assert bytes(inner.written) == b"head" + big and inner.writes == 2
        wrapped.write(b"a")
        wrapped.write(b"b")
        assert wrapped.get_write_buffer_size() == 2 and inner.writes == 2
        wrapped.close()  # closing writes what was gathered first
        assert bytes(inner.written).endswith(b"ab") and closed == [True]

    asyncio.run(scenario())


@PARSERS
def test_the_app_learns_whether_a_body_has_all_arrived(base):
    from service.http_protocol import BODY_RECEIVED_EXTENSION

    async def scenario() -> None:
        server = Server(base)
        protocol, _transport = server.connect()
        protocol.data_received(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nhello")
        await until(lambda: server.app.requests, "the request to reach the app")
        received = server.app.requests[0]["extensions"][BODY_RECEIVED_EXTENSION]
        assert not received()
        protocol.data_received(b"world")
        assert received()
        protocol.connection_lost(None)

    asyncio.run(scenario())
