"""Triton's statistics and model configuration extensions on a real server with two worker processes, read with
tritonclient's own calls (`get_inference_statistics`, `get_model_config`) over HTTP and gRPC: the figures count
every request and batch of both workers, whichever worker answers, and both protocols say the same."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
import tritonclient.http as tritonhttp
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as triton_pb
from tritonclient.utils import InferenceServerException

from tests.images import random_png
from tests.integration.conftest import poll
from tests.integration.test_v2_grpc import GrpcServerProcess

MODEL = "fashion-mnist-resnet20"


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory):
    args = ["--max-batch-size", "4", "--max-batch-delay-ms", "2", "--workers", "2", "--no-access-log"]
    server = GrpcServerProcess(args, tmp_path_factory.mktemp("extensions") / "server.log").start()
    try:
        yield server.wait_ready()
    finally:
        server.kill()


def worker_of(response: httpx.Response) -> str:
    """New request IDs are a per-process prefix and a counter: the prefix names the worker that answered."""
    return response.headers["x-request-id"].rsplit("-", 1)[0]


def grpc_infer(server: GrpcServerProcess, images: list[bytes]) -> None:
    tensor = tritongrpc.InferInput("input", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    tritongrpc.InferenceServerClient(server.grpc_url).infer(MODEL, [tensor])


def test_statistics_count_every_worker_s_requests_and_batches_over_both_protocols(two_workers):
    server = two_workers
    http = tritonhttp.InferenceServerClient(server.url.removeprefix("http://"))
    over_grpc = tritongrpc.InferenceServerClient(server.grpc_url)
    assert {"statistics", "model_configuration"} <= set(http.get_server_metadata()["extensions"])
    before = http.get_inference_statistics(MODEL)["model_stats"][0]

    answered_by: set[str] = set()
    images = succeeded = failed = 0

    def classify_on_a_new_connection() -> bool:
        nonlocal images, succeeded
        response = httpx.post(server.url + "/v1/classify", files={"file": ("x.png", random_png(images), "image/png")})
        assert response.status_code == 200
        answered_by.add(worker_of(response))
        images += 1
        succeeded += 1
        return len(answered_by) == 2 and succeeded >= 12

    poll(classify_on_a_new_connection, "both workers to answer requests")
    for count in (1, 3):
        grpc_infer(server, [random_png(100 + n) for n in range(count)])
        images += count
        succeeded += 1
    for _ in range(2):
        refused = httpx.post(server.url + "/v1/classify", files={"file": ("bad.png", b"not an image", "image/png")})
        assert refused.status_code == 400
        failed += 1

    # Whichever worker answers the question, the figures are every worker's.
    for _ in range(4):
        stats = http.get_inference_statistics(MODEL)["model_stats"]
        assert [(entry["name"], entry["version"]) for entry in stats] == [(MODEL, "1")]
        (now,) = stats
        inference = now["inference_stats"]
        assert int(inference["success"]["count"]) - int(before["inference_stats"]["success"]["count"]) == succeeded
        assert int(inference["fail"]["count"]) - int(before["inference_stats"]["fail"]["count"]) == failed
        assert int(now["inference_count"]) - int(before["inference_count"]) == images
    for stage in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert int(inference[stage]["ns"]) > int(before["inference_stats"][stage]["ns"]), stage
    batches = now["batch_stats"]
    assert sum(int(b["batch_size"]) * int(b["compute_infer"]["count"]) for b in batches) == int(now["inference_count"])
    assert sum(int(b["compute_infer"]["count"]) for b in batches) == int(now["execution_count"])
    assert all(1 <= int(b["batch_size"]) <= 4 for b in batches)
    assert int(now["last_inference"]) > 0

    # gRPC answers the same figures (no traffic in between), as Triton's own message.
    assert over_grpc.get_inference_statistics(MODEL).model_stats[0] == json_format.ParseDict(
        now, triton_pb.ModelStatistics()
    )
    assert over_grpc.get_inference_statistics().model_stats[0].name == MODEL
    assert http.get_inference_statistics(MODEL, "1") == http.get_inference_statistics(MODEL)
    assert http.get_inference_statistics()["model_stats"][0]["name"] == MODEL


def test_an_unknown_model_s_statistics_and_configuration_are_not_found(two_workers):
    http = tritonhttp.InferenceServerClient(two_workers.url.removeprefix("http://"))
    over_grpc = tritongrpc.InferenceServerClient(two_workers.grpc_url)
    for call in (http.get_inference_statistics, http.get_model_config):
        with pytest.raises(InferenceServerException) as missing:
            call("no-such-model")
        assert missing.value.status() == "404"
    for call in (over_grpc.get_inference_statistics, over_grpc.get_model_config):
        with pytest.raises(InferenceServerException) as missing:
            call("no-such-model")
        assert missing.value.status() == "StatusCode.NOT_FOUND"


def test_the_model_configuration_shows_the_batch_and_input_settings(two_workers):
    http = tritonhttp.InferenceServerClient(two_workers.url.removeprefix("http://"))
    config = http.get_model_config(MODEL)
    assert config["name"] == MODEL and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 4
    assert config["input"] == [
        {"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [1, 28, 28]}
    ]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 256
    assert config["parameters"]["labels"]["string_value"].split(",")[7] == "Sneaker"
    assert http.get_model_config(MODEL, "1") == config

    over_grpc = tritongrpc.InferenceServerClient(two_workers.grpc_url).get_model_config(MODEL).config
    assert (over_grpc.name, over_grpc.max_batch_size) == (MODEL, 4)
    assert list(over_grpc.input[0].dims) == [1, 28, 28] and over_grpc.input[0].format == over_grpc.input[0].FORMAT_NCHW
    assert over_grpc.dynamic_batching.default_queue_policy.max_queue_size == 256
    assert over_grpc.instance_group[0].kind == over_grpc.instance_group[0].KIND_CPU
