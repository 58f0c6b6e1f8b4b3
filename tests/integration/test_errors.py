"""Every error a client can cause, against the real server: status, stable JSON shape, a message a person
understands, no stack trace, and no effect on other requests."""

from __future__ import annotations

import io
import json
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

LIMIT = 1_048_576  # tiny_server's --max-upload-bytes


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD = png(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))


def assert_error(response: httpx.Response, status: int, code: str, *message_parts: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status
    assert error["code"] == code
    for part in message_parts:
        assert part in error["message"]
    assert "Traceback" not in response.text
    return error


def classify(server, *, model: str = "tiny-gray", params=None, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/models/{model}/classify", params=params, timeout=60, **kwargs)


# --- 400 --------------------------------------------------------------------------------------------------------


def test_bad_image_fails_its_own_request_only(tiny_server):
    outcome: dict[str, httpx.Response] = {}

    def good_client() -> None:
        outcome["good"] = classify(tiny_server, files={"file": ("fine.png", GOOD, "image/png")})

    neighbour = threading.Thread(target=good_client)
    neighbour.start()
    bad = classify(
        tiny_server,
        files=[
            ("file", ("fine.png", GOOD, "image/png")),
            ("file", ("broken.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 50, "image/png")),
        ],
    )
    neighbour.join()
    error = assert_error(bad, 400, "invalid_image", "broken.png", "header cannot be read")
    assert error["filename"] == "broken.png"
    assert outcome["good"].status_code == 200


def test_truncated_image_says_why(tiny_server, photos):
    buffer = io.BytesIO()
    photos["chelsea"].save(buffer, format="PNG")
    data = buffer.getvalue()
    response = classify(tiny_server, files={"file": ("half.png", data[: len(data) // 2], "image/png")})
    assert_error(response, 400, "invalid_image", "half.png", "cannot be decoded")


def test_empty_file_is_invalid(tiny_server):
    assert_error(classify(tiny_server, files={"file": ("empty.png", b"", "image/png")}), 400, "invalid_image", "empty")


def test_broken_multipart_framing_is_malformed(tiny_server):
    body = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + GOOD  # no end
    response = classify(tiny_server, content=body, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert_error(response, 400, "malformed_request", "closing boundary")


def test_multipart_without_boundary_is_malformed(tiny_server):
    response = classify(tiny_server, content=b"whatever", headers={"Content-Type": "multipart/form-data"})
    assert_error(response, 400, "malformed_request", "boundary")


# --- 404 / 405 --------------------------------------------------------------------------------------------------


def test_unknown_model(tiny_server):
    response = classify(tiny_server, model="resnet9000", files={"file": ("a.png", GOOD, "image/png")})
    assert_error(response, 404, "model_not_found", "no model named 'resnet9000'", "tiny-gray, tiny-rgb, tiny-sidecar")
    assert_error(httpx.get(f"{tiny_server.url}/v1/models/resnet9000", timeout=30), 404, "model_not_found")


def test_unknown_route_and_wrong_method_use_the_same_shape(tiny_server):
    assert_error(httpx.get(f"{tiny_server.url}/v9/whatever", timeout=30), 404, "not_found", "/v9/whatever")
    assert_error(httpx.get(f"{tiny_server.url}/v1/classify", timeout=30), 405, "method_not_allowed")
    # Under /v2 the Open Inference Protocol's own shape: {"error": "<message>"}.
    response = httpx.get(f"{tiny_server.url}/v2/whatever", timeout=30)
    assert (
        response.status_code == 404 and response.json()["error"] == "no route GET /v2/whatever; see /docs for the API"
    )
    assert response.json()["request_id"] == response.headers["x-request-id"]


# --- 413 --------------------------------------------------------------------------------------------------------


def test_declared_body_over_the_limit_is_refused_before_it_is_sent(tiny_server, http_raw):
    head = (
        f"POST /v1/models/tiny-gray/classify HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {LIMIT * 5}\r\n\r\n"
    ).encode()
    status, body = http_raw(tiny_server.port, head)  # not one byte of the body is ever sent
    assert status == 413
    assert b'"code":"upload_too_large"' in body


def test_streamed_body_over_the_limit_is_refused_while_it_streams(tiny_server, http_raw):
    head = (
        b"POST /v1/models/tiny-gray/classify HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: multipart/form-data; boundary=xyz\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
    payload = part + b"\0" * (LIMIT + 4096)
    chunk = f"{len(payload):x}\r\n".encode() + payload + b"\r\n"
    # The body is never finished (no closing chunk): an answer can only come from counting bytes as they arrive.
    status, body = http_raw(tiny_server.port, head, [chunk])
    assert status == 413
    assert b'"code":"upload_too_large"' in body


def test_image_over_the_pixel_limit(tiny_server):
    bomb = io.BytesIO()
    Image.new("L", (3000, 3000), 0).save(bomb, format="PNG", optimize=True)  # 9 Mpx, limit 4 Mpx, a few kB
    response = classify(tiny_server, files={"file": ("bomb.png", bomb.getvalue(), "image/png")})
    assert_error(response, 413, "image_too_large", "bomb.png", "3000x3000 = 9000000 pixels, over the limit of 4000000")


def test_too_many_files(tiny_server):
    response = classify(tiny_server, files=[("file", (f"{i}.png", GOOD, "image/png")) for i in range(5)])
    assert_error(response, 413, "too_many_files", "at most 4")


# --- 415 --------------------------------------------------------------------------------------------------------


def test_unsupported_request_content_type(tiny_server):
    response = classify(tiny_server, content=b"hello", headers={"Content-Type": "text/plain"})
    assert_error(response, 415, "unsupported_type", "'text/plain'", "multipart/form-data")


def test_unsupported_declared_image_type(tiny_server):
    response = classify(tiny_server, content=GOOD, headers={"Content-Type": "image/heic"})
    assert_error(response, 415, "unsupported_type", "'image/heic'")


def test_part_that_is_not_an_image(tiny_server):
    response = classify(tiny_server, files={"file": ("notes.txt", b"just some text " * 20, "text/plain")})
    error = assert_error(response, 415, "unsupported_type", "notes.txt")
    assert error["filename"] == "notes.txt"


def test_unrecognised_bytes_without_a_type(tiny_server):
    response = classify(tiny_server, files={"file": ("blob", b"\x00\x01\x02" * 100, "application/octet-stream")})
    assert_error(response, 415, "unsupported_type", "not a recognised image")


# --- 422 --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "top_k,message",
    [
        ("0", "top_k"),
        ("11", "top_k must be between 1 and 10"),
        ("many", "top_k"),
    ],
)
def test_bad_top_k(tiny_server, top_k, message):
    response = classify(tiny_server, params={"top_k": top_k}, files={"file": ("a.png", GOOD, "image/png")})
    assert_error(response, 422, "invalid_parameter", message)


def test_unexpected_form_field(tiny_server):
    response = classify(tiny_server, files={"image": ("a.png", GOOD, "image/png")})
    assert_error(response, 422, "invalid_parameter", "unexpected form field 'image'", "named 'file'")


def test_multipart_without_any_file(tiny_server):
    response = classify(
        tiny_server, content=b"--xyz--\r\n", headers={"Content-Type": "multipart/form-data; boundary=xyz"}
    )
    assert_error(response, 422, "invalid_parameter", "carries no image")


def test_server_still_serves_after_all_of_the_above(tiny_server):
    assert classify(tiny_server, files={"file": ("a.png", GOOD, "image/png")}).status_code == 200


def test_an_unexpected_exception_is_a_500_that_closes_a_kept_alive_connection_cleanly(in_thread_server, tiny_model_dir):
    """A bug (an exception no handler expects) answers 500 in the error shape with `Connection: close`, then the
    connection ends with a FIN: a client that kept it alive must not meet a reset on its next request. The route
    that fails is the test's own, added to the real app; the gate, uvicorn and the socket are the server's."""
    import socket

    from service.config import Settings

    server = in_thread_server(Settings(model_dir=tiny_model_dir, grpc_port=0, access_log=False))

    async def broken() -> None:
        raise RuntimeError("a bug")

    server.app.add_api_route("/v1/broken", broken)
    server.start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as connection:
        connection.sendall(b"GET /v1/broken HTTP/1.1\r\nHost: x\r\nX-Request-ID: bug-1\r\n\r\n")
        data = b""
        while chunk := connection.recv(65536):  # a reset would raise here
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 ")
    assert b"\r\nconnection: close" in head.lower() and b"\r\nx-request-id: bug-1" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "internal_error" and error["request_id"] == "bug-1" and "a bug" not in body.decode()
    assert httpx.get(server.url + "/v1/models", timeout=60).status_code == 200
