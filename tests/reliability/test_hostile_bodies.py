"""The newer surfaces under hostile input, over raw sockets against a real server (issue 20): V2 JSON nested deep or
with huge integers, FP32 data as strings or not finite, bytes after a gzip member, Accept-Encoding weights,
transfer codings we do not implement, an over-long multipart boundary, a 500 on a kept-alive connection, a strip
image, and refusals in a burst that keep their connection. Each answer is a 4xx (or the 200 a valid request
gets) with a message, never a 5xx, the JSON out is always JSON, and the server answers a valid request after."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.reliability.harness import (
    HTTP_PARSERS,
    MODEL,
    classify_request,
    connect,
    exchange,
    parse_responses,
    parser_flags,
    poll,
    read_one_response,
    read_until_closed,
    request_bytes,
)

INFER = f"/v2/models/{MODEL}/infer"
VALID_FP32 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.5] * 784}]}


@pytest.fixture(scope="module")
def server(launch):
    return launch()


def post_json(server, body: bytes, headers: dict[str, str] | None = None):
    return exchange(
        server.port, request_bytes("POST", INFER, body=body, content_type="application/json", headers=headers)
    )


def assert_refused(response, status: int, words: str) -> None:
    assert response.status == status, response
    message = response.json()["error"]
    assert isinstance(message, str) and words in message, message


def assert_still_serving(server) -> None:
    answer = post_json(server, json.dumps(VALID_FP32).encode())
    assert answer.status == 200 and len(answer.json()["outputs"][0]["data"]) == 10


# --- item 1: JSON bounded ------------------------------------------------------------------------------------------


def test_json_nested_thousands_deep_is_a_400(server):
    assert_refused(post_json(server, b"[" * 5000 + b"]" * 5000), 400, "levels deep")
    body = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": ' + b"[" * 3000 + b"]" * 3000
    assert_refused(post_json(server, body + b"}]}"), 400, "levels deep")
    assert_still_serving(server)


def test_brackets_inside_strings_do_not_count_as_depth(server):
    body = dict(VALID_FP32, id="[" * 5000 + '\\"{' * 100)
    answer = post_json(server, json.dumps(body).encode())
    assert answer.status == 200 and answer.json()["id"] == body["id"]


def test_an_integer_of_thousands_of_digits_is_a_400(server):
    body = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [' + b"7" * 5000 + b"]}]}"
    assert_refused(post_json(server, body), 400, "at most 40 digits")
    assert_refused(post_json(server, b'{"inputs": [], "id": ' + b"9" * 100000 + b"}"), 400, "digits")
    assert_still_serving(server)


# --- item 2: FP32 data strictly numbers, never NaN out -------------------------------------------------------------


@pytest.mark.parametrize(
    "values,words",
    [
        (['"0.5"'] * 784, "must be numbers"),
        (["true"] * 784, "must be numbers"),
        (["NaN"] * 784, "NaN is not a JSON number"),
        (["Infinity"] * 784, "Infinity is not a JSON number"),
        (["1e39"] * 784, "finite"),
        (["-3.5e38"] * 784, "finite"),
        (['{"a": 1}'] * 784, "must be numbers"),
    ],
)
def test_fp32_data_that_is_not_finite_numbers_is_a_400(server, values, words):
    data = ",".join(values).encode()
    body = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [' + data + b"]}]}"
    assert_refused(post_json(server, body), 400, words)


def test_binary_fp32_data_that_is_not_finite_is_a_400(server):
    tensor = np.full((1, 1, 28, 28), np.nan, dtype="<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 1, 28, 28],
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ]
        }
    ).encode()
    answer = exchange(
        server.port,
        request_bytes(
            "POST", INFER, body=header + tensor, headers={"Inference-Header-Content-Length": str(len(header))}
        ),
    )
    assert_refused(answer, 400, "finite")


def test_extreme_input_that_drives_the_model_to_infinity_still_gets_valid_json(server):
    body = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [7.017038286703837e36] * 784}
        ],
        "outputs": [{"name": "logits", "parameters": {"binary_data": False}}],
    }
    answer = post_json(server, json.dumps(body).encode())
    assert answer.status == 200
    values = json.loads(answer.body, parse_constant=lambda constant: pytest.fail(f"{constant} in the JSON answer"))
    data = values["outputs"][0]["data"]
    assert len(data) == 10 and any(value is None for value in data)  # what JSON cannot write is null


# --- item 3: compression and transfer codings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "after", [b"garbage", gzip.compress(json.dumps({"inputs": []}).encode())], ids=["garbage", "second-member"]
)
def test_bytes_after_a_complete_gzip_member_are_refused(server, after):
    body = gzip.compress(json.dumps(VALID_FP32).encode()) + after
    answer = post_json(server, body, {"Content-Encoding": "gzip"})
    assert_refused(answer, 400, "follows the end of the gzip stream")


@pytest.mark.parametrize(
    "accept,expected",
    [
        ("gzip;q=0, identity", None),
        ("gzip;q=0", None),
        ("identity;q=1, gzip;q=0.5", None),
        ("gzip", "gzip"),
        ("deflate;q=0.5, gzip;q=0.4", "deflate"),
        ("*;q=0.3, gzip;q=0", "deflate"),
        ("br", None),
    ],
)
def test_accept_encoding_weights_are_honoured(server, accept, expected):
    answer = post_json(server, json.dumps(VALID_FP32).encode(), {"Accept-Encoding": accept})
    assert answer.status == 200
    assert answer.headers.get("content-encoding") == expected
    assert "accept-encoding" in answer.headers.get("vary", "").lower()


@pytest.mark.parametrize("codings,status", [(b"gzip, chunked", 501), (b"gzip", 400), (b"chunked, chunked", 400)])
def test_transfer_codings_we_do_not_implement_are_refused_before_the_app(server, codings, status):
    body = gzip.compress(json.dumps(VALID_FP32).encode())
    chunk = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ".encode() + codings + b"\r\n\r\n"
    with connect(server.port) as connection:
        connection.sendall(head + chunk)
        responses = parse_responses(read_until_closed(connection))
    assert [response.status for response in responses] == [status], responses
    assert "Transfer-Encoding" in responses[0].json()["error"]["message"]
    assert responses[0].headers.get("connection") == "close"
    assert_still_serving(server)


# --- item 4: multipart boundary ------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [71, 2000])
def test_an_over_long_multipart_boundary_is_a_400(server, example_pngs, length):
    boundary = "b" * length
    png = next(iter(example_pngs.values()))
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    answer = exchange(
        server.port,
        request_bytes("POST", "/v1/classify", body=body, content_type=f"multipart/form-data; boundary={boundary}"),
    )
    assert answer.status == 400 and answer.error_code == "malformed_request"
    assert "boundary" in answer.json()["error"]["message"]


# --- item 7: a 500 says Connection: close; a strip decodes ---------------------------------------------------------


def test_a_strip_image_is_classified_not_refused_for_memory(server):
    strip = io.BytesIO()
    Image.fromarray(np.arange(100000, dtype=np.uint8).reshape(100000, 1)).save(strip, "PNG")
    answer = exchange(server.port, classify_request([("strip.png", strip.getvalue())]))
    assert answer.status == 200, answer
    assert answer.json()["results"][0]["height"] == 100000


# --- item 8: a refusal in a burst keeps its connection -------------------------------------------------------------


@pytest.mark.parametrize("parser", HTTP_PARSERS)
def test_a_refused_request_whose_body_arrived_keeps_its_connection(ready_server, example_pngs, parser):
    """With the byte budget held by an upload that never ends, complete small uploads are refused with 503 at
    admission, before their body is read; the body had arrived, so the connection stays open, and once the budget
    is free the same connection is served."""
    budget = 1 << 20
    server = ready_server("--max-upload-bytes", str(budget), "--max-inflight-bytes", str(budget), *parser_flags(parser))
    png = next(iter(example_pngs.values()))
    holder = connect(server.port)
    holder.sendall(request_bytes("POST", "/v1/classify", content_type="image/png", content_length=budget))
    with connect(server.port) as connection:
        for _ in range(3):
            connection.sendall(classify_request([("a.png", png)]))
            refused = read_one_response(connection)
            assert refused.status == 503 and refused.error_code == "overloaded", refused
            assert refused.headers.get("connection") != "close"
        holder.close()

        def served() -> bool:  # the server frees the budget once it reads the holder's FIN
            connection.sendall(classify_request([("a.png", png)]))
            answer = read_one_response(connection)
            assert answer.status in (200, 503) and answer.headers.get("connection") != "close", answer
            return answer.status == 200

        poll(served, "the same connection to be served once the budget is free")


@pytest.mark.parametrize("parser", HTTP_PARSERS)
def test_a_refused_upload_still_arriving_closes_its_connection(ready_server, parser):
    """The body has not all arrived when the refusal is sent: Connection: close, and the rest is not read."""
    budget = 1 << 20
    server = ready_server("--max-upload-bytes", str(budget), "--max-inflight-bytes", str(budget), *parser_flags(parser))
    holder = connect(server.port)
    holder.sendall(request_bytes("POST", "/v1/classify", content_type="image/png", content_length=budget))
    with connect(server.port) as connection:
        connection.sendall(request_bytes("POST", "/v1/classify", content_type="image/png", content_length=1000))
        refused = read_one_response(connection)
        assert refused.status == 503 and refused.headers.get("connection") == "close", refused
    holder.close()


@pytest.mark.parametrize("parser", HTTP_PARSERS)
def test_pipelined_requests_refused_early_are_answered_in_order(ready_server, example_pngs, parser):
    """Two complete uploads in one write, refused at admission: the first is answered 503; then either the second
    is too, or the first said Connection: close and the connection ends after it with nothing more (HTTP lets a
    server drop what was pipelined behind a close; the client sends it again)."""
    budget = 1 << 20
    server = ready_server("--max-upload-bytes", str(budget), "--max-inflight-bytes", str(budget), *parser_flags(parser))
    png = next(iter(example_pngs.values()))
    holder = connect(server.port)
    holder.sendall(request_bytes("POST", "/v1/classify", content_type="image/png", content_length=budget))
    with connect(server.port) as connection:
        connection.sendall(classify_request([("a.png", png)]) * 2)
        first = read_one_response(connection)
        assert first.status == 503, first
        if first.headers.get("connection") == "close":
            assert parse_responses(read_until_closed(connection)) == []
        else:
            assert read_one_response(connection).status == 503
    holder.close()
