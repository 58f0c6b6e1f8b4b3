"""Triton's statistics from our counters: what a request and a batch add, read back in Triton's shape (the
integration tests read them over both protocols from two worker processes)."""

from __future__ import annotations

from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as triton_pb

from service.inference import StageTimings
from service.metrics import ServiceMetrics
from service.v2 import extensions


def test_requests_and_batches_add_up_in_triton_s_shape():
    metrics = ServiceMetrics()
    observer = metrics.register_model("m", "1")
    recorder = metrics.model_statistics("m", "1")
    recorder.record_request(
        StageTimings(preprocess_s=0.002, queue_wait_s=0.001, inference_s=0.003, total_s=0.01, postprocess_s=0.0005)
    )
    recorder.record_request(StageTimings(0.002, 0.001, 0.003, 0.01))
    recorder.record_failure(0.5)
    observer.batch_ran(4, 0.003)
    observer.batch_ran(4, 0.003)
    observer.batch_ran(1, 0.001)

    (stats,) = metrics.model_statistics_of([("m", "1"), ("m", "1")])
    triton = stats.as_triton()
    assert (triton["name"], triton["version"]) == ("m", "1")
    assert (triton["inference_count"], triton["execution_count"]) == (9, 3)
    assert triton["inference_stats"]["success"] == {"count": 2, "ns": 20_000_000}
    assert triton["inference_stats"]["fail"] == {"count": 1, "ns": 500_000_000}
    assert triton["inference_stats"]["queue"] == {"count": 2, "ns": 2_000_000}
    assert triton["inference_stats"]["compute_output"] == {"count": 2, "ns": 500_000}
    assert [(b["batch_size"], b["compute_infer"]) for b in triton["batch_stats"]] == [
        (1, {"count": 1, "ns": 1_000_000}),
        (4, {"count": 2, "ns": 6_000_000}),
    ]
    assert triton["last_inference"] > 0
    # The shape is Triton's message (a field it does not have would not parse).
    json_format.ParseDict(extensions.statistics([stats]), triton_pb.ModelStatisticsResponse())


def test_a_version_with_no_traffic_yet_reads_as_zeros():
    (stats,) = ServiceMetrics().model_statistics_of([("fresh", "1")])
    triton = stats.as_triton()
    assert triton["inference_count"] == triton["execution_count"] == triton["last_inference"] == 0
    assert triton["inference_stats"]["success"] == {"count": 0, "ns": 0} and triton["batch_stats"] == []
