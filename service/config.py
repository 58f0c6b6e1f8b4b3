"""All settings of the server, in one pydantic-settings class.

Every field can be set as an environment variable ``RESNET_SERVE_<FIELD>`` (for example
``RESNET_SERVE_MAX_BATCH_SIZE=32``) and as a command-line flag ``--<field-with-dashes>`` of ``python -m service``;
a flag wins over the environment. The docstring under each field is its documentation (``--help`` shows it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.modelspec import (
    BatchDelayMs,
    BatchSizeSetting,
    MemoryMiB,
    QueueSize,
    QueueWaitMs,
    ServingOverrides,
    ThreadCount,
)


def _worker_count(value: object) -> int | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise ValueError(f"must be a whole number from 1 to 64, or 'auto'; got {value!r}")
    count = int(value)
    if not 1 <= count <= 64:
        raise ValueError(f"must be between 1 and 64, or 'auto'; got {count}")
    return count


WorkerCount = Annotated[int | str, PlainValidator(_worker_count)]

ENV_PREFIX = "RESNET_SERVE_"

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "bundled_models"
"""The default model repository, shipped inside the package (the Fashion-MNIST ResNet-20)."""

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


@dataclass(frozen=True)
class TlsFiles:
    """The TLS material of both listeners (service.tls reads it)."""

    certfile: Path
    """The server's certificate chain (PEM): its certificate first, then any intermediates."""
    keyfile: Path
    """The certificate's private key (PEM, unencrypted)."""
    ca_certs: Path | None = None
    """CA certificates (PEM) that clients' certificates must be signed by; None: no client certificate asked."""


class ServerSettings(BaseModel):
    """Where and how the server listens, what it serves, and who may call it."""

    model_config = ConfigDict(use_attribute_docstrings=True, frozen=True)

    host: str = "127.0.0.1"
    """Interface to listen on; 0.0.0.0 to accept connections from other machines."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port to listen on (0 picks a free one)."""
    model_dir: Path = BUNDLED_MODEL_DIR
    """The model repository: `name.onnx` files (version 1) and `name/<version>/model.onnx` folders, each model
    served under its name; defaults to the bundled repository."""
    default_model: str | None = None
    """Model answering POST /v1/classify; unset: the only model, or the first by name when there are several."""
    model_control_mode: Literal["none", "poll", "explicit"] = "none"
    """How models change without a restart, in Triton's words: none (what is loaded at start stays), poll (the
    repository is re-scanned every repository_poll_s: new or changed versions loaded, removed ones unloaded) or
    explicit (only through the repository API's load and unload)."""
    repository_poll_s: float = Field(default=5.0, gt=0.0)
    """With model_control_mode poll: seconds between scans; a new or changed file is loaded once it has stayed
    the same for a whole interval (so a file still being written is never loaded half)."""
    allow_model_control_without_keys: bool = False
    """With no API keys set, let anyone who reaches the port load and unload models (off: refused; with keys, an
    admin key is needed)."""
    workers: WorkerCount = "auto"
    """Server processes sharing the port, each with its own event loop, sessions and share of the cores; auto:
    one per core when the models are cheap (under 5 ms an image, where one event loop is the limit), else one
    (service/workers.py). With more than one, budgets and connection caps are split between them."""
    http: Literal["auto", "httptools", "h11"] = "auto"
    """HTTP/1.1 parser: httptools (C, llhttp) or h11 (pure Python); auto: httptools when installed."""
    loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    """Event loop: uvloop (libuv) or asyncio's own; auto: uvloop when installed."""
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """TCP port of the Open Inference Protocol's gRPC listener (inference.GRPCInferenceService and the grpc.health.v1
    health service), on the same host and data plane as HTTP; 0 turns it off."""
    shutdown_grace_s: float = Field(default=30.0, ge=0.0)
    """After SIGTERM, how long in-flight requests may take to finish before the server stops anyway."""
    api_keys_file: Path | None = None
    """Require an API key (Authorization: Bearer KEY or X-API-Key: KEY) on every route but the probes, the demo
    page and the docs: one key per line, `name:key` or `name:sha256:HEXDIGEST`; re-read when it changes. Unset
    (and no RESNET_SERVE_API_KEYS): no keys, anyone who reaches the port may classify."""
    api_keys: SecretStr | None = None
    """Keys given inline instead (or as well), comma-separated `name:key` entries; prefer the file or the
    environment variable to a flag, which other users of the machine can see in the process list."""
    metrics_require_key: bool = False
    """With API keys on, require one for /metrics too (off: Prometheus scrapes without a key)."""
    cors_origins: Annotated[list[str], NoDecode] = []
    """Origins whose pages may call the API from a browser (CORS), comma-separated, such as
    https://app.example.com; `*` for any. Preflights are answered before the API key check, and the headers a client
    reads (Inference-Header-Content-Length, Retry-After, X-Request-ID) are exposed. Empty: no CORS headers, so
    browsers keep pages of other origins out."""
    ssl_certfile: Path | None = None
    """Serve HTTPS and gRPC over TLS with this certificate chain (PEM, the server's certificate first); needs
    ssl_keyfile. Re-read when it changes (new connections get the new certificate). Unset: plain HTTP and gRPC."""
    ssl_keyfile: Path | None = None
    """The private key (PEM, unencrypted) of ssl_certfile's certificate."""
    ssl_ca_certs: Path | None = None
    """With TLS on, require a client certificate signed by one of these CAs (PEM) on both listeners (mutual TLS);
    re-read when it changes. Unset: no client certificate is asked for."""

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s?#]+", origin):
                raise ValueError(
                    f"{origin!r} is not an origin: write a scheme and a host (and port), with no path, such as "
                    f"https://app.example.com or http://127.0.0.1:3000; or * for any"
                )
        return value

    @property
    def tls_files(self) -> TlsFiles | None:
        """The TLS files when TLS is on, else None."""
        if self.ssl_certfile is None or self.ssl_keyfile is None:
            return None
        return TlsFiles(self.ssl_certfile, self.ssl_keyfile, self.ssl_ca_certs)


class LimitsSettings(BaseModel):
    """What one request, one connection and all of them together may cost."""

    model_config = ConfigDict(use_attribute_docstrings=True, frozen=True)

    request_timeout_s: float = Field(default=30.0, gt=0.0)
    """Deadline of a classify request from its arrival; queued images past it are dropped and answered 504."""
    memory_budget_mb: float | None = Field(default=None, gt=0.0)
    """Resident memory the server may reach with a new model version loaded beside those serving: a load that would
    pass it is refused, with the numbers, before it starts; unset: the container's memory limit (cgroup) when
    there is one, else no check. With several workers, each gets its share."""
    max_files_per_request: int = Field(default=16, ge=1)
    """Most images (multipart parts named 'file') one classify request may carry."""
    max_upload_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger ones get 413 as soon as the excess arrives."""
    max_inflight_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    """Upload bytes all requests in flight may hold together; a request that would pass it is refused at once
    with 503 and Retry-After (from its Content-Length before its body is read, or as its chunks arrive)."""
    max_decode_bytes: int = Field(default=384 * 1024 * 1024, ge=1024 * 1024)
    """Memory the decodes in progress may allocate together, estimated per image from its header (mode, size,
    JPEG draft scale) before decoding; a decode waits while others hold too much, and an image that alone needs
    more is refused with 413."""
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    """Largest image (width x height, before any resizing) that is decoded; larger ones get 413."""
    max_json_depth: int = Field(default=32, ge=4, le=500)
    """Deepest nesting of arrays and objects an Open Inference Protocol JSON body may have (a request needs about
    8); deeper ones get 400 before they are parsed."""
    max_json_integer_digits: int = Field(default=40, ge=20, le=4000)
    """Most digits an integer in an Open Inference Protocol JSON body may have (float32's largest value has 39);
    a longer one gets 400 as soon as the parser meets it."""
    header_timeout_s: float = Field(default=10.0, gt=0.0)
    """A request's head must arrive within this many seconds of its first byte (or of the connection opening),
    else 408 and the connection is closed."""
    body_timeout_s: float = Field(default=60.0, gt=0.0)
    """A request's whole body must arrive within this many seconds of its first byte, else 408 and close."""
    keep_alive_timeout_s: float = Field(default=5.0, gt=0.0)
    """An idle keep-alive connection is closed after this many seconds without a new request."""
    max_connections: int = Field(default=1000, ge=1)
    """Open HTTP connections beyond which a new one is answered 503 and closed at once (keep it below the
    process's file-descriptor limit)."""
    grpc_max_concurrent_streams: int = Field(default=100, ge=1)
    """Calls one gRPC connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). gRPC core also
    counts calls the server is still finishing against it (its rapid-reset defence), so a client that keeps this
    many in flight on one connection sees some refused with UNAVAILABLE (never started, safe to retry)."""
    grpc_max_concurrent_rpcs: int = Field(default=1000, ge=1)
    """Calls of the inference service the server handles at once over all connections (the probes and the health
    service aside); a call beyond it is refused at once with RESOURCE_EXHAUSTED."""
    grpc_max_health_watches: int = Field(default=100, ge=1)
    """Health Watch streams open at once over all connections; one more is refused with RESOURCE_EXHAUSTED. They
    count in no other limit, so they can never take the room of inference calls."""
    grpc_max_health_watches_per_connection: int = Field(default=4, ge=1)
    """Health Watch streams one gRPC connection may have open at once; one more is refused with
    RESOURCE_EXHAUSTED."""
    grpc_max_metadata_bytes: int = Field(default=8192, ge=1024)
    """Size of a gRPC call's metadata (its headers) from which gRPC starts refusing calls with RESOURCE_EXHAUSTED,
    all of them from twice this size."""
    grpc_keepalive_time_s: float = Field(default=60.0, gt=0.0)
    """The server pings a gRPC connection after this many seconds without activity, also between calls, to find
    peers that are gone without closing their connection."""
    tls_handshake_timeout_s: float = Field(default=10.0, gt=0.0)
    """With TLS on, a connection's TLS handshake must be done within this many seconds of its opening, else it is
    closed; until then it counts in max_connections (HTTP) and in gRPC's connection cap."""
    grpc_keepalive_timeout_s: float = Field(default=20.0, gt=0.0)
    """A gRPC peer that does not answer a ping within this many seconds is dropped: its connection closed, its
    calls cancelled and their queued images dropped unrun."""


class BatchingSettings(BaseModel):
    """How images are batched and queued per model (defaults a model's own `serving` section overrides)."""

    model_config = ConfigDict(use_attribute_docstrings=True, frozen=True)

    max_batch_size: BatchSizeSetting = "auto"
    """Most images one ONNX Runtime call processes; auto: ready at once at batch 1, then time the served path at
    batch sizes 1, 2, 4, ... in the background and keep the largest within 3% of the best throughput that fits
    batch_memory_budget_mb (service/autotune.py). A model's own `serving` section overrides this and the other
    batching settings, and intra_op_threads, for that model."""
    max_batch_delay_ms: BatchDelayMs = 0.0
    """How long the first queued image may wait for more to fill its batch; 0 runs at once when the model is idle."""
    max_queue_size: QueueSize = 256
    """Images waiting per model beyond which new requests are refused at once with 503 and Retry-After."""
    max_queue_wait_ms: QueueWaitMs | None = None
    """Refuse a request at once (503) when its images would wait longer than this for inference, estimated from
    the images ahead of it and the measured seconds per image; unset: only max_queue_size bounds the wait."""
    batch_memory_budget_mb: MemoryMiB = 256.0
    """Memory a model's batches may hold beyond its weights (ONNX Runtime keeps the largest batch's activations:
    about 390 MB at batch 32 for ResNet-50); an auto batch size stays within it, measured as it is tuned."""

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0

    @property
    def max_queue_wait_s(self) -> float | None:
        return None if self.max_queue_wait_ms is None else self.max_queue_wait_ms / 1000.0


class RuntimeSettings(BaseModel):
    """How decoding and ONNX Runtime use the machine."""

    model_config = ConfigDict(use_attribute_docstrings=True, frozen=True)

    intra_op_threads: ThreadCount | None = None
    """ONNX Runtime threads per model; unset: the CPUs this process may use (affinity and cgroup quota)."""
    providers: Annotated[list[str], NoDecode] = ["cpu"]
    """ONNX Runtime execution providers in order of preference, comma-separated: cpu, cuda, tensorrt, auto (CUDA
    when available) or full names such as CUDAExecutionProvider; unavailable ones are skipped, CPU is the fallback."""
    decode_threads: int | None = Field(default=None, ge=1)
    """Threads decoding and preprocessing uploads; unset: the CPUs this process may use."""
    worker_nice: int = Field(default=10, ge=0, le=19)
    """How much lower than the event loop's the priority (nice value) of the decode and inference threads is, so
    that admitting and refusing requests never waits for CPU behind them; 0 runs them all alike."""
    batch_memory_release_s: float = Field(default=5.0, ge=0.0)
    """Seconds a model stays idle, after batches of more than one image, before ONNX Runtime gives back the memory
    they held (its arena otherwise keeps the largest batch's for good: about 390 MB at batch 32 on ResNet-50); one
    run of a single image does it, and the next large batch allocates again. 0: keep it."""
    jpeg_draft: bool = True
    """Let large JPEGs decode at 1/2, 1/4 or 1/8 scale (never below twice the model's resize size): several times
    faster, a few levels of difference per pixel (measured in docs/SERVICE.md)."""

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one execution provider is needed, for example 'cpu'")
        for name in value:
            if name != "auto" and name.lower() not in PROVIDER_ALIASES and not name.endswith("ExecutionProvider"):
                raise ValueError(
                    f"unknown execution provider {name!r}; use cpu, cuda, tensorrt, auto or a full ONNX Runtime "
                    f"provider name ending in 'ExecutionProvider'"
                )
        return value


class ObservabilitySettings(BaseModel):
    """Logs and traces."""

    model_config = ConfigDict(use_attribute_docstrings=True, frozen=True)

    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """Log level of the server and of uvicorn."""
    access_log: bool = True
    """Log one line per request (method, path, status, model, images, bytes, latency, stage timings, client,
    request ID), written off the event loop."""
    log_format: Literal["text", "json"] = "text"
    """Log lines as text for people, or one JSON object per line for a log stack."""
    tracing: bool = False
    """Trace requests with OpenTelemetry (needs the `otel` extra): a span per request with its stages (receive,
    admission, decode, queue wait, inference, encode) and a span per batch linked to its requests, sent by OTLP;
    the exporter, sampling and resource come from the standard OTEL_* variables."""


class Settings(ObservabilitySettings, RuntimeSettings, BatchingSettings, LimitsSettings, ServerSettings, BaseSettings):
    """Configuration of one server process: every group's fields, flat, so that each keeps its flag and its
    RESNET_SERVE_* variable. A part of the server is given the group it needs (`LimitsSettings`, ...)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        use_attribute_docstrings=True,
        extra="forbid",
        frozen=True,
    )

    @model_validator(mode="after")
    def _budget_holds_an_upload(self) -> Settings:
        if self.max_inflight_bytes < self.max_upload_bytes:
            raise ValueError(
                f"max_inflight_bytes ({self.max_inflight_bytes}) must be at least max_upload_bytes "
                f"({self.max_upload_bytes}), or the largest upload could never be admitted"
            )
        return self

    @model_validator(mode="after")
    def _tls_files_go_together(self) -> Settings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile are set together: the certificate and its private key")
        if self.ssl_ca_certs is not None and self.ssl_certfile is None:
            raise ValueError("ssl_ca_certs asks clients for certificates over TLS: set ssl_certfile and ssl_keyfile")
        return self

    @model_validator(mode="after")
    def _grpc_port_is_its_own(self) -> Settings:
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(f"grpc_port ({self.grpc_port}) must differ from port, or be 0 to turn gRPC off")
        return self

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> Settings:
        if self.max_queue_size < self.max_files_per_request:
            raise ValueError(
                f"max_queue_size ({self.max_queue_size}) must be at least max_files_per_request "
                f"({self.max_files_per_request}), or a full request could never be admitted"
            )
        return self

    def serving_for(self, overrides: ServingOverrides, *, source: str = "model") -> ServingSettings:
        """The effective serving settings of one model: these flags, overridden by the model's own section.

        Raises ValueError naming `source` when the result breaks a cross-field rule."""
        values = {name: getattr(self, name) for name in ServingOverrides.model_fields}
        values.update(overrides.as_dict())
        serving = ServingSettings(**values)
        if serving.max_queue_size < self.max_files_per_request:
            raise ValueError(
                f"{source}: serving.max_queue_size ({serving.max_queue_size}) must be at least max_files_per_request "
                f"({self.max_files_per_request}), or a full request could never be admitted"
            )
        return serving


@dataclass(frozen=True)
class ServingSettings:
    """One model's effective batching, queueing and threading settings."""

    max_batch_size: int | str
    """A number, or "auto" until the model's warm-up has measured it."""
    max_batch_delay_ms: float
    max_queue_size: int
    max_queue_wait_ms: float | None
    intra_op_threads: int | None
    """None: the CPUs this process may use."""
    batch_memory_budget_mb: float | None = None
    """Caps an auto batch size (None: no cap)."""

    @property
    def batch_memory_budget_bytes(self) -> int | None:
        return None if self.batch_memory_budget_mb is None else round(self.batch_memory_budget_mb * 1024 * 1024)

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0

    @property
    def max_queue_wait_s(self) -> float | None:
        return None if self.max_queue_wait_ms is None else self.max_queue_wait_ms / 1000.0
