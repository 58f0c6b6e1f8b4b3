"""The Open Inference Protocol over gRPC, spoken by Triton's own client (`tritonclient.grpc`) against real servers:
subprocesses for the protocol, errors and SIGTERM, and the app under `DrainingServer` in a thread with its gRPC
front end where a test must hold the model (warm-up, a full queue, a passed deadline, a drain).

Every answer is compared with what the same server says over HTTP (V2 REST) for the same request."""

from __future__ import annotations

import re
import signal
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tritongrpc
import tritonclient.http as tritonhttp
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as triton_pb
from tritonclient.grpc import service_pb2_grpc as triton_pb_grpc
from tritonclient.utils import InferenceServerException

from service.config import BUNDLED_MODEL_DIR, Settings
from service.server import DrainingServer
from tests.images import encode_png, random_png
from tests.integration.conftest import STARTUP_LIMIT_S, InThreadServer, ServerProcess, free_port, poll, scrape

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.png"))
BUNDLED = "fashion-mnist-resnet20"
SERVICE = "inference.GRPCInferenceService"
TINY_LIMITS = {"max_upload_bytes": 1_048_576, "max_files_per_request": 4, "max_image_pixels": 4_000_000}
GRPC_LISTENING = re.compile(r"gRPC listening on 127\.0\.0\.1:(\d+)")


class GrpcServerProcess(ServerProcess):
    """``python -m service`` with its gRPC listener on a free loopback port; one server process unless `args` ask
    for workers."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(["--workers", "1", *args, "--grpc-port", str(free_port())], log_path, env)
        self.grpc_url = ""

    def wait_ready(self) -> GrpcServerProcess:
        super().wait_ready()
        port = poll(lambda: (match := GRPC_LISTENING.search(self.log())) and int(match.group(1)), "gRPC to listen")
        self.grpc_url = f"127.0.0.1:{port}"
        return self


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory):
    server = GrpcServerProcess(["--no-access-log"], tmp_path_factory.mktemp("grpc-bundled") / "server.log").start()
    try:
        yield server.wait_ready()
    finally:
        server.kill()


@pytest.fixture(scope="module")
def tiny(serving_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny models with small limits: 1 MiB messages, 4 images a request, 4 megapixels an image."""
    args = [
        "--model-dir",
        str(serving_repository),
        "--no-access-log",
        "--max-upload-bytes",
        str(TINY_LIMITS["max_upload_bytes"]),
        "--max-files-per-request",
        str(TINY_LIMITS["max_files_per_request"]),
        "--max-image-pixels",
        str(TINY_LIMITS["max_image_pixels"]),
    ]
    server = GrpcServerProcess(args, tmp_path_factory.mktemp("grpc-tiny") / "server.log").start()
    try:
        yield server.wait_ready()
    finally:
        server.kill()


def grpc_client(server: Any) -> tritongrpc.InferenceServerClient:
    return tritongrpc.InferenceServerClient(server.grpc_url)


def http_client(server: Any) -> tritonhttp.InferenceServerClient:
    return tritonhttp.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120.0)


def inputs(datatype: str, data: np.ndarray) -> tuple[tritongrpc.InferInput, tritonhttp.InferInput]:
    """The same input for both clients (binary data over HTTP, raw_input_contents over gRPC)."""
    over_grpc = tritongrpc.InferInput("input", list(data.shape), datatype)
    over_grpc.set_data_from_numpy(data)
    over_http = tritonhttp.InferInput("input", list(data.shape), datatype)
    over_http.set_data_from_numpy(data, binary_data=True)
    return over_grpc, over_http


def images(*encoded: bytes) -> np.ndarray:
    return np.array(list(encoded), dtype=object)


def ranked(table: np.ndarray) -> list[list[tuple[int, str, float]]]:
    """Classification strings "<score>:<index>:<label>" as (index, label, score), row by row."""
    rows = []
    for row in table:
        rows.append(
            [
                (int(index), label, float(score))
                for score, index, label in (entry.decode().split(":", 2) for entry in row)
            ]
        )
    return rows


def metric(server: Any, name: str, **labels: str) -> float:
    return scrape(server.url).get((name, tuple(sorted(labels.items()))), 0.0)


# --- health and metadata ------------------------------------------------------------------------------------------


def test_health_and_metadata(bundled):
    triton = grpc_client(bundled)
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(BUNDLED) and triton.is_model_ready(BUNDLED, model_version="1")
    assert not triton.is_model_ready("no-such-model")
    server = triton.get_server_metadata(as_json=True)
    assert server["name"] == "resnet-serve" and server["extensions"] == [
        "binary_tensor_data",
        "classification",
        "model_configuration",
        "model_repository",
        "statistics",
    ]
    assert server["version"] == http_client(bundled).get_server_metadata()["version"]
    metadata = triton.get_model_metadata(BUNDLED, as_json=True)
    assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]}]
    for name, version in (("no-such-model", ""), (BUNDLED, "2")):
        with pytest.raises(InferenceServerException) as over_grpc:
            triton.get_model_metadata(name, model_version=version)
        with pytest.raises(InferenceServerException) as over_http:
            http_client(bundled).get_model_metadata(name, model_version=version)
        assert over_grpc.value.status() == "StatusCode.NOT_FOUND"
        assert over_grpc.value.message() == over_http.value.message()


def test_the_standard_health_service_reflects_readiness(bundled):
    with grpc.insecure_channel(bundled.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30)
        assert unknown.value.code() is grpc.StatusCode.NOT_FOUND


# --- inference ----------------------------------------------------------------------------------------------------


def test_bytes_inference_equals_the_http_answer(bundled):
    encoded = images(*(path.read_bytes() for path in EXAMPLES))
    over_grpc, over_http = inputs("BYTES", encoded)
    logits = grpc_client(bundled).infer(BUNDLED, [over_grpc]).as_numpy("logits")
    expected = http_client(bundled).infer(BUNDLED, [over_http]).as_numpy("logits")
    assert logits.shape == (len(EXAMPLES), 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_the_classification_extension_equals_the_http_answer(bundled):
    encoded = images(*(path.read_bytes() for path in EXAMPLES))
    over_grpc, over_http = inputs("BYTES", encoded)
    result = grpc_client(bundled).infer(
        BUNDLED, [over_grpc], request_id="req-7", outputs=[tritongrpc.InferRequestedOutput("logits", class_count=3)]
    )
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-7", BUNDLED, "1")
    assert result.get_output("logits").datatype == "BYTES"
    table = result.as_numpy("logits")
    expected = (
        http_client(bundled)
        .infer(
            BUNDLED, [over_http], outputs=[tritonhttp.InferRequestedOutput("logits", binary_data=True, class_count=3)]
        )
        .as_numpy("logits")
    )
    assert table.shape == (len(EXAMPLES), 3)
    for row, expected_row in zip(ranked(table), ranked(expected), strict=False):
        assert [(index, label) for index, label, _ in row] == [(index, label) for index, label, _ in expected_row]
        np.testing.assert_allclose([s for *_, s in row], [s for *_, s in expected_row], atol=2e-6)
        assert [s for *_, s in row] == sorted((s for *_, s in row), reverse=True) and 0 < row[0][2] <= 1


@pytest.mark.parametrize("via", ["raw_input_contents", "contents"])
def test_fp32_inference_equals_http_and_the_onnx_file(bundled, via):
    batch = np.random.default_rng(3).normal(0, 1, (5, 1, 28, 28)).astype(np.float32)
    if via == "contents":
        request = triton_pb.ModelInferRequest(model_name=BUNDLED)
        tensor = request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
        tensor.contents.fp32_contents.extend(batch.reshape(-1).tolist())
        with grpc.insecure_channel(bundled.grpc_url) as channel:
            response = triton_pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=120)
        logits = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(response.outputs[0].shape))
    else:
        over_grpc, _ = inputs("FP32", batch)
        logits = grpc_client(bundled).infer(BUNDLED, [over_grpc]).as_numpy("logits")
    _, over_http = inputs("FP32", batch)
    np.testing.assert_allclose(
        logits, http_client(bundled).infer(BUNDLED, [over_http]).as_numpy("logits"), rtol=1e-5, atol=1e-6
    )
    session = ort.InferenceSession(str(BUNDLED_MODEL_DIR / f"{BUNDLED}.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(logits, session.run(["logits"], {"input": batch})[0], rtol=1e-4, atol=1e-4)


def test_bytes_in_typed_contents_equal_raw_contents(bundled):
    encoded = [path.read_bytes() for path in EXAMPLES[:2]]
    request = triton_pb.ModelInferRequest(model_name=BUNDLED, id="typed")
    request.inputs.add(name="input", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(encoded)
    with grpc.insecure_channel(bundled.grpc_url) as channel:
        response = triton_pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=120)
    assert response.id == "typed" and list(response.outputs[0].shape) == [2, 10]
    logits = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 10)
    over_grpc, _ = inputs("BYTES", images(*encoded))
    np.testing.assert_allclose(
        logits, grpc_client(bundled).infer(BUNDLED, [over_grpc]).as_numpy("logits"), rtol=1e-5, atol=1e-6
    )


# --- errors -------------------------------------------------------------------------------------------------------


def both_fail(
    server: Any, model: str, datatype: str, data: np.ndarray, *, class_count: int = 0, model_version: str = ""
) -> tuple[InferenceServerException, InferenceServerException]:
    over_grpc, over_http = inputs(datatype, data)
    with pytest.raises(InferenceServerException) as grpc_error:
        grpc_client(server).infer(
            model,
            [over_grpc],
            model_version=model_version,
            outputs=[tritongrpc.InferRequestedOutput("logits", class_count=class_count)],
        )
    with pytest.raises(InferenceServerException) as http_error:
        http_client(server).infer(
            model,
            [over_http],
            model_version=model_version,
            outputs=[tritonhttp.InferRequestedOutput("logits", binary_data=True, class_count=class_count)],
        )
    return grpc_error.value, http_error.value


@pytest.mark.parametrize(
    "case,code,http_status",
    [
        ("too many images", "RESOURCE_EXHAUSTED", "413"),
        ("too many pixels", "RESOURCE_EXHAUSTED", "413"),
        ("unknown model", "NOT_FOUND", "404"),
        ("unknown version", "NOT_FOUND", "404"),
        ("unsupported datatype", "INVALID_ARGUMENT", "400"),
        ("wrong fp32 shape", "INVALID_ARGUMENT", "400"),
        ("not an image", "INVALID_ARGUMENT", "415"),
        ("classification past the classes", "INVALID_ARGUMENT", "422"),
    ],
)
def test_errors_are_status_codes_with_the_http_message(tiny, case, code, http_status):
    model, version, class_count = "tiny-gray", "", 0
    if case == "too many images":
        datatype, data = "BYTES", images(*(random_png(i) for i in range(5)))
    elif case == "too many pixels":
        datatype, data = "BYTES", images(encode_png(np.zeros((2001, 2001), np.uint8)))
    elif case == "unknown model":
        datatype, data, model = "BYTES", images(random_png(1)), "tiny-missing"
    elif case == "unknown version":
        datatype, data, version = "BYTES", images(random_png(1)), "2"
    elif case == "unsupported datatype":
        datatype, data = "INT32", np.zeros((1, 1, 28, 28), np.int32)
    elif case == "wrong fp32 shape":
        datatype, data = "FP32", np.zeros((1, 3, 28, 28), np.float32)
    elif case == "not an image":
        datatype, data = "BYTES", images(b"not an image")
    else:
        datatype, data, class_count = "BYTES", images(random_png(1)), 11
    over_grpc, over_http = both_fail(tiny, model, datatype, data, class_count=class_count, model_version=version)
    assert over_grpc.status() == f"StatusCode.{code}"
    assert over_http.status() == http_status
    assert over_grpc.message() == over_http.message()


def test_a_message_over_the_upload_limit_is_resource_exhausted(tiny):
    over_grpc, _ = inputs("BYTES", images(bytes(TINY_LIMITS["max_upload_bytes"] + 1)))
    with pytest.raises(InferenceServerException) as error:
        grpc_client(tiny).infer("tiny-gray", [over_grpc])
    assert error.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "larger than max" in error.value.message()


def test_raw_contents_must_cover_every_input(tiny):
    request = triton_pb.ModelInferRequest(model_name="tiny-gray", raw_input_contents=[b"a", b"b"])
    request.inputs.add(name="input", datatype="BYTES", shape=[1])
    with grpc.insecure_channel(tiny.grpc_url) as channel, pytest.raises(grpc.RpcError) as error:
        triton_pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "2 raw_input_contents for 1 input(s)" in error.value.details()


def test_metrics_count_grpc_calls_with_their_protocol(tiny):
    def counts() -> tuple[float, ...]:
        return (
            metric(tiny, "resnet_serve_requests_total", model="tiny-gray", protocol="v2-grpc"),
            metric(tiny, "resnet_serve_grpc_requests_total", method="ModelInfer", code="OK"),
            metric(tiny, "resnet_serve_grpc_requests_total", method="ModelInfer", code="NOT_FOUND"),
            metric(tiny, "resnet_serve_rejections_total", reason="unknown_model"),
            metric(tiny, "resnet_serve_images_classified_total", model="tiny-gray"),
        )

    before = counts()
    over_grpc, _ = inputs("BYTES", images(random_png(1), random_png(2)))
    grpc_client(tiny).infer("tiny-gray", [over_grpc])
    with pytest.raises(InferenceServerException):
        grpc_client(tiny).infer("tiny-missing", [over_grpc])
    after = counts()
    assert [b - a for a, b in zip(before, after, strict=False)] == [1, 1, 1, 1, 2]
    assert metric(tiny, "resnet_serve_grpc_requests_in_flight") == 0


def test_api_keys_guard_grpc_as_they_guard_http(tmp_path, gray_dir):
    server = GrpcServerProcess(
        ["--model-dir", str(gray_dir), "--no-access-log"],
        tmp_path / "server.log",
        env={"RESNET_SERVE_API_KEYS": "ci:s3cret"},
    ).start()
    try:
        server.wait_ready()
        triton = grpc_client(server)
        assert triton.is_server_live() and triton.is_server_ready()  # probes need no key
        over_grpc, over_http = inputs("BYTES", images(random_png(1)))
        for headers in (None, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
            with pytest.raises(InferenceServerException) as refused:
                triton.infer("gray", [over_grpc], headers=headers)
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as refused_over_http:
            http_client(server).infer("gray", [over_http])
        assert refused.value.message() == refused_over_http.value.message()
        with pytest.raises(InferenceServerException) as metadata:
            triton.get_model_metadata("gray")
        assert metadata.value.status() == "StatusCode.UNAUTHENTICATED"
        for headers in ({"authorization": "Bearer s3cret"}, {"x-api-key": "s3cret"}):
            assert triton.infer("gray", [over_grpc], headers=headers).as_numpy("logits").shape == (1, 10)
        assert metric(server, "resnet_serve_api_key_requests_total", key="ci") == 2
    finally:
        server.kill()


def test_grpc_port_in_use_stops_start_up(start_server, tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "models" / "gray.onnx", gray_spec, seed=5)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_server("--model-dir", str(tmp_path / "models"), "--grpc-port", str(port))
        assert server.wait_exit() == 3
    assert f"cannot start: gRPC cannot listen on 127.0.0.1:{port}" in server.log()


# --- holding the model: warm-up, queue, deadline, drain --------------------------------------------------------------


class InThreadGrpcServer(InThreadServer):
    """`InThreadServer`, but run by `DrainingServer` with the gRPC front end on a free loopback port, so the
    drain can be started by `sigterm()` (what the signal handler does)."""

    def __init__(self, settings: Settings, *, hold_warm_up: bool = False) -> None:
        super().__init__(settings, hold_warm_up=hold_warm_up)
        self.grpc = self.model_server.grpc_front_end(address="127.0.0.1:0")
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on")
        self.server = DrainingServer(
            config, lifecycle=self.model_server.lifecycle, grace_s=settings.shutdown_grace_s, grpc=self.grpc
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.grpc_url = ""

    def start(self) -> InThreadGrpcServer:
        super().start()
        self.grpc_url = f"127.0.0.1:{poll(lambda: self.grpc.port, 'the gRPC listener')}"
        return self

    def sigterm(self) -> None:
        self.server.handle_exit(signal.SIGTERM, None)

    def queue_depth(self, model: str) -> int:
        return httpx.get(f"{self.url}/v1/models/{model}", timeout=30).json()["batching"]["queue_depth"]


@pytest.fixture
def grpc_in_thread():
    servers: list[InThreadGrpcServer] = []

    def build(settings: Settings, *, hold_warm_up: bool = False) -> InThreadGrpcServer:
        server = InThreadGrpcServer(settings, hold_warm_up=hold_warm_up)
        servers.append(server)
        return server.start()

    yield build
    for server in servers:
        server.stop()


@pytest.fixture
def gray_dir(tmp_path, make_classifier, gray_spec) -> Path:
    make_classifier(tmp_path / "models" / "gray.onnx", gray_spec, seed=5)
    return tmp_path / "models"


class Call:
    """One ModelInfer in flight from tritonclient's async_infer; `outcome()` waits for its answer."""

    def __init__(self, client: tritongrpc.InferenceServerClient, image: bytes, **kwargs: Any) -> None:
        self._done = threading.Event()
        self.result: tritongrpc.InferResult | None = None
        self.error: InferenceServerException | None = None
        tensor = tritongrpc.InferInput("input", [1], "BYTES")
        tensor.set_data_from_numpy(images(image))
        self.context = client.async_infer("gray", [tensor], self._finished, **kwargs)

    def _finished(self, result: Any, error: Any) -> None:
        self.result, self.error = result, error
        self._done.set()

    def outcome(self) -> str:
        assert self._done.wait(STARTUP_LIMIT_S), "the call was never answered"
        return "OK" if self.error is None else self.error.status()


def health_status(server: Any, service: str = "") -> int:
    with grpc.insecure_channel(server.grpc_url) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status
        )


def test_not_serving_and_unavailable_during_warm_up(grpc_in_thread, gray_dir, wait_until):
    server = grpc_in_thread(Settings(model_dir=gray_dir), hold_warm_up=True)
    triton = grpc_client(server)
    assert health_status(server) == health_status(server, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert triton.is_server_live() and not triton.is_server_ready() and not triton.is_model_ready("gray")
    over_grpc, over_http = inputs("BYTES", images(random_png(1)))
    with pytest.raises(InferenceServerException) as refused:
        triton.infer("gray", [over_grpc])
    with pytest.raises(InferenceServerException) as refused_over_http:
        http_client(server).infer("gray", [over_http])
    assert refused.value.status() == "StatusCode.UNAVAILABLE"
    assert refused.value.message() == refused_over_http.value.message()

    server.runtimes["gray"].warm_up_gate.set()
    wait_until(lambda: health_status(server) == health_pb2.HealthCheckResponse.SERVING, "SERVING after warm-up")
    assert triton.is_server_ready() and triton.is_model_ready("gray")
    assert triton.infer("gray", [over_grpc]).as_numpy("logits").shape == (1, 10)


def test_overload_is_resource_exhausted_with_the_http_message(grpc_in_thread, gray_dir, wait_until):
    server = grpc_in_thread(Settings(model_dir=gray_dir, max_batch_size=1, max_queue_size=1, max_files_per_request=1))
    wait_until(lambda: health_status(server) == health_pb2.HealthCheckResponse.SERVING, "readiness")
    runtime = server.runtimes["gray"]
    runtime.run_gate.clear()
    triton = grpc_client(server)
    running = Call(triton, random_png(1))
    runtime.wait_for_batch()
    queued = Call(triton, random_png(2))
    wait_until(lambda: server.queue_depth("gray") == 1, "one image queued")

    request = triton_pb.ModelInferRequest(model_name="gray")
    request.inputs.add(name="input", datatype="BYTES", shape=[1]).contents.bytes_contents.append(random_png(3))
    with grpc.insecure_channel(server.grpc_url) as channel, pytest.raises(grpc.RpcError) as refused:
        triton_pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    _, over_http = inputs("BYTES", images(random_png(3)))
    with pytest.raises(InferenceServerException) as refused_over_http:
        http_client(server).infer("gray", [over_http])
    runtime.run_gate.set()

    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details() == refused_over_http.value.message()
    assert ("retry-after", "1") in refused.value.trailing_metadata()
    assert running.outcome() == queued.outcome() == "OK"


def test_the_concurrent_call_cap_refuses_with_resource_exhausted(grpc_in_thread, gray_dir, wait_until):
    server = grpc_in_thread(Settings(model_dir=gray_dir, max_batch_size=1, grpc_max_concurrent_rpcs=1))
    triton = grpc_client(server)
    wait_until(lambda: triton.is_server_ready(), "readiness")
    runtime = server.runtimes["gray"]
    runtime.run_gate.clear()
    running = Call(triton, random_png(1))
    runtime.wait_for_batch()
    with pytest.raises(InferenceServerException) as refused:
        triton.get_server_metadata()
    assert triton.is_server_live()  # the probes are never refused for the cap
    runtime.run_gate.set()
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "gRPC calls at once" in refused.value.message()
    assert running.outcome() == "OK"


def dropped(server: Any) -> float:
    return sum(
        metric(server, "resnet_serve_dropped_images_total", model="gray", reason=reason)
        for reason in ("timeout", "client_disconnected")
    )


def test_a_client_deadline_shorter_than_the_queue_wait(grpc_in_thread, gray_dir, wait_until):
    server = grpc_in_thread(Settings(model_dir=gray_dir, max_batch_size=1))
    triton = grpc_client(server)
    wait_until(lambda: triton.is_server_ready(), "readiness")
    runtime = server.runtimes["gray"]
    ran_before, dropped_before = len(runtime.batch_sizes), dropped(server)
    timeouts_before = metric(server, "resnet_serve_rejections_total", reason="timeout")
    runtime.run_gate.clear()
    running = Call(triton, random_png(1))
    runtime.wait_for_batch()

    late = Call(triton, random_png(2), client_timeout=5.0)  # queued behind the held batch until its deadline
    wait_until(lambda: server.queue_depth("gray") == 1, "the late image queued")
    assert late.outcome() == "StatusCode.DEADLINE_EXCEEDED"
    runtime.run_gate.set()
    assert running.outcome() == "OK"
    assert triton.infer("gray", [inputs("BYTES", images(random_png(3)))[0]]).as_numpy("logits").shape == (1, 10)

    assert runtime.batch_sizes[ran_before:] == [1, 1]  # the first and the third image: the late one never ran
    wait_until(lambda: dropped(server) == dropped_before + 1, "the late image counted as dropped")
    assert metric(server, "resnet_serve_rejections_total", reason="timeout") == timeouts_before + 1
    assert server.queue_depth("gray") == 0


def test_a_cancelled_call_releases_its_queued_image(grpc_in_thread, gray_dir, wait_until):
    server = grpc_in_thread(Settings(model_dir=gray_dir, max_batch_size=1))
    triton = grpc_client(server)
    wait_until(lambda: triton.is_server_ready(), "readiness")
    runtime = server.runtimes["gray"]
    ran_before, dropped_before = len(runtime.batch_sizes), dropped(server)
    runtime.run_gate.clear()
    running = Call(triton, random_png(1))
    runtime.wait_for_batch()
    cancelled = Call(triton, random_png(2))
    wait_until(lambda: server.queue_depth("gray") == 1, "the second image queued")
    cancelled.context.cancel()
    assert cancelled.outcome() == "StatusCode.CANCELLED"
    wait_until(
        lambda: metric(server, "resnet_serve_rejections_total", reason="client_disconnected") == 1,
        "the server to see the cancellation",
    )
    runtime.run_gate.set()
    assert running.outcome() == "OK"
    # The batcher drops (and counts) a cancelled image when it forms the next batch.
    assert triton.infer("gray", [inputs("BYTES", images(random_png(3)))[0]]).as_numpy("logits").shape == (1, 10)
    assert runtime.batch_sizes[ran_before:] == [1, 1]  # the first and the third image: the cancelled one never ran
    wait_until(lambda: dropped(server) == dropped_before + 1, "the cancelled image dropped")


def test_sigterm_drains_calls_in_flight_and_the_health_service_says_not_serving(grpc_in_thread, gray_dir, wait_until):
    server = grpc_in_thread(Settings(model_dir=gray_dir, max_batch_size=1, shutdown_grace_s=120))
    triton = grpc_client(server)
    wait_until(lambda: triton.is_server_ready(), "readiness")
    pngs = [random_png(10 + i) for i in range(3)]
    expected = [triton.infer("gray", [inputs("BYTES", images(png))[0]]).as_numpy("logits") for png in pngs]

    channel = grpc.insecure_channel(server.grpc_url)
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=STARTUP_LIMIT_S
    )
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    runtime = server.runtimes["gray"]
    runtime.run_gate.clear()
    calls = [Call(triton, png) for png in pngs]  # one running, two queued
    wait_until(lambda: metric(server, "resnet_serve_grpc_requests_in_flight") == 3, "3 calls in flight")

    server.sigterm()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert next(watch, None) is None  # the watch ends at the drain, which it would otherwise hold up
    draining = grpc_client(server)
    assert draining.is_server_live() and not draining.is_server_ready()  # probes answer, as over HTTP
    with pytest.raises(InferenceServerException) as refused:
        draining.get_server_metadata()
    assert refused.value.status() == "StatusCode.UNAVAILABLE"
    assert refused.value.message() == httpx.get(server.url + "/v2", timeout=30).json()["error"]
    ready = httpx.get(server.url + "/readyz", timeout=30)
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert server.thread.is_alive()

    runtime.run_gate.set()
    for call, logits in zip(calls, expected, strict=False):
        assert call.outcome() == "OK"
        np.testing.assert_allclose(call.result.as_numpy("logits"), logits, rtol=1e-5, atol=1e-6)
    channel.close()
    server.thread.join(timeout=STARTUP_LIMIT_S)
    assert not server.thread.is_alive() and not server.server.startup_failed


def test_sigterm_under_grpc_load_exits_0(tmp_path, gray_dir, wait_until):
    server = GrpcServerProcess(
        ["--model-dir", str(gray_dir), "--shutdown-grace-s", "120", "--no-access-log"], tmp_path / "server.log"
    ).start()
    try:
        server.wait_ready()
        stop = threading.Event()
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()

        def client(seed: int) -> None:
            triton = tritongrpc.InferenceServerClient(server.grpc_url)
            tensor = inputs("BYTES", images(random_png(seed)))[0]
            while not stop.is_set():
                try:
                    triton.infer("gray", [tensor], client_timeout=STARTUP_LIMIT_S)
                    outcome = "OK"
                except InferenceServerException as exc:
                    outcome = exc.status()
                with lock:
                    outcomes[outcome] += 1
                if outcome != "OK":
                    return

        clients = [threading.Thread(target=client, args=(seed,)) for seed in range(6)]
        for thread in clients:
            thread.start()
        wait_until(lambda: outcomes["OK"] >= 16, "load to be under way")
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0, server.log()
        stop.set()
        for thread in clients:
            thread.join(timeout=STARTUP_LIMIT_S)
        # Calls received before the signal are answered, later ones refused: never CANCELLED (see service.grpc.gate).
        assert set(outcomes) <= {"OK", "StatusCode.UNAVAILABLE"}, outcomes
        log = server.log()
        assert "gRPC stopped" in log and "Traceback" not in log
    finally:
        server.kill()


def test_worker_processes_share_the_grpc_port(tmp_path, gray_dir, wait_until):
    server = GrpcServerProcess(
        ["--model-dir", str(gray_dir), "--workers", "2", "--no-access-log"], tmp_path / "server.log"
    ).start()
    try:
        server.wait_ready()
        wait_until(lambda: len(GRPC_LISTENING.findall(server.log())) == 2, "both workers listening for gRPC")
        tensor = inputs("BYTES", images(random_png(4)))[0]
        answers = [
            tritongrpc.InferenceServerClient(server.grpc_url).infer("gray", [tensor]).as_numpy("logits")
            for _ in range(8)
        ]  # a client (and connection) each: the kernel spreads them over the workers
        for logits in answers[1:]:
            np.testing.assert_allclose(logits, answers[0], rtol=1e-5, atol=1e-6)
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0, server.log()
        assert server.log().count("gRPC stopped") == 2
    finally:
        server.kill()


def test_request_ids_are_echoed_and_answer_for_the_v2_id(tiny):
    """The client's x-request-id comes back in the trailing metadata and as the response's id when the request
    gave none; without one the server makes one."""
    import grpc as grpc_lib

    from service.grpc.proto import grpc_predict_v2_pb2 as pb
    from service.grpc.proto import grpc_predict_v2_pb2_grpc as pb_grpc

    channel = grpc_lib.insecure_channel(tiny.grpc_url)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="tiny-gray")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(bytes(4 * 28 * 28))
    response, call = stub.ModelInfer.with_call(request, metadata=(("x-request-id", "grpc-trace-7"),), timeout=60)
    assert response.id == "grpc-trace-7"
    assert ("x-request-id", "grpc-trace-7") in call.trailing_metadata()
    _, call = stub.ModelInfer.with_call(request, timeout=60)
    made = dict(call.trailing_metadata())["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]+", made)
    channel.close()
