"""V2 JSON, V2 binary and gRPC requests from hypothesis strategies, sent to a real server: every answer keeps the
invariants of tests/property/conftest.py."""

from __future__ import annotations

import json

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import given

from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.grpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from tests.property.strategies import MODEL, grpc_infer_requests, v2_binary_requests, v2_json_bodies
from tests.reliability.harness import MB, probe

INFER = f"/v2/models/{MODEL}/infer"
VALID = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.25] * 784}]}
SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}


def strict_json(body: bytes) -> object:
    """JSON as RFC 8259 has it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in a JSON answer: {body[:200]!r}")

    return json.loads(body, parse_constant=refuse)


def assert_answer_keeps_the_invariants(response: httpx.Response) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        message = strict_json(response.content)["error"]
        assert isinstance(message, str) and message and "Traceback" not in message, message
    elif response.headers.get("content-type", "").startswith("application/json"):
        strict_json(response.content)


MEMORY_SLACK_BYTES = 200 * MB
"""Growth of the server's resident memory all examples together may cause at most (each body is at most 1 MiB)."""


@pytest.fixture(scope="module")
def http(property_server):
    reading = probe(property_server)
    before = reading.rss_bytes()
    with httpx.Client(base_url=property_server.url, timeout=60) as client:
        yield client
    # The server answers a valid request after everything the strategies sent, its memory bounded.
    assert httpx.post(property_server.url + INFER, json=VALID, timeout=60).status_code == 200
    assert reading.rss_bytes() - before < MEMORY_SLACK_BYTES


@given(body=v2_json_bodies())
def test_v2_json_bodies(http, body):
    assert_answer_keeps_the_invariants(http.post(INFER, content=body, headers={"Content-Type": "application/json"}))


@given(request=v2_binary_requests())
def test_v2_binary_bodies(http, request):
    body, headers = request
    assert_answer_keeps_the_invariants(http.post(INFER, content=body, headers=headers))


@pytest.fixture(scope="module")
def grpc_channel(property_server):
    with grpc.insecure_channel(f"127.0.0.1:{property_server.grpc_port}") as channel:
        yield channel
        tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 1, 28, 28])
        valid = pb.ModelInferRequest(
            model_name=MODEL, inputs=[tensor], raw_input_contents=[np.zeros((1, 1, 28, 28), "<f4").tobytes()]
        )
        assert len(GRPCInferenceServiceStub(channel).ModelInfer(valid, timeout=60).raw_output_contents) == 1


@given(message=grpc_infer_requests())
def test_grpc_model_infer_messages(grpc_channel, message):
    call = grpc_channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    refused: grpc.RpcError | None = None
    try:
        call(message, timeout=60)
    except grpc.RpcError as exc:
        refused = exc
    if refused is not None:
        code, details = refused.code(), refused.details()
        assert code not in SERVER_FAULTS, f"{code}: {details}"
        assert details and "Traceback" not in details and "<class" not in details, details
