"""Hostile request framing: smuggling with Content-Length and Transfer-Encoding, chunks that declare more than the
upload limit, and uploads refused while the client is still sending.

What the server must do each time: answer once, with ``Connection: close``, and stop reading (after at most an
upload limit's worth, its lingering close): nothing hidden in a body ever runs, and no upload it has refused
costs it the bytes the client keeps sending.
"""

from __future__ import annotations

import pytest

from tests.reliability.harness import (
    CLOSED_BY_PEER,
    HTTP_PARSERS,
    MiB,
    connect,
    delta,
    metrics,
    parse_responses,
    parser_flags,
    read_until_closed,
    request_bytes,
)

MAX_UPLOAD_BYTES = 1 * MiB


@pytest.fixture(scope="module", params=HTTP_PARSERS, ids=lambda parser: parser or "default-parser")
def server(launch, request):
    """One server per HTTP parser: the guard sits in front of either, and each must be safe behind it."""
    return launch(
        "--max-upload-bytes",
        str(MAX_UPLOAD_BYTES),
        "--header-timeout-s",
        "5",
        "--body-timeout-s",
        "5",
        *parser_flags(request.param),
    )


def hidden_classify_request(png: bytes) -> bytes:
    """A complete, valid classify request: what an attacker hides in a body for a second parser to find."""
    return request_bytes("POST", "/v1/classify", body=png, content_type="image/png")


def smuggling_request(png: bytes, *, header_lines: list[str], line_end: bytes = b"\r\n") -> bytes:
    """A POST whose body, read as chunked, ends at once with a last chunk, leaving a classify request behind it;
    read by its Content-Length, the same bytes are one body. `header_lines` may use {length} for that length."""
    body = b"0\r\n\r\n" + hidden_classify_request(png)
    lines = [
        "POST /v1/classify HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: image/png",
        *(line.format(length=len(body)) for line in header_lines),
    ]
    return line_end.join(line.encode("latin-1") for line in lines) + line_end + line_end + body


def assert_one_400_and_the_hidden_request_never_ran(server, request: bytes):
    """Send `request`: the server must write exactly one 400 with Connection: close and close the connection, and
    the hidden classify request must not have run (no classify answered 200, no image through the model).
    Returns the responses and the metrics before and after."""
    before = metrics(server.port)
    with connect(server.port) as connection:
        connection.sendall(request)
        data = read_until_closed(connection)
    responses = parse_responses(data)
    assert [r.status for r in responses] == [400], (
        f"expected exactly one answer, a 400, then the connection closed; got {responses}"
    )
    assert responses[0].headers.get("connection") == "close"
    after = metrics(server.port)
    assert delta(before, after, "resnet_serve_http_requests_total", route="/v1/classify", status="200") == 0
    assert delta(before, after, "resnet_serve_images_inferred_total") == 0
    return responses, before, after


@pytest.mark.parametrize(
    "header_lines",
    [
        ["Content-Length: {length}", "Transfer-Encoding: chunked"],
        ["Transfer-Encoding: chunked", "Content-Length: {length}"],
        ["Content-Length: {length}", "TRANSFER-ENCODING: CHUNKED"],
        ["Content-Length: {length}", "Transfer-Encoding: gzip, chunked"],
    ],
    ids=["length-first", "chunked-first", "upper-case", "coding-list"],
)
def test_content_length_with_transfer_encoding_is_refused_once_and_the_hidden_request_never_runs(
    server, example_pngs, header_lines
):
    """Attack (request smuggling, RFC 9112 section 6.1): Content-Length and Transfer-Encoding: chunked together,
    the chunked body ending at once so that a complete classify request hides behind it. The server must answer
    exactly one 400 with Connection: close and close the socket; the hidden request must never run (no second
    response, no classify request counted, no image decoded)."""
    responses, before, after = assert_one_400_and_the_hidden_request_never_ran(
        server, smuggling_request(example_pngs["bag"], header_lines=header_lines)
    )
    assert responses[0].error_code == "malformed_request"
    assert delta(before, after, "resnet_serve_connections_refused_total", reason="framing") == 1
    # The guard refused it before the parser saw it: not even the outer request reached the app.
    assert delta(before, after, "resnet_serve_http_requests_total", route="/v1/classify") == 0
    assert delta(before, after, "resnet_serve_images_decoded_total") == 0


def test_smuggling_with_bare_lf_line_endings_is_refused_and_the_hidden_request_never_runs(server, example_pngs):
    """Attack: the same smuggling request with its head's lines ended by a bare LF instead of CRLF, which the HTTP
    parser may accept (RFC 9112 section 2.2 allows it; h11 does, httptools does not). Whichever refuses it, the
    guard or the parser, the server must answer exactly one 400 and close the connection, and the hidden classify
    request must never run."""
    request = smuggling_request(
        example_pngs["bag"], header_lines=["Content-Length: {length}", "Transfer-Encoding: chunked"], line_end=b"\n"
    )
    assert_one_400_and_the_hidden_request_never_ran(server, request)


@pytest.mark.parametrize("declared", [4 * MAX_UPLOAD_BYTES, 2**80], ids=["4x-the-limit", "2^80"])
def test_chunk_declaring_more_than_the_upload_limit_is_refused_before_its_data(server, declared):
    """Attack: a chunked upload whose first chunk-size line declares more than --max-upload-bytes (4 times the
    limit, and 2^80). Only the head and the chunk-size line are sent, none of the chunk's data: the server must
    answer 413 upload_too_large with Connection: close at once (it cannot wait for data that never comes, and a
    body deadline would answer 408) and close the connection."""
    before = metrics(server.port)
    with connect(server.port) as connection:
        head = request_bytes("POST", "/v1/classify", content_type="image/png", headers={"Transfer-Encoding": "chunked"})
        connection.sendall(head + b"%x\r\n" % declared)
        data = read_until_closed(connection)
    responses = parse_responses(data)
    assert [r.status for r in responses] == [413], responses
    assert responses[0].headers.get("connection") == "close"
    assert responses[0].error_code == "upload_too_large"
    after = metrics(server.port)
    assert delta(before, after, "resnet_serve_connections_refused_total", reason="framing") == 1
    assert delta(before, after, "resnet_serve_images_decoded_total") == 0


def keep_writing(connection, total: int, block: bytes) -> int:
    """Write up to `total` bytes in blocks until the server stops taking them; returns the bytes written."""
    sent = 0
    while sent < total:
        try:
            sent += connection.send(block[: total - sent])
        except TimeoutError:
            pytest.fail(f"the server neither read nor closed after {sent} bytes of the upload")
        except OSError as exc:
            if exc.errno in CLOSED_BY_PEER:
                return sent
            raise
    return sent


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upload_refused_while_the_client_still_writes_says_close_and_stops_reading(server, framing):
    """Attack: an upload 256 times --max-upload-bytes that the client keeps writing after the server has refused it
    (declared up front by Content-Length, or chunk by chunk in honest 64 KiB chunks). The server must answer 413
    with Connection: close, which the client can still read, and stop reading: the client's writes end in a
    reset or broken pipe before half of the 256 MiB are through (socket buffers on loopback hold at most tens of
    MiB; a server that read and discarded the upload would take it all), and the connection is closed after the
    answer."""
    total = 256 * MAX_UPLOAD_BYTES
    block = 64 * 1024
    with connect(server.port) as connection:
        if framing == "content-length":
            connection.sendall(request_bytes("POST", "/v1/classify", content_type="image/png", content_length=total))
            sent = keep_writing(connection, total, b"\x89" * block)
        else:
            connection.sendall(
                request_bytes(
                    "POST", "/v1/classify", content_type="image/png", headers={"Transfer-Encoding": "chunked"}
                )
            )
            chunk = b"%x\r\n" % block + b"\x89" * block + b"\r\n"
            sent = keep_writing(connection, total // block * len(chunk), chunk * 16)
        data = read_until_closed(connection)
    assert sent < total // 2, f"the server went on reading the refused upload ({sent} bytes taken)"
    responses = parse_responses(data)
    assert [r.status for r in responses] == [413], responses
    assert responses[0].headers.get("connection") == "close"
    assert responses[0].error_code == "upload_too_large"
