"""Slowloris and its kin: clients that hold a connection by sending their request slowly, or not at all.

uvicorn's keep-alive timer is reset by every byte and the app sees nothing before a head is parsed, so these
are the protocol guard's to end: 408 with a JSON error and ``Connection: close``, then the socket is closed,
and each is counted in ``resnet_serve_connections_refused_total`` by reason.
"""

from __future__ import annotations

import select
import time

import pytest

from tests.reliability.harness import (
    CLOSED_BY_PEER,
    GRACE_S,
    HTTP_PARSERS,
    connect,
    delta,
    metrics,
    parse_responses,
    parser_flags,
    poll,
    read_until_closed,
    request_bytes,
)

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
TRICKLE_INTERVAL_S = 0.2
"""One byte per this many seconds: the pace of the attacks, not a wait for a condition."""


@pytest.fixture(scope="module", params=HTTP_PARSERS, ids=lambda parser: parser or "default-parser")
def server(launch, request):
    """One server per HTTP parser: the deadlines live in the protocol guard in front of either."""
    return launch(
        "--header-timeout-s",
        str(HEADER_TIMEOUT_S),
        "--body-timeout-s",
        str(BODY_TIMEOUT_S),
        *parser_flags(request.param),
    )


def trickle(connection, data: bytes) -> int:
    """Send `data` one byte per TRICKLE_INTERVAL_S until the server answers or closes; returns the bytes sent."""
    for sent, byte in enumerate(data):
        if select.select([connection], [], [], TRICKLE_INTERVAL_S)[0]:
            return sent  # the server has answered (or closed)
        try:
            connection.send(bytes([byte]))
        except OSError as exc:
            if exc.errno in CLOSED_BY_PEER:
                return sent
            raise
    return len(data)


def assert_408_and_closed(data: bytes, what: str) -> None:
    responses = parse_responses(data)
    assert [r.status for r in responses] == [408], f"expected exactly one 408, got {responses}"
    response = responses[0]
    assert response.headers.get("connection") == "close"
    assert response.headers.get("content-type") == "application/json"
    error = response.json()["error"]
    assert error["status"] == 408 and error["code"] == "request_timeout"
    assert what in error["message"]


def assert_upload_bytes_given_back(server) -> None:
    """The request the guard cut off learns of it as a disconnect, after the 408 was written: poll."""
    poll(
        lambda: metrics(server.port)[("resnet_serve_inflight_upload_bytes", ())] == 0,
        "the cut-off upload's bytes to be given back",
    )


def test_request_head_sent_one_byte_at_a_time_gets_408_and_is_closed(server, example_pngs):
    """Attack: a classify request head (padded to a few hundred bytes) sent one byte every 0.2 s, which would
    take a minute in all. The server must answer 408 request_timeout with Connection: close once the head has
    not arrived within --header-timeout-s of its first byte, close the socket, and count a header_timeout."""
    head = request_bytes(
        "POST",
        "/v1/classify",
        content_type="image/png",
        headers={"X-Padding": "p" * 300},
        content_length=len(example_pngs["sneaker"]),
    )
    before = metrics(server.port)
    with connect(server.port) as connection:
        started = time.monotonic()
        sent = trickle(connection, head)
        data = read_until_closed(connection)
        elapsed = time.monotonic() - started
    assert sent < len(head), "the whole head went through: the server never cut the slow client off"
    assert_408_and_closed(data, "request head")
    assert elapsed < HEADER_TIMEOUT_S + GRACE_S
    after = metrics(server.port)
    assert delta(before, after, "resnet_serve_connections_refused_total", reason="header_timeout") == 1


def test_connection_that_never_sends_a_byte_gets_408_and_is_closed(server):
    """Attack: open a TCP connection and send nothing, holding a socket and a file descriptor. The server must
    answer 408 (the head deadline runs from the connection's opening) and close it, counted as header_timeout."""
    before = metrics(server.port)
    with connect(server.port) as connection:
        started = time.monotonic()
        data = read_until_closed(connection)
        elapsed = time.monotonic() - started
    assert_408_and_closed(data, "request head")
    assert elapsed < HEADER_TIMEOUT_S + GRACE_S
    after = metrics(server.port)
    assert delta(before, after, "resnet_serve_connections_refused_total", reason="header_timeout") == 1


def test_body_that_stops_arriving_gets_408_within_the_body_deadline(server, example_pngs):
    """Attack: a classify request declaring a real PNG's Content-Length, of which only the first 100 bytes are
    sent. The server must answer 408 (request body) and close within --body-timeout-s of the request's first
    byte, counted as body_timeout, and the upload's bytes must no longer be held."""
    png = example_pngs["sneaker"]
    before = metrics(server.port)
    with connect(server.port) as connection:
        started = time.monotonic()
        connection.sendall(
            request_bytes("POST", "/v1/classify", content_type="image/png", body=png[:100], content_length=len(png))
        )
        data = read_until_closed(connection)
        elapsed = time.monotonic() - started
    assert_408_and_closed(data, "request body")
    assert elapsed < BODY_TIMEOUT_S + GRACE_S
    after = metrics(server.port)
    assert delta(before, after, "resnet_serve_connections_refused_total", reason="body_timeout") == 1
    assert delta(before, after, "resnet_serve_connections_refused_total", reason="header_timeout") == 0
    assert_upload_bytes_given_back(server)


def test_body_trickled_one_byte_at_a_time_is_cut_at_the_body_deadline(server, example_pngs):
    """Attack (slow POST): a complete head, then the body one byte every 0.2 s, each byte restarting uvicorn's
    own idle timer. The server must still answer 408 and close once the body has not arrived within
    --body-timeout-s of the request's first byte, and count a body_timeout."""
    png = example_pngs["sneaker"]
    before = metrics(server.port)
    with connect(server.port) as connection:
        started = time.monotonic()
        connection.sendall(request_bytes("POST", "/v1/classify", content_type="image/png", content_length=len(png)))
        sent = trickle(connection, png)
        data = read_until_closed(connection)
        elapsed = time.monotonic() - started
    assert sent < len(png), "the whole body went through: the server never cut the slow upload off"
    assert_408_and_closed(data, "request body")
    assert elapsed < BODY_TIMEOUT_S + GRACE_S
    after = metrics(server.port)
    assert delta(before, after, "resnet_serve_connections_refused_total", reason="body_timeout") == 1
    assert_upload_bytes_given_back(server)
