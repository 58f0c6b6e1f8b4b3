"""The Open Inference Protocol over HTTP, spoken by Triton's own client (`tritonclient.http`, sync and asyncio)
against a real server, plus hand-made hostile V2 bodies over a raw socket."""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as tritonhttp
import tritonclient.http.aio as tritonhttp_aio
from tritonclient.utils import InferenceServerException

from service.config import Settings
from tests.images import random_png

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.png"))
BUNDLED = "fashion-mnist-resnet20"


def client(server) -> tritonhttp.InferenceServerClient:
    return tritonhttp.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=120.0)


def bytes_input(images: list[bytes]) -> tritonhttp.InferInput:
    tensor = tritonhttp.InferInput("input", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    return tensor


def text(entry: bytes | str) -> str:
    """A BYTES element as tritonclient hands it out: bytes from binary outputs, str from JSON ones."""
    return entry.decode() if isinstance(entry, bytes) else entry


def v1_top_labels(server, images: list[bytes]) -> list[str]:
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    response = httpx.post(f"{server.url}/v1/models/{BUNDLED}/classify", files=files, timeout=120)
    assert response.status_code == 200, response.text
    return [result["top_k"][0]["label"] for result in response.json()["results"]]


def test_health_and_metadata(bundled_server):
    triton = client(bundled_server)
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(BUNDLED) and triton.is_model_ready(BUNDLED, model_version="1")
    server = triton.get_server_metadata()
    assert server["name"] == "resnet-serve"
    assert set(server["extensions"]) >= {"binary_tensor_data", "classification"}
    metadata = triton.get_model_metadata(BUNDLED)
    assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert "BYTES" in metadata["parameters"]["encoded_images"]
    with pytest.raises(InferenceServerException) as unknown:
        triton.get_model_metadata("no-such-model")
    assert unknown.value.status() == "404" and "no model named 'no-such-model'" in unknown.value.message()
    assert not triton.is_model_ready("no-such-model")


def test_bytes_inference_with_classification_agrees_with_v1(bundled_server):
    images = [path.read_bytes() for path in EXAMPLES]
    expected = v1_top_labels(bundled_server, images)
    triton = client(bundled_server)
    for binary in (True, False):
        outputs = [tritonhttp.InferRequestedOutput("logits", binary_data=binary, class_count=3)]
        result = triton.infer(BUNDLED, [bytes_input(images)], outputs=outputs, request_id="req-7")
        table = result.as_numpy("logits")
        assert table.shape == (len(images), 3)
        assert result.get_response()["id"] == "req-7" and result.get_response()["model_version"] == "1"
        for row, label in zip(table, expected, strict=False):
            scores = [float(text(entry).split(":", 2)[0]) for entry in row]
            assert text(row[0]).split(":", 2)[2] == label
            assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_no_outputs_named_returns_binary_logits(bundled_server):
    images = [EXAMPLES[0].read_bytes()]
    triton = client(bundled_server)
    result = triton.infer(BUNDLED, [bytes_input(images)])
    output = result.get_output("logits")
    assert output["datatype"] == "FP32" and output["parameters"]["binary_data_size"] == 10 * 4
    logits = result.as_numpy("logits")
    labels = triton.get_model_metadata(BUNDLED)["parameters"]["labels"]
    assert labels[int(np.argmax(logits[0]))] == v1_top_labels(bundled_server, images)[0]


@pytest.mark.parametrize("binary", [True, False])
def test_fp32_inference_matches_the_onnx_file_run_directly(bundled_server, binary):
    from service.config import BUNDLED_MODEL_DIR

    batch = np.random.default_rng(3).normal(0, 1, (5, 1, 28, 28)).astype(np.float32)
    tensor = tritonhttp.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    outputs = [tritonhttp.InferRequestedOutput("logits", binary_data=binary)]
    logits = client(bundled_server).infer(BUNDLED, [tensor], outputs=outputs).as_numpy("logits")
    session = ort.InferenceSession(str(BUNDLED_MODEL_DIR / f"{BUNDLED}.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(logits, session.run(["logits"], {"input": batch})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_responses(bundled_server, algorithm):
    images = [EXAMPLES[1].read_bytes()]
    result = client(bundled_server).infer(
        BUNDLED,
        [bytes_input(images)],
        outputs=[tritonhttp.InferRequestedOutput("logits", class_count=1)],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    assert result.as_numpy("logits")[0][0].decode().endswith(":" + v1_top_labels(bundled_server, images)[0])


def test_asyncio_client(bundled_server):
    images = [path.read_bytes() for path in EXAMPLES[:2]]

    async def run() -> np.ndarray:
        triton = tritonhttp_aio.InferenceServerClient(f"127.0.0.1:{bundled_server.port}")
        try:
            assert await triton.is_server_ready()
            tensor = tritonhttp_aio.InferInput("input", [len(images)], "BYTES")
            tensor.set_data_from_numpy(np.array(images, dtype=object))
            outputs = [tritonhttp_aio.InferRequestedOutput("logits", class_count=1)]
            results = await asyncio.gather(*(triton.infer(BUNDLED, [tensor], outputs=outputs) for _ in range(4)))
            return np.array([result.as_numpy("logits") for result in results])
        finally:
            await triton.close()

    answers = asyncio.run(run())
    expected = v1_top_labels(bundled_server, images)
    assert answers.shape == (4, 2, 1)
    assert [[entry.decode().split(":", 2)[2] for entry in row[:, 0]] for row in answers] == [expected] * 4


def test_client_errors_have_v1_statuses_and_a_string_message(tiny_server):
    triton = client(tiny_server)
    too_many = [random_png(i) for i in range(5)]  # the tiny server allows 4 images per request
    tensor = tritonhttp.InferInput("input", [5], "BYTES")
    tensor.set_data_from_numpy(np.array(too_many, dtype=object))
    with pytest.raises(InferenceServerException) as error:
        triton.infer("tiny-gray", [tensor])
    assert error.value.status() == "413" and "the limit is 4" in error.value.message()
    with pytest.raises(InferenceServerException) as error:
        triton.infer("tiny-missing", [tensor])
    assert error.value.status() == "404" and isinstance(error.value.message(), str)
    wrong = tritonhttp.InferInput("input", [1, 1, 28, 28], "INT32")
    wrong.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.int32))
    with pytest.raises(InferenceServerException) as error:
        triton.infer("tiny-gray", [wrong])
    assert error.value.status() == "400" and "datatype 'INT32' is not supported" in error.value.message()
    shaped = tritonhttp.InferInput("input", [1, 3, 28, 28], "FP32")
    shaped.set_data_from_numpy(np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(InferenceServerException) as error:
        triton.infer("tiny-gray", [shaped])
    assert error.value.status() == "400" and "[N, 1, 28, 28]" in error.value.message()
    broken = tritonhttp.InferInput("input", [1], "BYTES")
    broken.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    with pytest.raises(InferenceServerException) as error:
        triton.infer("tiny-gray", [broken])
    assert error.value.status() == "415"
    ok = tritonhttp.InferInput("input", [1], "BYTES")
    ok.set_data_from_numpy(np.array([random_png(1)], dtype=object))
    with pytest.raises(InferenceServerException) as error:
        triton.infer("tiny-gray", [ok], outputs=[tritonhttp.InferRequestedOutput("logits", class_count=11)])
    assert error.value.status() == "422" and "between 1 and 10" in error.value.message()


def test_overload_is_a_503_with_retry_after(in_thread_server, tmp_path, make_classifier, gray_spec, wait_until):
    make_classifier(tmp_path / "gray.onnx", gray_spec, seed=5)
    server = in_thread_server(
        Settings(model_dir=tmp_path, max_batch_size=1, max_queue_size=1, max_files_per_request=1)
    ).start()
    wait_until(lambda: httpx.get(server.url + "/v2/health/ready", timeout=30).status_code == 200, "readiness")
    runtime = server.runtimes["gray"]
    runtime.run_gate.clear()
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 + len(random_png(1))},
                }
            ]
        }
    ).encode()
    payload = body + struct.pack("<I", len(random_png(1))) + random_png(1)
    headers = {"Inference-Header-Content-Length": str(len(body))}

    async def three_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            first = asyncio.ensure_future(http.post("/v2/models/gray/infer", content=payload, headers=headers))
            await asyncio.to_thread(runtime.wait_for_batch)
            second = asyncio.ensure_future(http.post("/v2/models/gray/infer", content=payload, headers=headers))
            await asyncio.to_thread(
                wait_until,
                lambda: httpx.get(server.url + "/v1/models/gray", timeout=30).json()["batching"]["queue_depth"] == 1,
                "one queued",
            )
            refused = await http.post("/v2/models/gray/infer", content=payload, headers=headers)
            runtime.run_gate.set()
            return [await first, await second, refused]

    first, second, refused = asyncio.run(three_at_once())
    assert first.status_code == second.status_code == 200
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert "overloaded" in refused.json()["error"]


def test_not_ready_during_warm_up(in_thread_server, tmp_path, make_classifier, gray_spec, wait_until):
    make_classifier(tmp_path / "gray.onnx", gray_spec, seed=5)
    server = in_thread_server(Settings(model_dir=tmp_path), hold_warm_up=True).start()
    triton = tritonhttp.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert triton.is_server_live()
    assert not triton.is_server_ready() and not triton.is_model_ready("gray")
    server.runtimes["gray"].warm_up_gate.set()
    wait_until(lambda: triton.is_server_ready(), "ready after warm-up")
    assert triton.is_model_ready("gray")


# --- hostile bodies, by hand ------------------------------------------------------------------------------------


def infer_raw(server, body: bytes, headers: dict[str, str], model: str = "tiny-gray") -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, headers=headers, timeout=60)


def header_and_binary(inputs: list[dict], binary: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": inputs}).encode()
    return header + binary, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize(
    "case,expected",
    [
        ("sizes short of the body", "follow the JSON header"),
        ("size past the body", "does not fit"),
        ("header length past the body", "Inference-Header-Content-Length is"),
        ("negative shape", "negative dimension"),
        ("huge shape", "the limit is 4"),
        ("prefix overruns", "declares"),
        ("prefix missing", "before element 1's length prefix"),
        ("elements short of the data", "bytes follow the 1 elements"),
        ("fp32 size mismatch", "needs 3136 bytes"),
        ("wrong input name", "unknown input 'image'"),
        ("two inputs", "exactly one input"),
        ("json fp32 count", "has 784 elements, the data has 3"),
        ("not json", "not valid JSON"),
    ],
)
def test_hostile_v2_bodies_are_400_with_a_clear_message(tiny_server, case, expected):
    png = random_png(7)
    element = struct.pack("<I", len(png)) + png

    def bytes_input_of(shape, size):
        return {
            "name": "input",
            "shape": shape,
            "datatype": "BYTES",
            "parameters": {"binary_data_size": size},
        }

    if case == "sizes short of the body":
        body, headers = header_and_binary([bytes_input_of([1], len(element))], element + b"extra")
    elif case == "size past the body":
        body, headers = header_and_binary([bytes_input_of([1], len(element) + 10)], element)
    elif case == "header length past the body":
        body, headers = header_and_binary([bytes_input_of([1], len(element))], element)
        headers = {"Inference-Header-Content-Length": str(len(body) + 1)}
    elif case == "negative shape":
        body, headers = header_and_binary([bytes_input_of([-1], len(element))], element)
    elif case == "huge shape":
        body, headers = header_and_binary([bytes_input_of([2**40], len(element))], element)
    elif case == "prefix overruns":
        body, headers = header_and_binary([bytes_input_of([1], 8)], struct.pack("<I", 2**31) + b"abcd")
    elif case == "prefix missing":
        body, headers = header_and_binary([bytes_input_of([2], len(element))], element)
    elif case == "elements short of the data":
        body, headers = header_and_binary([bytes_input_of([1], len(element) + 3)], element + b"xyz")
    elif case == "fp32 size mismatch":
        body, headers = header_and_binary(
            [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": 12}}],
            b"\0" * 12,
        )
    elif case == "wrong input name":
        body, headers = header_and_binary([{**bytes_input_of([1], len(element)), "name": "image"}], element)
    elif case == "two inputs":
        body, headers = header_and_binary([bytes_input_of([1], len(element))] * 2, element * 2)
    elif case == "json fp32 count":
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
        ).encode()
        headers = {}
    else:
        body, headers = b"{not json", {}
    response = infer_raw(tiny_server, body, headers)
    assert response.status_code in (400, 413), response.text
    assert expected in response.json()["error"], response.json()


def test_json_values_beyond_the_largest_request_are_refused_before_parsing(tiny_server):
    values = ",".join(["0"] * 200_000)
    body = ('{"inputs":[{"name":"input","shape":[1,1,28,28],"datatype":"FP32","data":[' + values + "]}]}").encode()
    response = infer_raw(tiny_server, body, {})
    assert response.status_code == 413 and "send tensors as binary data" in response.json()["error"]


def test_a_gzip_bomb_is_a_413_as_it_decompresses(tiny_server):
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))  # 8 MiB decompressed, far past the tiny server's 1 MiB
    assert len(bomb) < 64 * 1024
    response = infer_raw(tiny_server, bomb, {"Content-Encoding": "gzip"})
    assert response.status_code == 413 and "once decompressed" in response.json()["error"]
    response = infer_raw(tiny_server, b"not gzip at all", {"Content-Encoding": "gzip"})
    assert response.status_code == 400
    response = infer_raw(tiny_server, b"{}", {"Content-Encoding": "br"})
    assert response.status_code == 415


def test_base64_bytes_in_json_and_v2_metrics(tiny_server, metrics_of):
    import base64

    before = metrics_of(tiny_server.url).get(
        ("resnet_serve_requests_total", (("model", "tiny-gray"), ("protocol", "v2-http"))), 0.0
    )
    body = json.dumps(
        {
            "id": "j1",
            "inputs": [
                {
                    "name": "input",
                    "shape": [2],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(random_png(i)).decode() for i in (1, 2)],
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"classification": 2}}],
        }
    ).encode()
    response = infer_raw(tiny_server, body, {"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "j1" and answer["outputs"][0]["shape"] == [2, 2]
    assert all(entry.split(":", 2)[2].startswith("gray-class-") for entry in answer["outputs"][0]["data"])
    after = metrics_of(tiny_server.url)[
        ("resnet_serve_requests_total", (("model", "tiny-gray"), ("protocol", "v2-http")))
    ]
    assert after == before + 1


def test_v2_routes_are_in_the_openapi_document(tiny_server):
    paths = httpx.get(f"{tiny_server.url}/openapi.json", timeout=30).json()["paths"]
    for path in (
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    ):
        assert path in paths
