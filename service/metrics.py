"""Every Prometheus collector of the service, in one per-app registry.

A per-app `CollectorRegistry` (not prometheus-client's global one) lets several apps live in one process, as
they do in tests. All names start with ``resnet_serve_``; docs/SERVICE.md lists them.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.errors import ServiceError, rejection_reasons

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
CONNECTION_REFUSAL_REASONS = ("header_timeout", "body_timeout", "framing", "max_connections")


class ModelBatchObserver:
    """The batcher's metrics hooks for one model."""

    def __init__(self, metrics: ServiceMetrics, model: str) -> None:
        self._batch_size = metrics.batch_size.labels(model)
        self._inferred = metrics.images_inferred.labels(model)
        self._inference = metrics.inference_seconds.labels(model)
        self._queue_wait = metrics.queue_wait_seconds.labels(model)
        self._dropped = metrics.dropped_images
        self._model = model

    def batch_ran(self, size: int, inference_s: float) -> None:
        self._batch_size.observe(size)
        self._inferred.inc(size)
        self._inference.observe(inference_s)

    def item_dequeued(self, queue_wait_s: float) -> None:
        self._queue_wait.observe(queue_wait_s)

    def items_dropped(self, reason: str, count: int) -> None:
        self._dropped.labels(self._model, reason).inc(count)


class ServiceMetrics:
    """The collectors, registered in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "resnet_serve_http_requests", "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"], registry=r,
        )
        self.http_request_seconds = Histogram(
            "resnet_serve_http_request_duration_seconds", "Time from request start to the end of the response.",
            ["route"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.http_in_flight = Gauge(
            "resnet_serve_http_requests_in_flight", "Requests being served now (health and metrics excluded).",
            registry=r,
        )
        self.preprocess_seconds = Histogram(
            "resnet_serve_preprocess_seconds", "Decode and preprocess time per image.",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "resnet_serve_queue_wait_seconds", "Time an image waited in the batcher queue before its batch ran.",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.inference_seconds = Histogram(
            "resnet_serve_inference_seconds", "ONNX Runtime time per batch.",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.batch_size = Histogram(
            "resnet_serve_batch_size", "Images per batch run.", ["model"], buckets=BATCH_SIZE_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "resnet_serve_queue_depth", "Images waiting in the batcher queue.", ["model"], registry=r,
        )
        self.requests = Counter(
            "resnet_serve_requests", "Inference requests admitted, by model and protocol (v1, v2-http, v2-grpc).",
            ["model", "protocol"], registry=r,
        )
        self.images_classified = Counter(
            "resnet_serve_images_classified", "Images classified successfully.", ["model"], registry=r,
        )
        self.images_decoded = Counter(
            "resnet_serve_images_decoded", "Images handed to the decode pool (decode and preprocess work started).",
            ["model"], registry=r,
        )
        self.images_inferred = Counter(
            "resnet_serve_images_inferred", "Images run through the model (the sum of batch sizes).",
            ["model"], registry=r,
        )
        self.decode_memory_bytes = Gauge(
            "resnet_serve_decode_memory_bytes", "Memory reserved by the decodes in progress (the decode budget in use).",
            registry=r,
        )
        self.inflight_upload_bytes = Gauge(
            "resnet_serve_inflight_upload_bytes", "Upload bytes held by requests in flight (the byte budget in use).",
            registry=r,
        )
        self.rejections = Counter(
            "resnet_serve_rejections", "Requests refused or failed, by reason.", ["reason"], registry=r,
        )
        self.dropped_images = Counter(
            "resnet_serve_dropped_images",
            "Queued images dropped without inference: timeout, client_disconnected or shutdown.",
            ["model", "reason"], registry=r,
        )
        self.connections_refused = Counter(
            "resnet_serve_connections_refused",
            "Connections answered and closed by the protocol guard: header_timeout, body_timeout, framing or "
            "max_connections.",
            ["reason"], registry=r,
        )
        self.open_connections = Gauge(
            "resnet_serve_open_connections", "HTTP connections open now.", registry=r,
        )
        self.model_ready = Gauge(
            "resnet_serve_model_ready", "1 when the model is loaded, warmed up and its batcher running.",
            ["model"], registry=r,
        )
        self.rejection_reasons = rejection_reasons()
        """Every reason an error class can be counted under, pre-created at zero so dashboards see every series."""
        for reason in self.rejection_reasons:
            self.rejections.labels(reason)
        for reason in CONNECTION_REFUSAL_REASONS:
            self.connections_refused.labels(reason)

    def count_rejection(self, error: ServiceError) -> None:
        """Count a refused or failed request under its error's reason (one of `rejection_reasons`)."""
        if error.reason not in self.rejection_reasons:
            raise ValueError(f"rejection reason {error.reason!r} is not one of {self.rejection_reasons}")
        self.rejections.labels(error.reason).inc()

    def count_connection_refused(self, reason: str) -> None:
        self.connections_refused.labels(reason).inc()

    def register_model(self, model: str) -> ModelBatchObserver:
        """Create the model's series and return the hooks its batcher reports to."""
        self.images_classified.labels(model)
        self.images_decoded.labels(model)
        self.images_inferred.labels(model)
        self.model_ready.labels(model).set(0)
        return ModelBatchObserver(self, model)

    def watch_queue_depth(self, model: str, queue_depth: Callable[[], float]) -> None:
        """Read the model's queue depth at scrape time."""
        self.queue_depth.labels(model).set_function(queue_depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
