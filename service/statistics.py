"""Triton's statistics extension: per model version, requests and their stage times, batches by size, summed over
every worker process of the server.

The figures are Prometheus counters in the app's registry (`metrics.ServiceMetrics`), so that with worker processes
they live in the shared multiprocess files and any worker's answer sums them all, as /metrics does. Recording costs
a few counter increments per request (`record_request`, from the data plane) and per batch (`record_batch`, from the
batcher's observer); reading them (`collect`) builds Triton's shape, which HTTP sends as JSON and gRPC parses into
its `ModelStatisticsResponse`:

- ``inference_stats``: ``success`` and ``fail`` (requests and their time from arrival to answer), and for successful
  requests ``queue`` (waiting for a batch), ``compute_input`` (decode and preprocess), ``compute_infer`` (the
  ONNX Runtime call of their batch) and ``compute_output`` (ranking and building the outputs); a request of several
  images counts once, with its slowest image's time in each stage, as its stage timings do;
- ``batch_stats``: per batch size, the batches run and their ``compute_infer`` time (a batch's input stacking and
  output splitting are inside that call: its ``compute_input`` and ``compute_output`` are counted with no time);
- ``inference_count`` (images run), ``execution_count`` (batches run) and ``last_inference`` (milliseconds since the
  epoch).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from service.inference import StageTimings

OUTCOMES = ("success", "fail")
STAGES = ("queue", "compute_input", "compute_infer", "compute_output")
_NS = 1_000_000_000


class StatisticsCollectors:
    """The counters behind the extension, registered in an app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "resnet_serve_model_requests",
            "Inference requests of a model version answered, by outcome (success, fail): Triton's statistics.",
            ["model", "version", "outcome"],
            registry=registry,
        )
        self.request_seconds = Counter(
            "resnet_serve_model_request_seconds",
            "Time of a model version's requests from arrival to answer, by outcome: Triton's statistics.",
            ["model", "version", "outcome"],
            registry=registry,
        )
        self.stage_seconds = Counter(
            "resnet_serve_model_stage_seconds",
            "Time successful requests of a model version spent per stage (queue, compute_input, compute_infer, "
            "compute_output; a request's slowest image): Triton's statistics.",
            ["model", "version", "stage"],
            registry=registry,
        )
        self.batches = Counter(
            "resnet_serve_model_batches",
            "Batches a model version ran, by batch size: Triton's statistics.",
            ["model", "version", "batch_size"],
            registry=registry,
        )
        self.batch_seconds = Counter(
            "resnet_serve_model_batch_seconds",
            "ONNX Runtime time of a model version's batches, by batch size: Triton's statistics.",
            ["model", "version", "batch_size"],
            registry=registry,
        )
        self.last_inference = Gauge(
            "resnet_serve_model_last_inference_timestamp_seconds",
            "When a model version last ran a batch (Unix time).",
            ["model", "version"],
            multiprocess_mode="max",
            registry=registry,
        )

    def recorder(self, model: str, version: str) -> ModelStatisticsRecorder:
        return ModelStatisticsRecorder(self, model, version)


class ModelStatisticsRecorder:
    """One model version's counters, looked up once."""

    def __init__(self, collectors: StatisticsCollectors, model: str, version: str) -> None:
        self._success = collectors.requests.labels(model, version, "success")
        self._success_s = collectors.request_seconds.labels(model, version, "success")
        self._fail = collectors.requests.labels(model, version, "fail")
        self._fail_s = collectors.request_seconds.labels(model, version, "fail")
        self._stages = [collectors.stage_seconds.labels(model, version, stage) for stage in STAGES]
        self._batches = collectors.batches
        self._batch_seconds = collectors.batch_seconds
        self._last = collectors.last_inference.labels(model, version)
        self._model, self._version = model, version

    def record_request(self, timings: StageTimings) -> None:
        self._success.inc()
        self._success_s.inc(timings.total_s)
        for counter, seconds in zip(
            self._stages,
            (timings.queue_wait_s, timings.preprocess_s, timings.inference_s, timings.postprocess_s),
            strict=True,
        ):
            counter.inc(seconds)

    def record_failure(self, seconds: float) -> None:
        self._fail.inc()
        self._fail_s.inc(seconds)

    def record_batch(self, size: int, inference_s: float) -> None:
        size_label = str(size)
        self._batches.labels(self._model, self._version, size_label).inc()
        self._batch_seconds.labels(self._model, self._version, size_label).inc(inference_s)
        self._last.set(time.time())


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class ModelStatistics:
    """One model version's figures, in Triton's terms."""

    name: str
    version: str
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    request_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0.0))
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    batches: dict[int, int] = field(default_factory=dict)
    batch_s: dict[int, float] = field(default_factory=dict)
    last_inference_s: float = 0.0

    @property
    def inference_count(self) -> int:
        return sum(size * count for size, count in self.batches.items())

    @property
    def execution_count(self) -> int:
        return sum(self.batches.values())

    def as_triton(self) -> dict[str, Any]:
        """Triton's JSON shape of `ModelStatistics` (what its HTTP endpoint answers)."""
        succeeded = self.requests["success"]

        def duration(count: int, seconds: float) -> dict[str, int]:
            return {"count": count, "ns": round(seconds * _NS)}

        return {
            "name": self.name,
            "version": self.version,
            "last_inference": round(self.last_inference_s * 1000),
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": duration(succeeded, self.request_s["success"]),
                "fail": duration(self.requests["fail"], self.request_s["fail"]),
                **{stage: duration(succeeded, self.stage_s[stage]) for stage in STAGES},
                "cache_hit": duration(0, 0.0),
                "cache_miss": duration(0, 0.0),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": duration(count, 0.0),
                    "compute_infer": duration(count, self.batch_s.get(size, 0.0)),
                    "compute_output": duration(count, 0.0),
                }
                for size, count in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }


def collect(families: Iterable[Metric], versions: Iterable[tuple[str, str]]) -> list[ModelStatistics]:
    """Every model version's statistics from the collected metric `families` (one process's registry, or every
    worker's summed); `versions` are the model versions served, which appear even before their first request."""
    found: dict[tuple[str, str], ModelStatistics] = {key: ModelStatistics(*key) for key in versions}
    by_batch: defaultdict[tuple[str, str], dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for family in families:
        if not family.name.startswith("resnet_serve_model_"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = (sample.labels.get("model", ""), sample.labels.get("version", ""))
            stats = found.get(key)
            if stats is None:
                continue
            if sample.name == "resnet_serve_model_requests_total":
                stats.requests[sample.labels["outcome"]] = round(sample.value)
            elif sample.name == "resnet_serve_model_request_seconds_total":
                stats.request_s[sample.labels["outcome"]] = sample.value
            elif sample.name == "resnet_serve_model_stage_seconds_total":
                stats.stage_s[sample.labels["stage"]] = sample.value
            elif sample.name == "resnet_serve_model_batches_total":
                stats.batches[int(sample.labels["batch_size"])] = round(sample.value)
            elif sample.name == "resnet_serve_model_batch_seconds_total":
                by_batch[key]["seconds"][int(sample.labels["batch_size"])] = sample.value
            elif sample.name == "resnet_serve_model_last_inference_timestamp_seconds":
                stats.last_inference_s = max(stats.last_inference_s, sample.value)
    for key, values in by_batch.items():
        found[key].batch_s = values["seconds"]
    return sorted(found.values(), key=lambda stats: (stats.name, stats.version))
