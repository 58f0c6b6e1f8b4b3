"""Tracing with OpenTelemetry (`--tracing`, the `otel` extra): a span per request, with its stages as children, and
a span per batch linked to the requests it served.

Off by default, and then nothing here imports OpenTelemetry's SDK: every hook below is a check of one module global
and returns at once. On, each process (each worker) has its own tracer provider, whose sampler, exporter endpoint,
batching and resource attributes come from the standard ``OTEL_*`` variables (``OTEL_TRACES_SAMPLER`` and
``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` and ``..._PROTOCOL``, ``OTEL_BSP_*``,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``); spans leave through the OTLP exporter, in the background.

The tree of a request (the gates start it, the data plane adds the stages; a W3C ``traceparent`` header or gRPC
metadata entry makes it a child of the caller's span, and its request ID is the attribute ``request.id``)::

    POST /v1/models/{name}/classify       (SERVER; http.response.status_code, the model, the images)
      receive                             the body, from its first byte until it is read
        admission                         the request's room in the queue and the byte budget
      decode                              decode and preprocess (the slowest image)
      queue wait                          until its batch started (its first image's batch)
      inference                           its batch's ONNX Runtime call
      encode                              ranking, the outputs, the answer's encoding, until it is sent

and each batch has one span, ``batch inference`` (its size, the model), with a link to the span of every request
whose images it ran. A batch belongs to no single request: its span is in the trace of the first of them that is
sampled, and is not recorded when none is.

Stages that happen in the batcher's thread (the queue wait and inference, and the decode of a lone image decoded
there) are recorded afterwards from the batcher's own clock readings, so no span is opened across threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanContext, Tracer

REQUEST_ID_ATTRIBUTE = "request.id"
_NULL = contextlib.nullcontext()


class TracingUnavailable(RuntimeError):
    """--tracing was asked for and OpenTelemetry's SDK is not installed."""


@dataclass
class RequestTrace:
    """One request's span and the marks its stages leave (in `current` while the request is handled)."""

    span: Span
    encode_from_ns: int | None = None
    """When the result was back from the model (epoch ns): the encode stage runs from here to the answer."""
    attributes: dict[str, Any] = field(default_factory=dict)
    tokens: tuple[Any, Any] = (None, None)
    """What `end_request` resets: OpenTelemetry's current context and `current`."""


current: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar("current_trace", default=None)


class _Tracing:
    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.propagate import get_global_textmap
        from opentelemetry.trace import SpanKind

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("resnet-serve")
        self.propagator = get_global_textmap()
        self.server_kind = SpanKind.SERVER
        # Monotonic readings (the batcher's clock) to wall-clock nanoseconds, as spans are stamped.
        self.epoch_offset_ns = time.time_ns() - time.monotonic_ns()

    def wall_ns(self, monotonic_s: float) -> int:
        return self.epoch_offset_ns + round(monotonic_s * 1e9)


_tracing: _Tracing | None = None


def enabled() -> bool:
    return _tracing is not None


def configure(exporter: SpanExporter | None = None) -> None:
    """Trace from now on in this process: OTLP (from the OTEL_* variables) unless an `exporter` is given, which
    spans then reach at once (the tests' in-memory one)."""
    global _tracing
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(
            f"--tracing needs OpenTelemetry's SDK and OTLP exporter: pip install 'resnet-serve[otel]' ({exc})"
        ) from None
    # The resource from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, named resnet-serve when they name no
    # service; the sampler from OTEL_TRACES_SAMPLER (parent-based, always on, when unset).
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "resnet-serve"}))
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    _tracing = _Tracing(provider)


def _otlp_exporter() -> SpanExporter:
    import os

    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def shutdown() -> None:
    """Send what is left and stop (the server's way out)."""
    global _tracing
    if _tracing is not None:
        _tracing.provider.shutdown()
        _tracing = None


# ------------------------------------------------------------------------------------------------ requests


def start_request(name: str, carrier: Mapping[str, str], request_id: str) -> RequestTrace | None:
    """Open the span of one request and make it current (a child of the caller's when `carrier`, its headers or
    metadata with lower-case names, holds a W3C traceparent); None when tracing is off."""
    tracing = _tracing
    if tracing is None:
        return None
    from opentelemetry import context
    from opentelemetry.trace import set_span_in_context

    parent = tracing.propagator.extract(carrier)
    span = tracing.tracer.start_span(
        name, context=parent, kind=tracing.server_kind, attributes={REQUEST_ID_ATTRIBUTE: request_id}
    )
    trace = RequestTrace(span)
    trace.tokens = (context.attach(set_span_in_context(span, parent)), current.set(trace))
    return trace


def end_request(trace: RequestTrace | None, name: str | None = None, **attributes: Any) -> None:
    """Close it: the encode stage ends now unless the answer started sooner (`answer_started`), and the span gets
    its final name and attributes."""
    if trace is None:
        return
    from opentelemetry import context

    answer_started(trace)
    if name is not None:
        trace.span.update_name(name)
    trace.span.set_attributes({**trace.attributes, **attributes})
    trace.span.end()
    context_token, current_token = trace.tokens
    current.reset(current_token)
    context.detach(context_token)


def answer_started(trace: RequestTrace | None) -> None:
    """The answer is on its way: the encode stage, if one began, ends now."""
    if trace is None or trace.encode_from_ns is None or _tracing is None:
        return
    _retro_span("encode", trace.encode_from_ns, time.time_ns(), parent=trace.span)
    trace.encode_from_ns = None


def annotate(**attributes: Any) -> None:
    """Attributes for the current request's span (the model, its version, the images)."""
    trace = current.get()
    if trace is not None:
        trace.attributes.update(attributes)


def stage(name: str) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current request for a stage that runs on the event loop (receive, admission, decode)."""
    if _tracing is None or current.get() is None:
        return _NULL
    return _tracing.tracer.start_as_current_span(name)


def traced(name: str, call: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`call` inside a stage span of its own (the admission, called by the body reader), or `call` itself when off."""
    if _tracing is None or current.get() is None:
        return call

    def in_span(argument: Any) -> Any:
        with stage(name):
            return call(argument)

    return in_span


def encode_begins() -> None:
    trace = current.get()
    if trace is not None:
        trace.encode_from_ns = time.time_ns()


def ran(started_at: float, queue_wait_s: float, inference_s: float, decode_s: float = 0.0) -> None:
    """The queue wait and inference of the current request's images (and their decode, when it happened in the
    batcher's thread just before), from the batcher's monotonic readings."""
    trace = current.get()
    if _tracing is None or trace is None or not trace.span.is_recording():
        return
    started = _tracing.wall_ns(started_at)
    if decode_s:
        _retro_span("decode", started - round(decode_s * 1e9), started, parent=trace.span)
    else:
        _retro_span("queue wait", started - round(queue_wait_s * 1e9), started, parent=trace.span)
    _retro_span("inference", started, started + round(inference_s * 1e9), parent=trace.span)


# ------------------------------------------------------------------------------------------------ batches


def link() -> SpanContext | None:
    """What a queued image carries so that its batch's span can link to its request's span (None when off)."""
    if _tracing is None:
        return None
    trace = current.get()
    return trace.span.get_span_context() if trace is not None else None


def batch_ran(model: str, links: Sequence[SpanContext | None], started_at: float, ended_at: float) -> None:
    """The span of one batch (monotonic start and end), linked to the requests it served."""
    tracing = _tracing
    if tracing is None:
        return
    contexts = [context for context in links if context is not None]
    sampled = [context for context in contexts if context.trace_flags.sampled]
    if not sampled:
        return
    from opentelemetry.trace import Link, NonRecordingSpan, set_span_in_context

    unique = list({(context.trace_id, context.span_id): context for context in contexts}.values())
    span = tracing.tracer.start_span(
        "batch inference",
        context=set_span_in_context(NonRecordingSpan(sampled[0])),
        links=[Link(context) for context in unique],
        start_time=tracing.wall_ns(started_at),
        attributes={"batch.size": len(links), "model": model, "batch.requests": len(unique)},
    )
    span.end(end_time=tracing.wall_ns(ended_at))


def _retro_span(name: str, start_ns: int, end_ns: int, *, parent: Span) -> None:
    assert _tracing is not None
    from opentelemetry.trace import set_span_in_context

    span = _tracing.tracer.start_span(name, context=set_span_in_context(parent), start_time=start_ns)
    span.end(end_time=end_ns)


def header_carrier(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """An ASGI scope's headers as the propagator reads them (lower-case names)."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}
