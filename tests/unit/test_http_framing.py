"""The framing scanner: request heads, bodies and hostile framing, fed byte streams as a socket would."""

from __future__ import annotations

import pytest

from service.http_framing import BodyComplete, Framing, FramingViolation, HeadComplete, RequestFramingScanner


def scanner(max_head: int = 8192, max_body: int = 1000) -> RequestFramingScanner:
    return RequestFramingScanner(max_head_bytes=max_head, max_body_bytes=max_body)


def feed_in_pieces(data: bytes, size: int, scan: RequestFramingScanner | None = None) -> list:
    scan = scan or scanner()
    events = []
    for start in range(0, len(data), size):
        events += scan.feed(data[start : start + size])
    return events


GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nX-Trailer: y\r\n\r\n"
)


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 1000])
def test_pipelined_requests_are_followed_whatever_the_read_sizes(piece):
    events = feed_in_pieces(b"\r\n" + GET + POST + CHUNKED + GET, piece)
    assert events == [
        HeadComplete(Framing.NONE, None),
        BodyComplete(),
        HeadComplete(Framing.LENGTH, 5),
        BodyComplete(),
        HeadComplete(Framing.CHUNKED, None),
        BodyComplete(),
        HeadComplete(Framing.NONE, None),
        BodyComplete(),
    ]


def test_progress_of_the_current_request():
    scan = scanner()
    assert scan.between_requests
    scan.feed(POST[:10])
    assert not scan.between_requests and scan.bytes_of_current_request == 10
    scan.feed(POST[10:])
    assert scan.between_requests


def test_content_length_with_transfer_encoding_is_refused_before_the_body():
    smuggled = (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    (event,) = scanner().feed(smuggled)
    assert isinstance(event, FramingViolation) and event.status == 400 and "RFC 9112" in event.message


@pytest.mark.parametrize("size_line", [b"%x" % 1001, b"1" + b"0" * 20, b"%x;a=b" % (4 * 1000)])
def test_a_declared_chunk_over_the_limit_is_refused_before_its_data(size_line):
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    events = scanner().feed(head + size_line + b"\r\nxy")
    assert events[0] == HeadComplete(Framing.CHUNKED, None)
    assert isinstance(events[1], FramingViolation) and events[1].status == 413


def test_chunks_adding_up_past_the_limit_are_refused():
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n" % 600 + b"a" * 600 + b"\r\n"
    events = feed_in_pieces(head + chunk + b"%x\r\n" % 600, 50)
    assert events[-1].status == 413


def test_an_oversized_head_is_refused():
    events = feed_in_pieces(b"GET / HTTP/1.1\r\n" + b"X-Fill: " + b"a" * 500 + b"\r\n", 64, scanner(max_head=256))
    assert isinstance(events[-1], FramingViolation) and events[-1].status == 431


@pytest.mark.parametrize(
    "lengths", [b"Content-Length: 5\r\nContent-Length: 6\r\n", b"Content-Length: -1\r\n", b"Content-Length: 5x\r\n"]
)
def test_bad_content_length_is_refused(lengths):
    (event,) = scanner().feed(b"POST / HTTP/1.1\r\n" + lengths + b"\r\n")
    assert isinstance(event, FramingViolation) and event.status == 400


@pytest.mark.parametrize(
    "codings,status",
    [
        (b"gzip", 400),  # chunked must be the final coding of a request (RFC 9112 section 6.1)
        (b"chunked, gzip", 400),
        (b"chunked, chunked", 400),
        (b"gzip, chunked", 501),  # well-formed, but a coding we do not implement
        (b"deflate, chunked", 501),
        (b"identity, chunked", 501),
    ],
)
def test_transfer_codings_other_than_a_single_chunked_are_refused(codings, status):
    (event,) = scanner().feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: " + codings + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert isinstance(event, FramingViolation) and event.status == status
    assert "Transfer-Encoding" in event.message


def test_transfer_codings_split_over_header_lines_are_read_together():
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    (event,) = scanner().feed(head)
    assert isinstance(event, FramingViolation) and event.status == 501


def test_what_the_scanner_does_not_understand_is_left_to_the_parser():
    scan = scanner()
    assert scan.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n") == [
        HeadComplete(Framing.CHUNKED, None)
    ]
    assert not scan.following


@pytest.mark.parametrize("piece", [1, 5, 1000])
def test_bare_lf_line_endings_are_followed_too(piece):
    """h11 accepts heads whose lines end in a bare LF: smuggling written that way must be caught all the same."""
    events = feed_in_pieces(b"GET / HTTP/1.1\nHost: x\n\n" + b"POST / HTTP/1.1\nContent-Length: 3\n\nabc", piece)
    assert events == [HeadComplete(Framing.NONE, None), BodyComplete(), HeadComplete(Framing.LENGTH, 3), BodyComplete()]
    smuggled = b"POST / HTTP/1.1\nHost: x\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\r\n\r\n"
    (event,) = feed_in_pieces(smuggled, piece)
    assert isinstance(event, FramingViolation) and event.status == 400
