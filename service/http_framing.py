"""HTTP/1.1 request framing followed over the raw bytes of one connection, beside the real parser.

`RequestFramingScanner` observes and never changes what the parser (h11 or httptools) receives. It tells the
connection's guard (`service.http_protocol`) when a request's head is complete, when its body is complete, and
when the framing itself is hostile, before the parser or the app has seen the offending bytes:

- a head larger than the limit (431);
- Content-Length together with Transfer-Encoding (RFC 9112 §6.1: request smuggling; 400);
- a Transfer-Encoding whose final coding is not chunked, or with chunked twice (400), or with a coding before
  chunked that we do not implement, such as gzip (501, RFC 9112 §6.1: ignoring it would read another body than
  the one a proxy in front of us sees);
- conflicting or malformed Content-Length values (400);
- a chunk, or chunks in total, declaring more bytes than the upload limit (413, at once, before they arrive).

Pure: bytes in, events out, no clock and no I/O, so it is tested without a socket. Anything it does not
understand it leaves to the real parser (the scanner stops following the connection), so it can only ever
refuse what is clearly refusable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, auto

_CRLF = b"\r\n"
_HEAD_END = re.compile(rb"\r?\n\r?\n")
"""The blank line ending a head; parsers such as h11 accept bare LF line endings, so the scanner must too."""
_MAX_CHUNK_LINE = 4096
"""A chunk-size line with extensions longer than this is hostile (h11 allows 1 KiB of extensions)."""


class Framing(Enum):
    NONE = auto()
    """No body (no Content-Length, no Transfer-Encoding, or Content-Length 0)."""
    LENGTH = auto()
    CHUNKED = auto()


class _State(Enum):
    HEAD = auto()
    LENGTH_BODY = auto()
    CHUNK_SIZE = auto()
    CHUNK_DATA = auto()
    CHUNK_DATA_END = auto()
    TRAILERS = auto()
    LOST = auto()
    """The scanner no longer follows this connection (the parser decides alone)."""


@dataclass(frozen=True)
class HeadComplete:
    framing: Framing
    content_length: int | None


@dataclass(frozen=True)
class BodyComplete:
    pass


@dataclass(frozen=True)
class FramingViolation:
    status: int
    message: str


ScanEvent = HeadComplete | BodyComplete | FramingViolation


class RequestFramingScanner:
    """Follows request heads, Content-Length bodies and chunked bodies on one connection."""

    def __init__(self, *, max_head_bytes: int, max_body_bytes: int) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        self._state = _State.HEAD
        self._buffer = bytearray()
        self._remaining = 0
        self._declared_total = 0
        self.bytes_of_current_request = 0
        """Bytes seen of the request being received (0 between requests): a request has begun when > 0."""

    @property
    def following(self) -> bool:
        return self._state is not _State.LOST

    @property
    def between_requests(self) -> bool:
        """No byte of a new request has arrived since the last request's body ended."""
        return self._state is _State.HEAD and self.bytes_of_current_request == 0

    @property
    def in_head(self) -> bool:
        """Some bytes of a request have arrived, its head not yet complete."""
        return self._state is _State.HEAD and self.bytes_of_current_request > 0

    def feed(self, data: bytes) -> list[ScanEvent]:
        events: list[ScanEvent] = []
        view = memoryview(data)
        while view and self._state is not _State.LOST:
            consumed = self._step(view, events)
            if events and isinstance(events[-1], FramingViolation):
                self._state = _State.LOST
                break
            view = view[consumed:]
        return events

    def _step(self, view: memoryview, events: list[ScanEvent]) -> int:
        state = self._state
        if state is _State.HEAD:
            return self._scan_head(view, events)
        if state is _State.LENGTH_BODY:
            taken = min(self._remaining, len(view))
            self._remaining -= taken
            self.bytes_of_current_request += taken
            if self._remaining == 0:
                self._end_body(events)
            return taken
        if state is _State.CHUNK_DATA:
            taken = min(self._remaining, len(view))
            self._remaining -= taken
            self.bytes_of_current_request += taken
            if self._remaining == 0:
                self._state = _State.CHUNK_DATA_END
                self._remaining = 2
            return taken
        if state is _State.CHUNK_DATA_END:
            taken = min(self._remaining, len(view))
            self._remaining -= taken
            self.bytes_of_current_request += taken
            if self._remaining == 0:
                self._state = _State.CHUNK_SIZE
            return taken
        line, consumed = self._line(view, _MAX_CHUNK_LINE)
        if line is None:
            if consumed < 0:
                events.append(FramingViolation(400, "a chunk-size or trailer line is too long"))
                return len(view)
            return consumed
        if state is _State.CHUNK_SIZE:
            self._chunk_size(line, events)
        elif line == b"":  # TRAILERS: an empty line ends them
            self._end_body(events)
        return consumed

    def _line(self, view: memoryview, limit: int) -> tuple[bytes | None, int]:
        """A line ended by LF (CR stripped), assembled across feeds: (line, bytes consumed), or (None, bytes
        buffered), or (None, -1) when the line passes `limit`."""
        newline = bytes(view[: limit + 1]).find(b"\n")
        if newline < 0:
            self._buffer += view[: limit + 1]
            self.bytes_of_current_request += min(len(view), limit + 1)
            return (None, -1) if len(self._buffer) > limit else (None, len(view))
        self._buffer += view[:newline]
        line = bytes(self._buffer)
        self._buffer.clear()
        self.bytes_of_current_request += newline + 1
        return (line[:-1] if line.endswith(b"\r") else line), newline + 1

    def _scan_head(self, view: memoryview, events: list[ScanEvent]) -> int:
        if not self._buffer and bytes(view[:1]) in (b"\r", b"\n"):
            # Empty lines before a request line are allowed (RFC 9112 §2.2); they count as the request's start,
            # so that a client cannot keep a socket open forever by sending nothing else.
            skipped = 2 if view[:2] == _CRLF else 1
            self.bytes_of_current_request += skipped
            return skipped
        searched_from = max(0, len(self._buffer) - 3)
        window = bytes(view[: self.max_head_bytes + 4])
        self._buffer += window
        found = _HEAD_END.search(self._buffer, searched_from)
        if found is None:
            self.bytes_of_current_request += len(window)
            if len(self._buffer) > self.max_head_bytes:
                events.append(FramingViolation(431, f"the request head is larger than {self.max_head_bytes} bytes"))
            return len(window)
        end, head_length = found.start(), found.end()
        consumed = len(window) - (len(self._buffer) - head_length)
        self.bytes_of_current_request += consumed
        head = bytes(self._buffer[:end])
        self._buffer.clear()
        if head_length > self.max_head_bytes:
            events.append(FramingViolation(431, f"the request head is larger than {self.max_head_bytes} bytes"))
            return consumed
        self._framing(head, events)
        return consumed

    def _framing(self, head: bytes, events: list[ScanEvent]) -> None:
        lengths: set[bytes] = set()
        codings: list[bytes] = []
        for line in head.split(b"\n")[1:]:
            name, colon, value = line.rstrip(b"\r").partition(b":")
            if not colon:
                continue
            name = name.strip().lower()
            if name == b"content-length":
                lengths.update(part.strip() for part in value.split(b","))
            elif name == b"transfer-encoding":
                codings += [part.strip().lower() for part in value.split(b",") if part.strip()]
        if codings and lengths:
            events.append(
                FramingViolation(
                    400, "the request has both Content-Length and Transfer-Encoding; send one (RFC 9112 section 6.1)"
                )
            )
            return
        if codings:
            if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
                events.append(
                    FramingViolation(
                        400,
                        "the request's Transfer-Encoding must end with chunked, applied once (RFC 9112 section 6.1)",
                    )
                )
                return
            if len(codings) > 1:
                others = ", ".join(coding.decode("latin-1") for coding in codings[:-1])
                events.append(
                    FramingViolation(
                        501,
                        f"Transfer-Encoding {others} is not implemented; send the body chunked only, and compress it "
                        f"with Content-Encoding instead",
                    )
                )
                return
            events.append(HeadComplete(Framing.CHUNKED, None))
            self._declared_total = 0
            self._state = _State.CHUNK_SIZE
            return
        if len(lengths) > 1 or any(not value.isdigit() for value in lengths):
            events.append(FramingViolation(400, "the request's Content-Length is invalid or given twice differently"))
            return
        declared = int(next(iter(lengths))) if lengths else None
        length = declared or 0
        events.append(HeadComplete(Framing.LENGTH if length else Framing.NONE, declared))
        if length:
            self._remaining = length
            self._state = _State.LENGTH_BODY
        else:
            self._end_body(events)

    def _chunk_size(self, line: bytes, events: list[ScanEvent]) -> None:
        digits = line.split(b";", 1)[0].strip()
        try:
            size = int(digits, 16) if digits and all(c in b"0123456789abcdefABCDEF" for c in digits) else -1
        except ValueError:
            size = -1
        if size < 0:
            self._state = _State.LOST  # malformed: the parser answers 400
            return
        self._declared_total += size
        if self._declared_total > self.max_body_bytes:
            events.append(
                FramingViolation(413, f"the request body declares more than the limit of {self.max_body_bytes} bytes")
            )
            return
        if size == 0:
            self._state = _State.TRAILERS
        else:
            self._remaining = size
            self._state = _State.CHUNK_DATA

    def _end_body(self, events: list[ScanEvent]) -> None:
        events.append(BodyComplete())
        self._state = _State.HEAD
        self.bytes_of_current_request = 0
