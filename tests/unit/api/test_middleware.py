"""The serving gate (`ServingGateMiddleware`) around a tiny ASGI app, called directly with scopes and
receive/send callables, no server: request IDs, API keys (401 before the body is read, keys counted by name, probes,
the page and /metrics open), refusal while draining (probes still answered), ``Connection: close`` on an answer
sent before the request body was read, the error body of /v1 and of /v2, and the lifecycle's count of requests in
flight back to zero after every request."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

import pytest

from service.api.middleware import ServingGateMiddleware
from service.auth import KEY_REQUIRED, ApiKeys
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics

MADE_REQUEST_ID = re.compile(r"[0-9a-f]{16}-[0-9a-f]+")


@dataclass
class Seen:
    """What the app saw of one request."""

    scope: dict[str, Any]
    body: bytes
    in_flight: int


class App:
    """Answers 200 with a small JSON body; reads the request body first unless `read_body` is off; raises instead
    of answering with `fail`."""

    def __init__(self, lifecycle: Lifecycle, *, read_body: bool = True, fail: bool = False) -> None:
        self.lifecycle = lifecycle
        self.read_body = read_body
        self.fail = fail
        self.seen: list[Seen] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        if self.read_body:
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
        self.seen.append(Seen(scope, body, self.lifecycle.in_flight))
        if self.fail:
            raise RuntimeError("the app broke")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    messages_read: int = 0

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        assert len(values) <= 1, f"{name} given {len(values)} times: {self.headers}"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class Gate:
    """A gate around an `App`, with its own lifecycle, metrics and keys."""

    def __init__(
        self,
        *,
        keys: str | None = None,
        metrics_require_key: bool = False,
        read_body: bool = True,
        fail: bool = False,
    ) -> None:
        self.lifecycle = Lifecycle()
        self.lifecycle.mark_ready()
        self.metrics = ServiceMetrics()
        self.app = App(self.lifecycle, read_body=read_body, fail=fail)
        self.gate = ServingGateMiddleware(
            self.app,
            lifecycle=self.lifecycle,
            metrics=self.metrics,
            api_keys=ApiKeys(inline=keys),
            metrics_require_key=metrics_require_key,
        )

    def call(
        self, path: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: list[bytes] | None = None
    ) -> Answer:
        chunks = list(body or [])
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()],
            "client": ("127.0.0.1", 50123),
            "server": ("127.0.0.1", 8000),
        }
        sent: list[dict[str, Any]] = []
        read = 0

        async def receive() -> dict[str, Any]:
            nonlocal read
            if read < len(chunks):
                read += 1
                return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
            if not chunks and read == 0:
                read = 1
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        asyncio.run(self.gate(scope, receive, send))
        start = next(message for message in sent if message["type"] == "http.response.start")
        return Answer(
            status=start["status"],
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in start.get("headers", [])],
            body=b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body"),
            messages_read=read,
        )

    def count(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


# --- request IDs --------------------------------------------------------------------------------------------------


def test_a_valid_request_id_is_kept_and_echoed():
    gate = Gate()
    answer = gate.call("/v1/models", headers={"X-Request-ID": "client-42.retry:1"})
    assert answer.status == 200 and answer.header("x-request-id") == "client-42.retry:1"
    assert gate.app.seen[0].scope["state"]["request_id"] == "client-42.retry:1"


@pytest.mark.parametrize("given", [None, "has spaces", "x" * 129, "semi;colon", ""])
def test_a_missing_or_invalid_request_id_is_replaced_by_a_made_one(given):
    gate = Gate()
    answer = gate.call("/v1/models", headers={} if given is None else {"X-Request-ID": given})
    made = answer.header("x-request-id")
    assert made is not None and MADE_REQUEST_ID.fullmatch(made), made
    assert gate.app.seen[0].scope["state"]["request_id"] == made


def test_made_request_ids_differ_from_request_to_request():
    gate = Gate()
    first = gate.call("/v1/models").header("x-request-id")
    second = gate.call("/v1/models").header("x-request-id")
    assert first != second
    assert first is not None and second is not None
    assert first.split("-")[0] == second.split("-")[0]  # one process prefix, a counter after it


# --- API keys -----------------------------------------------------------------------------------------------------


def test_without_a_key_a_request_is_refused_401_before_its_body_is_read():
    gate = Gate(keys="ci:s3cret")
    answer = gate.call(
        "/v1/classify", method="POST", headers={"Content-Length": "4", "X-Request-ID": "r1"}, body=[b"data"]
    )
    assert answer.status == 401
    assert answer.header("www-authenticate") == 'Bearer realm="resnet-serve"'
    assert answer.header("connection") == "close"  # answered before the body was read
    assert answer.json() == {
        "error": {"status": 401, "code": "unauthorized", "message": KEY_REQUIRED, "request_id": "r1"}
    }
    assert answer.header("x-request-id") == "r1"
    assert gate.app.seen == [] and answer.messages_read == 0
    assert gate.count("resnet_serve_rejections_total", reason="unauthorized") == 1
    assert gate.lifecycle.in_flight == 0


def test_a_wrong_key_is_refused_like_none():
    gate = Gate(keys="ci:s3cret")
    answer = gate.call("/v1/models", headers={"Authorization": "Bearer not-it", "X-API-Key": "nor-this"})
    assert answer.status == 401 and answer.json()["error"]["code"] == "unauthorized"
    assert gate.app.seen == []


@pytest.mark.parametrize(
    "headers", [{"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}], ids=["bearer", "x-api-key"]
)
def test_an_accepted_key_lets_the_request_in_counted_under_its_name(headers):
    gate = Gate(keys="ci:s3cret")
    answer = gate.call("/v1/models", headers=headers)
    assert answer.status == 200
    assert gate.app.seen[0].scope["state"]["api_key"] == "ci"
    assert gate.count("resnet_serve_api_key_requests_total", key="ci") == 1
    gate.call("/v1/models", headers=headers)
    assert gate.count("resnet_serve_api_key_requests_total", key="ci") == 2


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/", "/docs"])
def test_probes_and_the_page_are_open_without_a_key(path):
    gate = Gate(keys="ci:s3cret")
    assert gate.call(path).status == 200
    assert len(gate.app.seen) == 1


def test_metrics_are_open_unless_they_require_a_key():
    assert Gate(keys="ci:s3cret").call("/metrics").status == 200
    gate = Gate(keys="ci:s3cret", metrics_require_key=True)
    assert gate.call("/metrics").status == 401
    assert gate.call("/metrics", headers={"X-API-Key": "s3cret"}).status == 200


def test_without_keys_configured_every_path_is_open():
    gate = Gate(metrics_require_key=True)
    assert gate.call("/v1/classify").status == 200
    assert gate.call("/metrics").status == 200
    assert gate.count("resnet_serve_api_key_requests_total", key="ci") == 0


def test_errors_under_v2_have_the_open_inference_protocol_shape():
    gate = Gate(keys="ci:s3cret")
    answer = gate.call("/v2/models/toy/infer", method="POST", headers={"X-Request-ID": "r2"})
    assert answer.status == 401
    assert answer.json() == {"error": KEY_REQUIRED, "request_id": "r2"}
    assert gate.call("/v2x").json()["error"]["code"] == "unauthorized"  # only /v2 and below are V2


# --- draining -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/models", "/"])
def test_while_draining_new_requests_are_refused_503_and_their_connection_closed(path):
    gate = Gate()
    gate.lifecycle.begin_drain()
    answer = gate.call(path, headers={"X-Request-ID": "r3"})
    assert answer.status == 503
    assert answer.header("connection") == "close" and answer.header("retry-after") == "1"
    assert answer.json()["error"] == {
        "status": 503,
        "code": "shutting_down",
        "message": "the server is shutting down; retry on another instance",
        "request_id": "r3",
    }
    assert gate.app.seen == [] and gate.lifecycle.in_flight == 0
    assert gate.count("resnet_serve_rejections_total", reason="shutting_down") == 1


def test_while_draining_v2_gets_its_own_error_shape():
    gate = Gate()
    gate.lifecycle.begin_drain()
    answer = gate.call("/v2/models/toy/infer", method="POST")
    assert answer.status == 503 and set(answer.json()) == {"error", "request_id"}
    assert "shutting down" in answer.json()["error"]


@pytest.mark.parametrize("path", ["/readyz", "/healthz", "/v2/health/ready", "/metrics"])
def test_while_draining_probes_and_metrics_are_still_answered(path):
    gate = Gate()
    gate.lifecycle.begin_drain()
    assert gate.call(path).status == 200
    assert len(gate.app.seen) == 1


def test_draining_is_checked_before_keys():
    gate = Gate(keys="ci:s3cret")
    gate.lifecycle.begin_drain()
    assert gate.call("/v1/models").status == 503


# --- connection: close --------------------------------------------------------------------------------------------


def test_an_answer_sent_before_the_body_was_read_closes_the_connection():
    gate = Gate(read_body=False)
    answer = gate.call("/v1/classify", method="POST", headers={"Content-Length": "6"}, body=[b"abc", b"def"])
    assert answer.status == 200 and answer.header("connection") == "close"


def test_a_chunked_body_left_unread_closes_the_connection_too():
    gate = Gate(read_body=False)
    answer = gate.call("/v1/classify", method="POST", headers={"Transfer-Encoding": "chunked"}, body=[b"abc"])
    assert answer.header("connection") == "close"


def test_an_answer_after_the_whole_body_keeps_the_connection():
    gate = Gate()
    answer = gate.call("/v1/classify", method="POST", headers={"Content-Length": "6"}, body=[b"abc", b"def"])
    assert answer.status == 200 and answer.header("connection") is None
    assert gate.app.seen[0].body == b"abcdef"


@pytest.mark.parametrize("headers", [{}, {"Content-Length": "0"}], ids=["no-body", "empty-body"])
def test_a_request_without_a_body_keeps_the_connection(headers):
    gate = Gate(read_body=False)
    assert gate.call("/v1/models", headers=headers).header("connection") is None


def test_a_retiring_worker_closes_every_connection():
    gate = Gate()
    gate.lifecycle.retiring = True
    answer = gate.call("/v1/models")
    assert answer.status == 200 and answer.header("connection") == "close"


# --- requests in flight -------------------------------------------------------------------------------------------


def test_a_request_counts_in_flight_while_the_app_runs_and_not_after():
    gate = Gate()
    gate.call("/v1/classify", method="POST", headers={"Content-Length": "2"}, body=[b"hi"])
    gate.call("/v1/models")
    assert [seen.in_flight for seen in gate.app.seen] == [1, 1]
    assert gate.lifecycle.in_flight == 0
    assert gate.count("resnet_serve_http_requests_in_flight") == 0
    assert gate.count("resnet_serve_http_requests_total", route="unmatched", method="GET", status="200") == 1


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_probes_and_metrics_are_not_work_in_flight(path):
    gate = Gate()
    gate.call(path)
    assert gate.app.seen[0].in_flight == 0 and gate.lifecycle.in_flight == 0


def test_a_failing_app_is_answered_500_with_connection_close_and_leaves_nothing_in_flight(caplog):
    """An exception no handler expected: 500 in the protocol's shape, with the request's ID, and `Connection:
    close`, since the server closes the connection after it (a kept-alive client must not meet a reset)."""
    gate = Gate(fail=True)
    answer = gate.call("/v1/models", headers={"X-Request-ID": "broken-1"})
    assert answer.status == 500 and answer.header("connection") == "close"
    assert answer.header("x-request-id") == "broken-1"
    assert answer.json()["error"] == {
        "status": 500,
        "code": "internal_error",
        "message": "internal server error; the details are in the server log",
        "request_id": "broken-1",
    }
    assert "the app broke" in caplog.text  # the traceback is the log's, not the client's
    assert gate.count("resnet_serve_rejections_total", reason="internal_error") == 1
    assert gate.app.seen[0].in_flight == 1
    assert gate.lifecycle.in_flight == 0
    assert gate.count("resnet_serve_http_requests_in_flight") == 0
    assert gate.count("resnet_serve_http_requests_total", route="unmatched", method="GET", status="500") == 1


def test_draining_waits_for_a_request_let_in_before_it():
    async def scenario() -> tuple[int, bool, bool]:
        lifecycle = Lifecycle()
        lifecycle.mark_ready()
        release = asyncio.Event()
        entered = asyncio.Event()

        async def slow_app(scope: Any, receive: Any, send: Any) -> None:
            entered.set()
            await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        gate = ServingGateMiddleware(slow_app, lifecycle=lifecycle, metrics=ServiceMetrics(), api_keys=ApiKeys())
        scope = {"type": "http", "method": "GET", "path": "/v1/models", "headers": [], "query_string": b""}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            pass

        request = asyncio.create_task(gate(scope, receive, send))
        await entered.wait()
        lifecycle.begin_drain()
        idle_while_running = await lifecycle.wait_idle(timeout_s=0.01)
        in_flight = lifecycle.in_flight
        release.set()
        await request
        return in_flight, idle_while_running, await lifecycle.wait_idle(timeout_s=60)

    assert asyncio.run(scenario()) == (1, False, True)
