"""Connection exhaustion: a client that opens sockets and leaves them idle, to use up the server's file descriptors.

With --max-connections N the server keeps N connections and answers the next one 503 with Retry-After and
closes it at once; when the idle ones go, new requests are served again.
"""

from __future__ import annotations

import contextlib
import select

from tests.reliability.harness import (
    connect,
    delta,
    exchange,
    metrics,
    parse_responses,
    poll,
    read_one_response,
    read_until_closed,
    request_bytes,
)

MAX_CONNECTIONS = 20


def test_connections_beyond_the_cap_get_503_and_are_closed_until_the_idle_ones_go(ready_server, example_pngs):
    """Attack: fill --max-connections 20 with idle connections (10 that never send a byte, 10 kept alive after one
    request each). The 21st connection must get one 503 too_many_connections with Retry-After and Connection:
    close, then be closed, and be counted as max_connections; the 20 stay usable. After the idle connections
    close, a new classify request must succeed."""
    server = ready_server(
        "--max-connections", str(MAX_CONNECTIONS), "--keep-alive-timeout-s", "120", "--header-timeout-s", "120"
    )
    before = metrics(server.port)
    with contextlib.ExitStack() as stack:
        # Connections are accepted in the order they were made, so once the last kept-alive one has been answered,
        # the silent ones made before it are open on the server too: 20 in all.
        silent = [stack.enter_context(connect(server.port)) for _ in range(MAX_CONNECTIONS // 2)]
        kept_alive = [stack.enter_context(connect(server.port)) for _ in range(MAX_CONNECTIONS - len(silent))]
        for connection in kept_alive:
            connection.sendall(request_bytes("GET", "/healthz"))
            assert read_one_response(connection).status == 200

        with connect(server.port) as one_too_many:
            data = read_until_closed(one_too_many)
        responses = parse_responses(data)
        assert [r.status for r in responses] == [503], responses
        refusal = responses[0]
        assert refusal.error_code == "too_many_connections"
        assert refusal.headers.get("connection") == "close"
        assert int(refusal.headers["retry-after"]) >= 1

        # Refusing the newcomer disturbed none of the 20.
        for connection in kept_alive:
            connection.sendall(request_bytes("GET", "/healthz"))
            assert read_one_response(connection).status == 200
        pending, _, _ = select.select(silent, [], [], 0)
        assert not pending, "the server answered or closed connections that were within its cap"

    # The idle connections are closed; the server notices on its own time, and until then may still refuse.
    refused_meanwhile = []

    def classified() -> bool:
        response = exchange(
            server.port, request_bytes("POST", "/v1/classify", body=example_pngs["sneaker"], content_type="image/png")
        )
        if response.status == 503 and response.error_code == "too_many_connections":
            refused_meanwhile.append(response)
            return False
        assert response.status == 200, response
        return True

    poll(classified, "a classify request to be served after the idle connections closed")
    after = metrics(server.port)
    assert delta(before, after, "resnet_serve_connections_refused_total", reason="max_connections") == (
        1 + len(refused_meanwhile)
    )
