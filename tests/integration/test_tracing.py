"""Tracing with OpenTelemetry on real servers.

In the test process (real uvicorn and the real batcher, the model's runtime held so that requests queue up into one
batch): the SDK's in-memory exporter receives the span tree of every request (receive with admission, decode, queue
wait, inference, encode), the caller's W3C traceparent makes it a child of the caller's span, and the batch's span
links to the requests it served. As a subprocess (`python -m service --tracing`): the OTLP exporter sends the spans
of HTTP and gRPC requests to a receiver of the test, which decodes them, and the sampler follows OTEL_TRACES_SAMPLER.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service import tracing
from service.config import Settings
from tests.images import random_png
from tests.integration.conftest import ServerProcess, poll, scrape
from tests.integration.test_v2_grpc import GRPC_LISTENING, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "fashion-mnist-resnet20"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
STAGES = {"receive", "decode", "queue wait", "inference", "encode"}


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> dict[str, ReadableSpan]:
    return {
        span.name: span for span in spans if span.parent is not None and span.parent.span_id == parent.context.span_id
    }


def test_a_request_s_stages_and_its_batch_s_links(exported, in_thread_server):
    server = in_thread_server(Settings(max_batch_size=4, access_log=False)).start()
    poll(lambda: httpx.get(server.url + "/readyz").status_code == 200, "the server to be ready")
    runtime = server.runtimes[MODEL]

    def classify(seed: int, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(
            server.url + f"/v1/models/{MODEL}/classify",
            files={"file": (f"{seed}.png", random_png(seed), "image/png")},
            headers=headers,
            timeout=120,
        )

    runtime.run_gate.clear()
    with ThreadPoolExecutor(max_workers=4) as pool:
        try:
            first = pool.submit(classify, 0, {"X-Request-ID": "lone-0"})
            runtime.wait_for_batch()  # the model is busy: the next three queue up and run as one batch
            batched = [
                pool.submit(classify, 1, {"X-Request-ID": "queued-1", "traceparent": TRACEPARENT}),
                pool.submit(classify, 2, {"X-Request-ID": "queued-2"}),
                pool.submit(classify, 3, {"X-Request-ID": "queued-3"}),
            ]
            poll(
                lambda: scrape(server.url)[("resnet_serve_queue_depth", (("model", MODEL), ("version", "1")))] == 3,
                "three queued images",
            )
        finally:
            runtime.run_gate.set()
        assert first.result().status_code == 200 and all(f.result().status_code == 200 for f in batched)
    assert runtime.batch_sizes == [1, 3]

    def all_spans() -> list[ReadableSpan]:
        spans = list(exported.get_finished_spans())
        served = [span for span in spans if span.kind == SpanKind.SERVER and "classify" in span.name]
        return spans if len(served) == 4 else []

    spans = poll(all_spans, "the spans of the four requests")
    requests = {
        span.attributes["request.id"]: span
        for span in spans
        if span.kind == SpanKind.SERVER and span.name == "POST /v1/models/{name}/classify"
    }
    assert set(requests) == {"lone-0", "queued-1", "queued-2", "queued-3"}

    for request_id in ("queued-1", "queued-2", "queued-3"):
        request = requests[request_id]
        stages = children(spans, request)
        assert set(stages) >= STAGES, (request_id, sorted(stages))
        assert set(children(spans, stages["receive"])) == {"admission"}
        assert request.attributes["http.response.status_code"] == 200
        assert (request.attributes["model"], request.attributes["model.version"]) == (MODEL, "1")

    caller = requests["queued-1"]
    assert format(caller.context.trace_id, "032x") == CALLER_TRACE
    assert caller.parent is not None and format(caller.parent.span_id, "016x") == CALLER_SPAN

    lone = requests["lone-0"]
    assert {"receive", "decode", "inference", "encode"} <= set(children(spans, lone))

    batches = [span for span in spans if span.name == "batch inference"]
    by_size = {span.attributes["batch.size"]: span for span in batches}
    assert set(by_size) == {1, 3}
    linked = {(link.context.trace_id, link.context.span_id) for link in by_size[3].links}
    assert linked == {
        (requests[r].context.trace_id, requests[r].context.span_id) for r in ("queued-1", "queued-2", "queued-3")
    }
    assert [(link.context.span_id) for link in by_size[1].links] == [lone.context.span_id]
    # Each request's inference stage is its batch's call.
    for request_id in ("queued-1", "queued-2", "queued-3"):
        inference = children(spans, requests[request_id])["inference"]
        assert (inference.start_time, inference.end_time) == (by_size[3].start_time, by_size[3].end_time)


def test_probes_and_metrics_are_not_traced_and_refusals_are(exported, in_thread_server, tmp_path):
    server = in_thread_server(Settings(api_keys="ci:a-key-0123456789", access_log=False)).start()
    poll(lambda: httpx.get(server.url + "/readyz").status_code == 200, "the server to be ready")
    exported.clear()
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200
    assert httpx.get(server.url + "/v1/models").status_code == 401
    (span,) = poll(lambda: list(exported.get_finished_spans()), "the refused request's span")
    assert (span.name, span.attributes["http.response.status_code"]) == ("GET", 401)  # refused before routing
    assert span.attributes["url.path"] == "/v1/models"


class OtlpReceiver:
    """An OTLP/HTTP collector for one test: it decodes every export and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                export = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                for resource in export.resource_spans:
                    service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
                    for scope in resource.scope_spans:
                        owner.spans.extend((service, span) for span in scope.spans)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    collector = OtlpReceiver()
    yield collector
    collector.close()


def traced_server(tmp_path: Path, receiver: OtlpReceiver, sampler: str, *flags: str) -> tuple[ServerProcess, str]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_TRACES_SAMPLER": sampler,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "resnet-serve-under-test",
    }
    args = ["--tracing", "--workers", "1", "--grpc-port", str(free_port()), *flags]
    server = ServerProcess(args, tmp_path / "server.log", env).start().wait_ready()
    port = poll(lambda: (match := GRPC_LISTENING.search(server.log())) and int(match.group(1)), "gRPC to listen")
    return server, f"127.0.0.1:{port}"


def grpc_infer(address: str, metadata: dict[str, str]) -> None:
    image = tritongrpc.InferInput("input", [1], "BYTES")
    image.set_data_from_numpy(np.array([random_png(5)], dtype=object))
    tritongrpc.InferenceServerClient(address).infer(MODEL, [image], headers=metadata)


def test_the_otlp_exporter_sends_http_and_grpc_spans_with_the_caller_s_context(tmp_path, receiver):
    server, grpc_address = traced_server(tmp_path, receiver, "parentbased_always_on")
    try:
        answer = httpx.post(server.url + "/v1/classify", files={"file": ("a.png", random_png(4), "image/png")})
        assert answer.status_code == 200
        grpc_infer(grpc_address, {"traceparent": TRACEPARENT, "x-request-id": "grpc-traced"})

        def both_served() -> list:
            names = {span.name for _, span in receiver.spans}
            return receiver.spans if {"POST /v1/classify", "gRPC ModelInfer"} <= names else []

        spans = poll(both_served, "the exporter to send both requests' spans")
    finally:
        server.kill()
    assert {service for service, _ in spans} == {"resnet-serve-under-test"}  # OTEL_SERVICE_NAME
    (grpc_span,) = [span for _, span in spans if span.name == "gRPC ModelInfer"]
    assert grpc_span.trace_id.hex() == CALLER_TRACE and grpc_span.parent_span_id.hex() == CALLER_SPAN
    attributes = {a.key: a.value for a in grpc_span.attributes}
    assert attributes["request.id"].string_value == "grpc-traced"
    assert attributes["rpc.grpc.status_code"].int_value == 0
    stages = {span.name for _, span in spans if span.parent_span_id == grpc_span.span_id}
    assert STAGES - {"queue wait"} <= stages  # (a lone image on an idle model is decoded in the model's thread)


def test_the_sampler_comes_from_the_standard_variable(tmp_path, receiver):
    server, _ = traced_server(tmp_path, receiver, "always_off")
    for seed in range(3):
        answer = httpx.post(server.url + "/v1/classify", files={"file": ("a.png", random_png(seed), "image/png")})
        assert answer.status_code == 200
    server.signal()  # the drain shuts the exporter down, sending whatever it holds
    assert server.wait_exit() == 0
    assert receiver.spans == []
