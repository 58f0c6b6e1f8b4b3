"""Receiving a request body as it streams in, with the size and count limits enforced on the way.

`UploadedImages` is /v1's body reader for the data plane (`inference.RequestBody`): ``multipart/form-data`` with
one or more parts named ``file`` (parsed incrementally with python-multipart's streaming parser), or a raw body
whose Content-Type is an image type. `receive_body` gives the V2 reader the whole body, decompressed when it says
``Content-Encoding: gzip`` or ``deflate``. Both check the headers before the request is admitted (415 for a body
form never read, 413 for a declared Content-Length over the limit), then take the admission, then count bytes
and images into its `Ticket` as they arrive: without a Content-Length (chunked uploads) the request is refused as
soon as the limit is passed, never buffering more, and a request the server has no room for is refused
mid-upload, before anything is decoded.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.admission import Ticket
from service.api.disconnect import client_gone
from service.errors import (
    ClientDisconnected,
    InvalidParameter,
    MalformedRequest,
    RequestReceiptTimeout,
    UnsupportedMediaType,
    UploadTooLarge,
)
from service.http_protocol import REFUSAL_EXTENSION
from service.inference import Admit, EncodedImages, ReceivedBody
from service.preprocess import ImageUpload

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
MAX_BOUNDARY_CHARS = 70
"""RFC 2046 §5.1.1: a multipart boundary has 1 to 70 characters (every client we know of stays within it)."""


@dataclass(frozen=True)
class UploadLimits:
    max_upload_bytes: int


class UploadAccounting(Protocol):
    """Where the bytes and images of an upload are counted as they arrive; each call may refuse the request."""

    def count_bytes(self, count: int) -> None: ...

    def count_images(self, total: int) -> None: ...


def _too_large(limits: UploadLimits) -> UploadTooLarge:
    return UploadTooLarge(f"the request body is larger than the limit of {limits.max_upload_bytes} bytes")


def declared_length(request: Request, limits: UploadLimits) -> int | None:
    """The declared body size, refused (413) before any of the body is read when it is over the limit."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    try:
        length = int(declared)
    except ValueError:
        raise MalformedRequest(f"invalid Content-Length header {declared!r}") from None
    if length > limits.max_upload_bytes:
        raise _too_large(limits)
    return length


async def _chunks(request: Request, limits: UploadLimits, accounting: UploadAccounting) -> AsyncGenerator[bytes, None]:
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limits.max_upload_bytes:
                raise _too_large(limits)
            if chunk:
                accounting.count_bytes(len(chunk))
                yield chunk
    except ClientDisconnect:
        refusal = request.scope.get("extensions", {}).get(REFUSAL_EXTENSION)
        if refusal is not None and refusal["status"] == 408:
            raise RequestReceiptTimeout("the request body did not arrive within its deadline") from None
        raise ClientDisconnected("the client disconnected during the upload") from None


class _MultipartCollector:
    """Callbacks for python-multipart's MultipartParser, keeping each 'file' part in memory (bounded by the
    upload limit)."""

    def __init__(self, accounting: UploadAccounting) -> None:
        self.accounting = accounting
        self.uploads: list[ImageUpload] = []
        self.finished = False
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._data = bytearray()
        self._name: str | None = None
        self._filename: str | None = None
        self._content_type: str | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda data, start, end: self._data.extend(data[start:end]),
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._data = bytearray()

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get("content-disposition", ""))
        if disposition != b"form-data" or b"name" not in options:
            raise MalformedRequest("a multipart part has no 'Content-Disposition: form-data; name=...' header")
        self._name = options[b"name"].decode("utf-8", errors="replace")
        if self._name != FILE_FIELD:
            raise InvalidParameter(f"unexpected form field {self._name!r}; send each image as a part named 'file'")
        self.accounting.count_images(len(self.uploads) + 1)
        raw_filename = options.get(b"filename")
        self._filename = raw_filename.decode("utf-8", errors="replace") if raw_filename is not None else None
        self._content_type = self._headers.get("content-type")

    def _part_end(self) -> None:
        self.uploads.append(ImageUpload(bytes(self._data), filename=self._filename, content_type=self._content_type))
        self._data = bytearray()

    def _end(self) -> None:
        self.finished = True


def check_boundary(boundary: bytes | None) -> bytes:
    """The multipart boundary of Content-Type, refused (400) before admission when missing or over RFC 2046's 70
    characters (the parser's own, larger limit raises an error of its own)."""
    if not boundary:
        raise MalformedRequest("multipart/form-data without a boundary parameter in Content-Type")
    if len(boundary) > MAX_BOUNDARY_CHARS:
        raise MalformedRequest(
            f"the multipart boundary has {len(boundary)} characters; at most {MAX_BOUNDARY_CHARS} are allowed "
            f"(RFC 2046 section 5.1.1)"
        )
    return boundary


async def _read_multipart(
    request: Request, boundary: bytes, limits: UploadLimits, accounting: UploadAccounting
) -> list[ImageUpload]:
    collector = _MultipartCollector(accounting)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        async with aclosing(_chunks(request, limits, accounting)) as chunks:
            async for chunk in chunks:
                parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:  # MultipartParseError and the parser's other refusals
        raise MalformedRequest(f"the multipart body is malformed ({exc})") from None
    if not collector.finished:
        raise MalformedRequest("the multipart body ended before its closing boundary")
    return collector.uploads


def check_media_type(request: Request) -> None:
    """Refuse a body form we never read (415) before admission, so that it holds nothing."""
    media_type, _ = parse_options_header(request.headers.get("content-type"))
    if media_type != b"multipart/form-data" and not media_type.startswith(b"image/"):
        shown = media_type.decode("latin-1") or "none"
        raise UnsupportedMediaType(
            f"request Content-Type {shown!r} is not supported; send multipart/form-data with parts named 'file' "
            f"or a raw image body with an image/* Content-Type"
        )


class UploadedImages:
    """/v1's request body: the images of a multipart or raw-image upload, in order."""

    def __init__(self, request: Request, limits: UploadLimits) -> None:
        self._request = request
        self._limits = limits

    async def receive(self, admit: Admit) -> ReceivedBody:
        request, limits = self._request, self._limits
        check_media_type(request)
        media_type, options = parse_options_header(request.headers.get("content-type"))
        boundary = check_boundary(options.get(b"boundary")) if media_type == b"multipart/form-data" else None
        ticket = _admitted(request, admit, declared_length(request, limits), "v1")
        if boundary is not None:
            uploads = await _read_multipart(request, boundary, limits, ticket)
        else:
            body = bytearray()
            async with aclosing(_chunks(request, limits, ticket)) as chunks:
                async for chunk in chunks:
                    body.extend(chunk)
            ticket.count_images(1)
            uploads = [ImageUpload(bytes(body), filename=None, content_type=media_type.decode("latin-1"))]
        request.state.images = len(uploads)
        return ReceivedBody(EncodedImages(uploads), client_gone=client_gone(request))


def _admitted(request: Request, admit: Admit, declared: int | None, protocol: str) -> Ticket:
    ticket = admit(declared)
    request.state.model, request.state.protocol = ticket.model.name, protocol
    request.state.version = ticket.model.version
    return ticket


async def receive_body(request: Request, limits: UploadLimits, admit: Admit, *, protocol: str) -> tuple[Ticket, bytes]:
    """Admit the request and read its whole body (decompressed, when its Content-Encoding says so)."""
    encoding = check_content_encoding(request)
    declared = declared_length(request, limits)
    # A compressed body's declared size says nothing of what it holds once decompressed: only that is counted.
    ticket = _admitted(request, admit, declared if encoding is None else None, protocol)
    return ticket, await read_body(request, limits, ticket, encoding)


_DECOMPRESSORS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""Content-Encoding -> zlib window bits; HTTP's "deflate" is the zlib format (RFC 9110 §8.4.1.2)."""


def check_content_encoding(request: Request) -> str | None:
    """The body's Content-Encoding (None for identity); 415 for one we do not decode."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding not in _DECOMPRESSORS:
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or identity")
    return encoding


async def read_body(
    request: Request, limits: UploadLimits, accounting: UploadAccounting, encoding: str | None
) -> bytes:
    """The whole body, decompressed as it streams when `encoding` says so; the upload limit applies to the
    decompressed size (a zip bomb is a 413 as soon as it passes the limit, never an allocation past it)."""
    parts: list[bytes] = []
    size = 0
    decompressor = zlib.decompressobj(_DECOMPRESSORS[encoding]) if encoding else None
    async with aclosing(
        _chunks(request, limits, _CompressedAccounting(accounting) if decompressor else accounting)
    ) as chunks:
        async for chunk in chunks:
            if decompressor is None:
                parts.append(chunk)
                continue
            if decompressor.eof:
                raise _trailing_data(encoding)
            try:
                while chunk:
                    room = limits.max_upload_bytes - size + 1
                    out = decompressor.decompress(chunk, room)
                    size += len(out)
                    if size > limits.max_upload_bytes:
                        raise UploadTooLarge(
                            f"the request body is larger than the limit of {limits.max_upload_bytes} "
                            f"bytes once decompressed"
                        )
                    accounting.count_bytes(len(out))
                    parts.append(out)
                    chunk = decompressor.unconsumed_tail
                    if decompressor.eof and decompressor.unused_data:
                        raise _trailing_data(encoding)
            except zlib.error as exc:
                raise MalformedRequest(f"the {encoding} body cannot be decompressed ({exc})") from None
    if decompressor is not None and not decompressor.eof:
        raise MalformedRequest(f"the {encoding} body ends before its compressed stream does")
    return b"".join(parts)


def _trailing_data(encoding: str | None) -> MalformedRequest:
    # A second gzip member is valid gzip, but a decoder in front of us that stops at the first would see another
    # body than we do: whatever follows the first compressed stream is refused, never read nor dropped.
    return MalformedRequest(
        f"data follows the end of the {encoding} stream; send one compressed stream and nothing after it"
    )


class _CompressedAccounting:
    """Compressed bytes only pass through; what is held (and counted) is what they decompress to."""

    def __init__(self, inner: UploadAccounting) -> None:
        self._inner = inner

    def count_bytes(self, count: int) -> None:
        pass

    def count_images(self, total: int) -> None:
        self._inner.count_images(total)
