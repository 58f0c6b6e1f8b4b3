"""Every Prometheus collector of the service, in one per-app registry.

A per-app `CollectorRegistry` (not prometheus-client's global one) lets several apps live in one process, as
they do in tests. All names start with ``resnet_serve_``; docs/SERVICE.md lists them.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

from service.errors import ConnectionRefusal, DropReason, ServiceError, rejection_reasons
from service.statistics import ModelStatistics, ModelStatisticsRecorder, StatisticsCollectors
from service.statistics import collect as collect_statistics

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set by the worker supervisor (service.workers) for its workers: metric values then live in files there."""


class WorkerFilesCollector:
    """Every worker's metric files, summed: prometheus-client's MultiProcessCollector less its one race.

    A worker creates a metrics file before it sizes it, so a scrape that lists the folder at that moment finds a file
    of 0 bytes, and MultiProcessCollector's merge fails on it with struct.error (prometheus/client_python#1199): the
    whole scrape answers 500, and a worker killed in that moment leaves the empty file, so every later scrape fails too.
    An empty file holds nothing yet; it is skipped. A file with any bytes has been sized (the size is set before
    anything is written), so it reads whole."""

    def __init__(self, folder: str) -> None:
        self._folder = folder

    def collect(self) -> Iterable[Metric]:
        files = [name for name in glob.glob(os.path.join(self._folder, "*.db")) if _sized(name)]
        # prometheus_client ships py.typed but leaves its multiprocess module unannotated.
        return multiprocess.MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-any-return,no-untyped-call]


def _sized(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:  # a dead worker's live gauges, removed since the listing
        return False


def worker_shared_folder() -> Path | None:
    """The private folder the worker supervisor made for its workers (metric values and rate-limit counters live
    there), or None when this process serves alone."""
    folder = os.environ.get(MULTIPROCESS_ENV)
    return Path(folder) if folder else None


class ModelBatchObserver:
    """The batcher's metrics hooks for one model."""

    def __init__(self, metrics: ServiceMetrics, model: str, version: str) -> None:
        self._statistics = metrics.model_statistics(model, version)
        self._batch_size = metrics.batch_size.labels(model, version)
        self._inferred = metrics.images_inferred.labels(model, version)
        self._inference = metrics.inference_seconds.labels(model, version)
        self._queue_wait = metrics.queue_wait_seconds.labels(model, version)
        self._dropped = metrics.dropped_images
        self._depth = metrics.queue_depth.labels(model, version)
        self._drain = metrics.queue_drain_seconds.labels(model, version)
        self._max_batch_size = metrics.max_batch_size.labels(model, version)
        self._model = model
        self._version = version

    def batch_ran(self, size: int, inference_s: float) -> None:
        self._batch_size.observe(size)
        self._inferred.inc(size)
        self._inference.observe(inference_s)
        self._statistics.record_batch(size, inference_s)

    def item_dequeued(self, queue_wait_s: float) -> None:
        self._queue_wait.observe(queue_wait_s)

    def items_dropped(self, reason: DropReason, count: int) -> None:
        self._dropped.labels(self._model, self._version, reason).inc(count)

    def queue_changed(self, depth: int, drain_s: float = 0.0) -> None:
        self._depth.set(depth)
        self._drain.set(drain_s)

    def max_batch_size_changed(self, size: int) -> None:
        self._max_batch_size.set(size)


class ServiceMetrics:
    """The collectors, registered in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "resnet_serve_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_request_seconds = Histogram(
            "resnet_serve_http_request_duration_seconds",
            "Time from request start to the end of the response.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "resnet_serve_http_requests_in_flight",
            "Requests being served now (health and metrics excluded).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.grpc_requests = Counter(
            "resnet_serve_grpc_requests",
            "gRPC calls of inference.GRPCInferenceService answered, by method and status code (OK, "
            "INVALID_ARGUMENT, ...).",
            ["method", "code"],
            registry=r,
        )
        self.grpc_request_seconds = Histogram(
            "resnet_serve_grpc_request_duration_seconds",
            "Time from a gRPC call's start to its answer.",
            ["method"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.grpc_in_flight = Gauge(
            "resnet_serve_grpc_requests_in_flight",
            "gRPC calls being served now (health service excluded).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.preprocess_seconds = Histogram(
            "resnet_serve_preprocess_seconds",
            "Decode and preprocess time per image.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "resnet_serve_queue_wait_seconds",
            "Time an image waited in the batcher queue before its batch ran.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "resnet_serve_inference_seconds",
            "ONNX Runtime time per batch.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "resnet_serve_batch_size",
            "Images per batch run.",
            ["model", "version"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "resnet_serve_queue_depth",
            "Images waiting in the batcher queue.",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queue_drain_seconds = Gauge(
            "resnet_serve_queue_drain_seconds",
            "Seconds the model needs to finish the images it holds (running, queued, and admitted still arriving) at "
            "its measured seconds per image: how long a request arriving now waits before its own images run. The "
            "autoscaling signal (the highest of the worker processes); Retry-After is this, rounded up.",
            ["model", "version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.max_batch_size = Gauge(
            "resnet_serve_max_batch_size",
            "The model's largest batch now: its setting, or with auto what tuning has chosen so far.",
            ["model", "version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.api_key_requests = Counter(
            "resnet_serve_api_key_requests",
            "Requests let in with an API key, by the key's name (never the key).",
            ["key"],
            registry=r,
        )
        self.api_key_rate_limited = Counter(
            "resnet_serve_api_key_rate_limited",
            "Requests refused (429) because their API key was over its rate, by the key's name (never the key).",
            ["key"],
            registry=r,
        )
        self.requests = Counter(
            "resnet_serve_requests",
            "Inference requests admitted, by model and protocol (v1, v2-http, v2-grpc).",
            ["model", "version", "protocol"],
            registry=r,
        )
        self.images_classified = Counter(
            "resnet_serve_images_classified",
            "Images classified successfully.",
            ["model", "version"],
            registry=r,
        )
        self.images_decoded = Counter(
            "resnet_serve_images_decoded",
            "Images handed to the decode pool (decode and preprocess work started).",
            ["model", "version"],
            registry=r,
        )
        self.images_inferred = Counter(
            "resnet_serve_images_inferred",
            "Images run through the model (the sum of batch sizes).",
            ["model", "version"],
            registry=r,
        )
        self.decode_memory_bytes = Gauge(
            "resnet_serve_decode_memory_bytes",
            "Memory reserved by the decodes in progress (the decode budget in use).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.inflight_upload_bytes = Gauge(
            "resnet_serve_inflight_upload_bytes",
            "Upload bytes held by requests in flight (the byte budget in use).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.rejections = Counter(
            "resnet_serve_rejections",
            "Requests refused or failed, by reason.",
            ["reason"],
            registry=r,
        )
        self.dropped_images = Counter(
            "resnet_serve_dropped_images",
            f"Queued images dropped without inference: {', '.join(DropReason)}.",
            ["model", "version", "reason"],
            registry=r,
        )
        self.connections_refused = Counter(
            "resnet_serve_connections_refused",
            f"Connections answered and closed by the protocol guard: {', '.join(ConnectionRefusal)}.",
            ["reason"],
            registry=r,
        )
        self.open_connections = Gauge(
            "resnet_serve_open_connections",
            "HTTP connections open now.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.model_ready = Gauge(
            "resnet_serve_model_ready",
            "1 when the model is loaded, warmed up and its batcher running.",
            ["model", "version"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self._readiness: dict[tuple[str, str], bool] = {}
        self._readiness_published = True
        self.statistics = StatisticsCollectors(r)
        """Triton's statistics extension (`service.statistics`)."""
        self._recorders: dict[tuple[str, str], ModelStatisticsRecorder] = {}
        self.rejection_reasons = rejection_reasons()
        """Every reason an error class can be counted under, pre-created at zero so dashboards see every series."""
        for reason in self.rejection_reasons:
            self.rejections.labels(reason)
        for refusal in ConnectionRefusal:
            self.connections_refused.labels(refusal)

    def count_rejection(self, error: ServiceError) -> None:
        """Count a refused or failed request under its error's reason (one of `rejection_reasons`)."""
        if error.reason not in self.rejection_reasons:
            raise ValueError(f"rejection reason {error.reason!r} is not one of {self.rejection_reasons}")
        self.rejections.labels(error.reason).inc()

    def count_connection_refused(self, reason: ConnectionRefusal) -> None:
        self.connections_refused.labels(reason).inc()

    def connection_opened(self) -> None:
        self.open_connections.inc()

    def connection_closed(self) -> None:
        self.open_connections.dec()

    def set_model_ready(self, model: str, version: str, ready: bool) -> None:
        self._readiness[(model, version)] = ready
        if self._readiness_published:
            self.model_ready.labels(model, version).set(1 if ready else 0)

    def withhold_readiness(self) -> None:
        """Stop writing readiness. Across workers it is the live workers' minimum, so a worker that takes no
        connections must not vote: one that warms up before it joins those already serving, or one that retires
        (its unload at exit would read as the model gone while the others serve it)."""
        self._readiness_published = False

    def publish_readiness(self) -> None:
        """Write readiness again, as it is now (a worker that now takes connections)."""
        self._readiness_published = True
        for (model, version), ready in self._readiness.items():
            self.model_ready.labels(model, version).set(1 if ready else 0)

    def model_statistics(self, model: str, version: str) -> ModelStatisticsRecorder:
        """Where a model version's requests and batches are counted for the statistics extension."""
        recorder = self._recorders.get((model, version))
        if recorder is None:
            recorder = self._recorders[(model, version)] = self.statistics.recorder(model, version)
        return recorder

    def register_model(self, model: str, version: str = "1") -> ModelBatchObserver:
        """Create the model version's series and return the hooks its batcher reports to."""
        self.images_classified.labels(model, version)
        for drop in DropReason:
            # Series at zero from the start: with worker processes an untouched family would not be exported.
            self.dropped_images.labels(model, version, drop)
        self.images_decoded.labels(model, version)
        self.images_inferred.labels(model, version)
        self.set_model_ready(model, version, False)
        return ModelBatchObserver(self, model, version)

    def _readable(self) -> CollectorRegistry:
        """What to read values from: this process's registry, or with several worker processes
        (PROMETHEUS_MULTIPROC_DIR set by the supervisor) every worker's values, summed (gauges: the live workers'
        sum, or their minimum for readiness)."""
        folder = os.environ.get(MULTIPROCESS_ENV)
        if folder:
            merged = CollectorRegistry()
            merged.register(WorkerFilesCollector(folder))
            return merged
        return self.registry

    def render(self) -> bytes:
        """The exposition text, of every worker process when there are several."""
        return generate_latest(self._readable())

    def model_statistics_of(self, versions: Iterable[tuple[str, str]]) -> list[ModelStatistics]:
        """The statistics extension's figures of these (model, version)s, of every worker process."""
        return collect_statistics(self._readable().collect(), versions)
