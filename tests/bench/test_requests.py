"""The benchmark's V2 and gRPC request builders against the server's own parsers, and the gRPC closed loop against
a scripted grpc.aio server: what the load generator sends is what the server reads, and every outcome is counted."""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest
import tritonclient.http as triton_http

from bench import loadgen
from bench.measure import model_spec_of
from bench.workload import BUNDLED_MODEL
from service.api.v2_messages import HEADER_LENGTH, WantedOutput, parse_request
from service.grpc import messages
from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.grpc.proto.grpc_predict_v2_pb2_grpc import (
    GRPCInferenceServiceServicer,
    add_GRPCInferenceServiceServicer_to_server,
)
from service.inference import RequestedOutput
from service.v2 import codec

JPEG_A = b"\xff\xd8\xff\xe0 first image \xff\xd9"
JPEG_B = b"\xff\xd8\xff\xe0 the second, a little longer \xff\xd9"


@pytest.fixture(scope="module")
def spec():
    return model_spec_of(BUNDLED_MODEL)


class _Counted:
    """Where the codec counts images (the server's admission ticket)."""

    def __init__(self) -> None:
        self.images = 0

    def count_images(self, total: int) -> None:
        assert total <= 16
        self.images = total


def _images(parsed) -> list[bytes]:
    return [upload.data for upload in codec.model_inputs(parsed.inputs, _Counted()).uploads]


def _batch(parsed) -> np.ndarray:
    return codec.model_inputs(parsed.inputs, _Counted()).array


def _split_http(request: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines[1:])}
    return lines[0], headers, body


def test_v2_bytes_tensor_is_what_the_codec_splits() -> None:
    raw = loadgen.v2_bytes_tensor([JPEG_A, b"", JPEG_B])
    assert codec.split_bytes_elements(raw, 3, "input") == [JPEG_A, b"", JPEG_B]


def test_v2_binary_request_with_encoded_images_is_what_the_server_parses(spec) -> None:
    request = loadgen.v2_binary_request(
        "127.0.0.1",
        8000,
        "fashion-mnist-resnet20",
        input_name=spec.input_name,
        datatype="BYTES",
        shape=[2],
        data=loadgen.v2_bytes_tensor([JPEG_A, JPEG_B]),
        output_name=spec.output_name,
        classification=5,
    )
    start, headers, body = _split_http(request)
    assert start == "POST /v2/models/fashion-mnist-resnet20/infer HTTP/1.1"
    assert int(headers["content-length"]) == len(body)
    assert headers["content-type"] == "application/octet-stream"
    parsed = parse_request(body, int(headers[HEADER_LENGTH.lower()]))
    (tensor,) = parsed.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == (spec.input_name, "BYTES", (2,))
    assert codec.split_bytes_elements(tensor.raw, 2, tensor.name) == [JPEG_A, JPEG_B]
    assert _images(parsed) == [JPEG_A, JPEG_B]
    assert parsed.outputs == [
        WantedOutput(RequestedOutput(spec.output_name, ranked=True, k=5, asked_as="classification"), binary=True)
    ]


def test_v2_binary_request_with_a_tensor_is_what_the_server_parses(spec) -> None:
    batch = np.random.default_rng(0).standard_normal(
        (1, spec.channels, spec.crop_size, spec.crop_size), dtype=np.float32
    )
    request = loadgen.v2_binary_request(
        "127.0.0.1",
        8000,
        "m",
        input_name=spec.input_name,
        datatype="FP32",
        shape=list(batch.shape),
        data=batch.astype("<f4").tobytes(),
    )
    _, headers, body = _split_http(request)
    parsed = parse_request(body, int(headers[HEADER_LENGTH.lower()]))
    assert parsed.outputs is None and parsed.binary_output  # the model's output, as binary data
    np.testing.assert_array_equal(_batch(parsed), batch)


def test_v2_binary_request_body_matches_tritonclient_s(spec) -> None:
    """Triton's own HTTP client writes the same request for the same image: the server reads the same tensor."""
    triton_input = triton_http.InferInput(spec.input_name, [1], "BYTES")
    triton_input.set_data_from_numpy(np.array([JPEG_A], dtype=object), binary_data=True)
    triton_body, triton_json_size = triton_http.InferenceServerClient.generate_request_body([triton_input])
    ours = loadgen.v2_binary_request(
        "h", 1, "m", input_name=spec.input_name, datatype="BYTES", shape=[1], data=loadgen.v2_bytes_tensor([JPEG_A])
    )
    _, headers, body = _split_http(ours)
    ours_json_size = int(headers[HEADER_LENGTH.lower()])
    assert body[ours_json_size:] == triton_body[triton_json_size:]
    theirs_parsed = parse_request(triton_body, triton_json_size)
    ours_parsed = parse_request(body, ours_json_size)
    assert [(t.name, t.datatype, t.shape, bytes(t.raw)) for t in ours_parsed.inputs] == [
        (t.name, t.datatype, t.shape, bytes(t.raw)) for t in theirs_parsed.inputs
    ]
    assert json.loads(body[:ours_json_size])["inputs"][0]["parameters"] == {
        "binary_data_size": len(body) - ours_json_size
    }


def test_grpc_infer_request_is_what_the_server_parses(spec) -> None:
    raw = loadgen.v2_bytes_tensor([JPEG_B])
    message = loadgen.grpc_infer_request(
        "fashion-mnist-resnet20",
        input_name=spec.input_name,
        datatype="BYTES",
        shape=[1],
        data=raw,
        output_name=spec.output_name,
        classification=3,
    )
    message = pb.ModelInferRequest.FromString(message.SerializeToString())  # as it crosses the wire
    assert message.model_name == "fashion-mnist-resnet20"
    parsed = messages.infer_request(message)
    assert _images(parsed) == [JPEG_B]
    assert parsed.outputs == [RequestedOutput(spec.output_name, ranked=True, k=3, asked_as="classification")]

    batch = np.ones((1, spec.channels, spec.crop_size, spec.crop_size), dtype=np.float32)
    message = loadgen.grpc_infer_request(
        "m", input_name=spec.input_name, datatype="FP32", shape=list(batch.shape), data=batch.tobytes()
    )
    parsed = messages.infer_request(message)
    assert parsed.outputs is None
    np.testing.assert_array_equal(_batch(parsed), batch)


def test_grpc_outcomes_read_as_the_http_statuses_of_the_same_errors() -> None:
    assert loadgen.grpc_status(grpc.StatusCode.OK, None) == 200
    assert loadgen.grpc_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "1") == 503  # Overloaded
    assert loadgen.grpc_status(grpc.StatusCode.UNAVAILABLE, "1") == 503  # draining, with Retry-After
    assert loadgen.grpc_status(grpc.StatusCode.UNAVAILABLE, None) == loadgen.STATUS_CONNECTION_ERROR
    assert loadgen.grpc_status(grpc.StatusCode.DEADLINE_EXCEEDED, None) == 504
    assert loadgen.grpc_status(grpc.StatusCode.INVALID_ARGUMENT, None) == 400


class _EveryThirdRefused(GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelInfer(self, request, context):
        self.calls.append(request.model_name)
        if len(self.calls) % 3 == 0:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", (("retry-after", "0"),))
        return pb.ModelInferResponse(model_name=request.model_name)


def test_grpc_closed_loop_counts_answers_and_refusals_and_its_own_cpu() -> None:
    servicer = _EveryThirdRefused()

    async def scenario() -> loadgen.LoadRun:
        server = grpc.aio.server()
        add_GRPCInferenceServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            target = f"127.0.0.1:{port}"
            await loadgen.grpc_wait_ready(target)
            requests = [
                loadgen.grpc_infer_request(
                    name, input_name="input", datatype="BYTES", shape=[1], data=loadgen.v2_bytes_tensor([JPEG_A])
                )
                for name in ("a", "b")
            ]
            return await loadgen.grpc_closed_loop(target, requests, concurrency=3, warmup_s=0.0, duration_s=0.3)
        finally:
            await server.stop(None)

    run = asyncio.run(scenario())
    counts = run.status_counts()
    assert set(counts) == {200, 503}, counts
    assert counts[200] > 0 and counts[503] > 0
    assert {"a", "b"} <= set(servicer.calls)  # requests are taken round-robin
    assert run.concurrency == 3 and run.client_cpu_s > 0
