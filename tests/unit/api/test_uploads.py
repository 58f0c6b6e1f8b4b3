"""Receiving request bodies (service/api/uploads.py): /v1's `UploadedImages` (multipart parts named 'file', or one
raw image) and the V2 reader `receive_body` (whole bodies, gzip or deflate decompressed as they stream), driven with
a real starlette `Request` whose ASGI `receive` hands out the chosen body chunks, and an `admit` that takes a real
`Admission` (room in a real `DynamicBatcher`, bytes in a real `ByteBudget`). What is checked before admission is
refused without admitting; what is counted while streaming is refused as soon as it passes a limit."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from typing import Any

import pytest
from starlette.requests import Request

from service.admission import Admission, ByteBudget, Ticket
from service.api.uploads import UploadedImages, UploadLimits, receive_body
from service.batching import DynamicBatcher, ImageReservation
from service.errors import (
    ClientDisconnected,
    InvalidParameter,
    MalformedRequest,
    RequestReceiptTimeout,
    ServiceError,
    TooManyFiles,
    UnsupportedMediaType,
    UploadTooLarge,
)
from service.http_protocol import REFUSAL_EXTENSION
from service.inference import EncodedImages
from service.preprocess import ImageUpload

LIMIT = 1000
LIMITS = UploadLimits(max_upload_bytes=LIMIT)
BOUNDARY = "the-boundary"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg data" * 5


class StandInModel:
    """Just what admission asks of a served model: its name and room in its (real) batcher."""

    def __init__(self) -> None:
        self.holds = 0
        """Requests resolved to this model that have not ended."""
        self.name = "toy"
        self.version = "1"
        self.batcher: DynamicBatcher[object, object] = DynamicBatcher(
            self.run_batch, name=self.name, max_batch_size=4, max_queue_size=16
        )

    @staticmethod
    def run_batch(payloads: list[object]) -> list[object]:
        return payloads

    def reserve(self, count: int) -> ImageReservation[object, object]:
        return self.batcher.reserve(count)

    def request_started(self) -> None:
        self.holds += 1

    def request_finished(self) -> None:
        self.holds -= 1


class Admit:
    """The data plane's `admit` for one request: a real `Admission`, recording the declared sizes it was called with."""

    def __init__(self, *, max_images: int = 4, budget_bytes: int = 100_000) -> None:
        self.model = StandInModel()
        self.budget = ByteBudget(budget_bytes)
        self.admission = Admission(
            self.model,
            received_at=0.0,
            deadline=1e9,
            budget=self.budget,
            max_images=max_images,
            max_input_values=1000,
        )
        self.declared: list[int | None] = []

    def __call__(self, declared: int | None) -> Ticket:
        self.declared.append(declared)
        return self.admission(declared)

    @property
    def ticket(self) -> Ticket:
        assert self.admission.ticket is not None, "the request was never admitted"
        return self.admission.ticket


class Body:
    """An ASGI `receive` handing out `chunks` as http.request messages, then http.disconnect; unless `complete`, the
    client leaves before its body's end (the last chunk still says more_body)."""

    def __init__(self, chunks: list[bytes], *, complete: bool = True) -> None:
        self.chunks = chunks
        self.complete = complete
        self.read = 0
        """Chunks handed out so far."""

    async def __call__(self) -> dict[str, Any]:
        if self.read < len(self.chunks):
            self.read += 1
            return {
                "type": "http.request",
                "body": self.chunks[self.read - 1],
                "more_body": not self.complete or self.read < len(self.chunks),
            }
        return {"type": "http.disconnect"}


def request(headers: dict[str, str], body: Body, *, path: str = "/v1/classify") -> Request:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()],
        "client": ("127.0.0.1", 50123),
        "server": ("127.0.0.1", 8000),
        "extensions": {},
    }
    return Request(scope, body)


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def part(data: bytes, *, name: str = "file", filename: str | None = None, content_type: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + data + b"\r\n"


def multipart(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def receive_images(headers: dict[str, str], chunks: list[bytes], admit: Admit) -> tuple[Request, EncodedImages]:
    req = request(headers, Body(chunks))

    async def scenario() -> EncodedImages:
        received = await UploadedImages(req, LIMITS).receive(admit)
        assert isinstance(received.inputs, EncodedImages)
        return received.inputs

    return req, asyncio.run(scenario())


def refusal(headers: dict[str, str], body: Body, admit: Admit) -> ServiceError:
    """The service error `UploadedImages.receive` refuses this request with (each test checks which)."""

    async def scenario() -> None:
        received = await UploadedImages(request(headers, body), LIMITS).receive(admit)
        raise AssertionError(f"the request was not refused; it carried {received.inputs!r}")

    try:
        asyncio.run(scenario())
    except ServiceError as error:
        return error
    raise AssertionError("unreachable")


# --- /v1: UploadedImages ------------------------------------------------------------------------------------------


def test_multipart_parts_named_file_become_uploads_counted_into_the_ticket():
    data = multipart(
        part(PNG, filename="first.png", content_type="image/png"),
        part(JPEG, filename="second.jpg", content_type="image/jpeg"),
    )
    admit = Admit()
    req, images = receive_images({**MULTIPART, "content-length": str(len(data))}, pieces(data, 7), admit)
    assert list(images.uploads) == [
        ImageUpload(PNG, filename="first.png", content_type="image/png"),
        ImageUpload(JPEG, filename="second.jpg", content_type="image/jpeg"),
    ]
    assert admit.declared == [len(data)]
    assert admit.ticket.image_count == 2 and admit.model.batcher.reserved == 2
    assert admit.budget.in_use == len(data)
    assert (req.state.images, req.state.model, req.state.protocol) == (2, "toy", "v1")
    admit.admission.close()
    assert admit.budget.in_use == 0 and admit.model.batcher.reserved == 0


def test_a_multipart_part_without_a_filename_or_type_keeps_them_none():
    data = multipart(part(PNG))
    admit = Admit()
    _, images = receive_images(MULTIPART, [data], admit)
    assert list(images.uploads) == [ImageUpload(PNG, filename=None, content_type=None)]
    assert admit.declared == [None]


def test_a_raw_image_body_is_one_upload_without_a_filename():
    admit = Admit()
    req, images = receive_images({"content-type": "image/png", "content-length": str(len(PNG))}, pieces(PNG, 10), admit)
    assert list(images.uploads) == [ImageUpload(PNG, filename=None, content_type="image/png")]
    assert admit.declared == [len(PNG)]
    assert admit.ticket.image_count == 1 and admit.budget.in_use == len(PNG)
    assert req.state.images == 1


@pytest.mark.parametrize("content_type", ["application/json", "text/plain; charset=utf-8", None])
def test_an_unsupported_content_type_is_refused_before_admission(content_type):
    admit = Admit()
    body = Body([PNG])
    headers = {"content-length": str(len(PNG))} | ({"content-type": content_type} if content_type else {})
    error = refusal(headers, body, admit)
    assert isinstance(error, UnsupportedMediaType) and error.status_code == 415
    assert admit.declared == [] and body.read == 0
    assert admit.budget.in_use == 0 and admit.model.batcher.reserved == 0


def test_a_declared_length_over_the_limit_is_refused_before_admission():
    admit = Admit()
    body = Body([b"x" * (LIMIT + 1)])
    error = refusal({"content-type": "image/png", "content-length": str(LIMIT + 1)}, body, admit)
    assert isinstance(error, UploadTooLarge) and f"limit of {LIMIT} bytes" in error.message
    assert admit.declared == [] and body.read == 0


def test_an_invalid_content_length_is_malformed():
    admit = Admit()
    error = refusal({"content-type": "image/png", "content-length": "12abc"}, Body([PNG]), admit)
    assert isinstance(error, MalformedRequest) and admit.declared == []


def test_a_chunked_body_is_refused_as_it_passes_the_limit():
    admit = Admit()
    body = Body([b"x" * 300] * 10)
    error = refusal({"content-type": "image/png"}, body, admit)
    assert isinstance(error, UploadTooLarge)
    assert admit.declared == [None]
    assert body.read == 4  # 1200 bytes read is past 1000: nothing more was read
    assert admit.budget.in_use == 900  # the chunk that passed the limit was never counted


def test_a_part_not_named_file_is_an_invalid_parameter():
    admit = Admit()
    error = refusal(MULTIPART, Body([multipart(part(PNG, name="image"))]), admit)
    assert isinstance(error, InvalidParameter) and "'image'" in error.message


def test_a_multipart_body_without_its_closing_boundary_is_malformed():
    admit = Admit()
    error = refusal(MULTIPART, Body([multipart(part(PNG, filename="a.png"), close=False)]), admit)
    assert isinstance(error, MalformedRequest) and "closing boundary" in error.message


def test_multipart_without_a_boundary_is_malformed():
    admit = Admit()
    error = refusal({"content-type": "multipart/form-data"}, Body([multipart(part(PNG))]), admit)
    assert isinstance(error, MalformedRequest) and "boundary" in error.message


def test_more_parts_than_a_request_may_carry_are_refused_while_streaming():
    admit = Admit(max_images=2)
    chunks = [part(PNG), part(PNG), part(PNG), part(PNG), multipart()]
    body = Body(chunks)
    error = refusal(MULTIPART, body, admit)
    assert isinstance(error, TooManyFiles) and error.status_code == 413
    assert body.read == 3  # refused at the third part's headers, the rest never read
    assert admit.ticket.image_count == 2


def test_a_client_leaving_mid_upload_is_a_disconnect():
    admit = Admit()
    error = refusal(
        {"content-type": "image/png", "content-length": "500"}, Body([b"x" * 10] * 2, complete=False), admit
    )
    assert isinstance(error, ClientDisconnected) and error.status_code == 499


def test_a_body_the_protocol_guard_timed_out_is_a_receipt_timeout():
    admit = Admit()
    req = request({"content-type": "image/png", "content-length": "500"}, Body([b"x" * 10], complete=False))
    req.scope["extensions"][REFUSAL_EXTENSION] = {"status": 408, "reason": "body_timeout"}

    async def scenario() -> None:
        await UploadedImages(req, LIMITS).receive(admit)

    with pytest.raises(RequestReceiptTimeout):
        asyncio.run(scenario())


# --- V2: receive_body ---------------------------------------------------------------------------------------------


def read_whole(headers: dict[str, str], chunks: list[bytes], admit: Admit) -> tuple[Ticket, bytes]:
    req = request(headers, Body(chunks), path="/v2/models/toy/infer")

    async def scenario() -> tuple[Ticket, bytes]:
        return await receive_body(req, LIMITS, admit, protocol="v2-http")

    return asyncio.run(scenario())


def read_refusal(headers: dict[str, str], chunks: list[bytes], admit: Admit) -> ServiceError:
    """The service error `receive_body` refuses this request with (each test checks which)."""
    try:
        _, body = read_whole(headers, chunks, admit)
    except ServiceError as error:
        return error
    raise AssertionError(f"the request was not refused; its body read as {body!r}")


def test_a_plain_body_is_read_whole_with_its_declared_size_admitted():
    admit = Admit()
    data = b'{"inputs": []}' * 10
    ticket, body = read_whole({"content-length": str(len(data))}, pieces(data, 16), admit)
    assert body == data and ticket is admit.ticket
    assert admit.declared == [len(data)] and admit.budget.in_use == len(data)


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate"])
def test_a_compressed_body_is_decompressed_and_its_decompressed_bytes_counted(encoding):
    data = b'{"inputs": [{"name": "x", "data": [1, 2, 3]}]}' * 15
    compressed = zlib.compress(data) if encoding == "deflate" else gzip.compress(data)
    assert len(compressed) < len(data) <= LIMIT
    admit = Admit()
    headers = {"content-encoding": encoding, "content-length": str(len(compressed))}
    ticket, body = read_whole(headers, pieces(compressed, 9), admit)
    assert body == data
    assert admit.declared == [None]  # the compressed size says nothing of what the body holds
    assert admit.budget.in_use == len(data)
    assert ticket.image_count == 0


def test_a_gzip_bomb_is_refused_once_it_passes_the_limit_decompressed():
    bomb = gzip.compress(b"\0" * 500_000)
    assert len(bomb) < LIMIT
    admit = Admit()
    error = read_refusal({"content-encoding": "gzip", "content-length": str(len(bomb))}, [bomb], admit)
    assert isinstance(error, UploadTooLarge) and "once decompressed" in error.message
    assert admit.budget.in_use <= LIMIT  # never held (nor allocated) past the limit


def test_an_unknown_content_encoding_is_refused_before_admission():
    admit = Admit()
    error = read_refusal({"content-encoding": "br", "content-length": "5"}, [b"hello"], admit)
    assert isinstance(error, UnsupportedMediaType) and "'br'" in error.message
    assert admit.declared == []


def test_a_truncated_gzip_stream_is_malformed():
    compressed = gzip.compress(b"some json that is cut short" * 10)
    admit = Admit()
    error = read_refusal({"content-encoding": "gzip"}, [compressed[: len(compressed) // 2]], admit)
    assert isinstance(error, MalformedRequest) and "ends before" in error.message


def test_bytes_that_are_not_gzip_are_malformed():
    admit = Admit()
    error = read_refusal({"content-encoding": "gzip"}, [b"this is not a gzip stream at all"], admit)
    assert isinstance(error, MalformedRequest) and "cannot be decompressed" in error.message


def test_a_gzip_body_of_several_members_is_refused():
    # Several members are valid gzip (RFC 1952), but a proxy or WAF that stops at the first member would check one
    # body and let us read another: whatever follows the first compressed stream is refused, never read.
    first, second = b'{"inputs": [{"name": "x", ', b'"data": [1, 2, 3]}]}'
    members = gzip.compress(first) + gzip.compress(second)
    admit = Admit()
    error = read_refusal({"content-encoding": "gzip", "content-length": str(len(members))}, pieces(members, 11), admit)
    assert isinstance(error, MalformedRequest) and "data follows the end of the gzip stream" in error.message


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_bytes_after_the_end_of_the_compressed_stream_are_not_silently_dropped(encoding):
    data = b'{"inputs": []}'
    compressed = zlib.compress(data) if encoding == "deflate" else gzip.compress(data)
    admit = Admit()
    error = read_refusal({"content-encoding": encoding}, [compressed, b"trailing bytes that are not compressed"], admit)
    assert isinstance(error, MalformedRequest)
