"""Lingering close: a client refused while it is still sending (HTTP clients such as httpx and requests write a
whole request before they read) must still read the answer.

The server sends its answer and a FIN, then reads and discards what still arrives until the client closes,
`LINGER_S` pass or an upload limit's worth arrived. Closed at once, the server's kernel answers the unread bytes
with a reset, which destroys the answer on its way: the client sees "connection reset" (the soak benchmark lost
630 requests that way, refused by the connection cap).
"""

from __future__ import annotations

from tests.reliability.harness import connect, parse_responses, read_one_response, request_bytes

UPLOAD = b"\x89" * 512 * 1024


def read_strictly_until_closed(connection) -> bytes:
    data = b""
    while chunk := connection.recv(65536):  # a reset raises ConnectionResetError here
        data += chunk
    return data


def test_a_client_refused_by_the_connection_cap_reads_the_503_after_writing_its_whole_request(ready_server):
    server = ready_server("--max-connections", "1", "--keep-alive-timeout-s", "120", "--header-timeout-s", "120")
    upload = request_bytes("POST", "/v1/classify", body=UPLOAD, content_type="image/png")
    with connect(server.port) as held:
        held.sendall(request_bytes("GET", "/healthz"))
        assert read_one_response(held).status == 200
        for _ in range(5):
            with connect(server.port) as refused:
                refused.sendall(upload)
                responses = parse_responses(read_strictly_until_closed(refused))
            assert [r.status for r in responses] == [503], responses
            assert responses[0].error_code == "too_many_connections" and responses[0].headers["retry-after"] == "1"


def test_a_client_refused_by_the_app_before_its_body_was_read_reads_the_answer(ready_server, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("ci:a-key-of-some-length-0123456789\n")
    server = ready_server("--api-keys-file", str(keys))
    upload = request_bytes("POST", "/v1/classify", body=UPLOAD, content_type="image/png")
    for _ in range(5):
        with connect(server.port) as refused:
            refused.sendall(upload)
            responses = parse_responses(read_strictly_until_closed(refused))
        assert [r.status for r in responses] == [401], responses
        assert responses[0].headers.get("connection") == "close"
