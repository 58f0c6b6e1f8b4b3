"""Everything one benchmark run measured, as plain data: the report is written from this and nothing else."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

V1 = "v1-multipart"
V2_BYTES = "v2-http-bytes"
V2_FP32 = "v2-http-fp32"
GRPC_BYTES = "grpc-bytes"
GRPC_FP32 = "grpc-fp32"
PROTOCOLS = {
    V1: "/v1 multipart, JPEG",
    V2_BYTES: "V2 HTTP binary, BYTES (JPEG)",
    V2_FP32: "V2 HTTP binary, FP32 tensor",
    GRPC_BYTES: "gRPC ModelInfer, BYTES (JPEG)",
    GRPC_FP32: "gRPC ModelInfer, FP32 tensor",
}
"""Each way a client can send the same image to our server, and how the report names it."""


def fixed_batch_key(size: int) -> str:
    """The results key of our server run with a fixed ``--max-batch-size``."""
    return f"ours-batch-{size}"


@dataclass
class Environment:
    cpu_model: str
    simd: str
    """Which vector and matrix instruction sets `lscpu` lists (they decide ONNX Runtime's kernels)."""
    cores: int
    """CPUs this process may use (affinity and cgroup quota): the `cores` of the ceiling."""
    online_cpus: int
    date: str
    versions: dict[str, str]
    git_commit: str
    mode: str
    command: str
    load_average: str
    """`uptime`'s load averages at the start, to show the machine was quiet."""


@dataclass
class BatchRow:
    batch_size: int
    ms_per_batch: float
    images_per_second: float


@dataclass
class RawInference:
    model: str
    title: str
    batches: list[BatchRow]
    default_session_batch1: BatchRow | None = None
    """The same model with a default `InferenceSession` (what the naive server uses), batch 1."""
    session_load_s: float | None = None
    """Seconds to create the server's `OnnxModelRuntime` (the ONNX Runtime session) in-process, no warm-up."""

    @property
    def best(self) -> BatchRow:
        return max(self.batches, key=lambda row: row.images_per_second)

    def batch(self, size: int) -> BatchRow | None:
        return next((row for row in self.batches if row.batch_size == size), None)


@dataclass
class PreprocessRow:
    model_input: str
    """The preprocessing recipe, e.g. 'RGB, resize 256, crop 224'."""
    size: str
    size_label: str
    full_decode_ms: float
    draft_ms: float | None
    """None when draft decoding does not apply to this size (PNG, or a JPEG too small to shrink)."""

    @property
    def server_ms(self) -> float:
        """What the server pays with its default settings (draft decoding on)."""
        return self.draft_ms if self.draft_ms is not None else self.full_decode_ms


@dataclass
class CeilingRow:
    model: str
    size: str
    size_label: str
    preprocess_ms: float
    inference_ms_per_image: float
    best_batch: int
    cores: int
    images_per_second: float
    without_draft: float | None = None
    """The ceiling if large JPEGs were decoded at full size."""


@dataclass
class LoadRow:
    server: str
    model: str
    size: str
    size_label: str
    concurrency: int
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    ok: int
    statuses: dict[str, int]
    """Count of each non-200 outcome among requests sent in the window (HTTP status or client-side failure)."""
    server_cpu_cores: float | None
    client_cpu_cores: float
    rejected_p50_ms: float | None = None
    rejected_p99_ms: float | None = None
    """Latency of 503 answers (p99), when there were any."""
    rejected_max_ms: float | None = None
    protocol: str = V1
    """How the requests were sent (a key of `PROTOCOLS`)."""


@dataclass
class RateTrialRow:
    rate: float
    throughput: float
    p50_ms: float
    p99_ms: float
    """Failures count as infinitely slow here (inf)."""
    failures: int
    requests: int
    passed: bool
    client_cpu_cores: float
    statuses: dict[str, int] = field(default_factory=dict)
    """Count of each non-200 outcome."""


@dataclass
class RateSearch:
    server: str
    model: str
    size: str
    p99_limit_ms: float
    trials: list[RateTrialRow]

    @property
    def best_rate(self) -> float | None:
        passing = [trial.rate for trial in self.trials if trial.passed]
        return max(passing) if passing else None


@dataclass
class ServerResources:
    server: str
    model: str
    ready_after_s: float
    """From starting the process to its readiness endpoint's first 200."""
    rss_mb: float
    """At the end of the server's load runs (all its processes)."""
    peak_rss_mb: float
    idle_cpu_percent: float | None = None
    """Percent of one core the server used while idle (no request), as `top` shows it."""
    idle_seconds: float | None = None
    settled_after_s: float | None = None
    """From starting the process until its processes stayed the same and idle (workers started, warmed up)."""
    rss_settled_mb: float | None = None
    """Once settled, before the first request: the model loaded, nothing served yet."""
    processes: int | None = None
    """How many processes the server was once settled (supervisor and workers each count)."""


@dataclass
class ServerCommand:
    """One server the run started, and exactly how."""

    server: str
    model: str
    command: str


@dataclass
class BatchingRow:
    """What one of our servers runs a model with, from its GET /v1/models: the batch size and where it came from
    (auto: measured at warm-up, the curve being what was measured)."""

    server: str
    model: str
    max_batch_size: int
    source: str
    curve: list[tuple[int, float]] = field(default_factory=list)
    """(batch size, images per second) as the server measured them, with auto."""


@dataclass
class AccuracyRow:
    model: str
    title: str
    test_accuracy: float
    images: int


@dataclass
class ProfileGroup:
    thread_group: str
    cores: float
    share: float
    top_frames: list[tuple[str, float]]
    """Innermost frames and their share of this group's samples."""
    cpu_cores: float | None = None
    """CPU the group's threads used over the recording, in cores, from /proc (None in runs before it was read)."""


@dataclass
class ProfileResult:
    server: str
    model: str
    size: str
    concurrency: int
    seconds: float
    samples: int
    throughput: float
    groups: list[ProfileGroup]
    protocol: str = V1


def lower_median(values: Iterable[float]) -> float:
    """The median of `values`, the lower middle of an even count (a value that was measured); NaN when empty."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2] if ordered else math.nan


@dataclass
class PairedRound:
    """One round of a side-by-side comparison: each server driven once, one after the other."""

    first: str
    """The server (key) that ran first this round; the order alternates from round to round."""
    ours_throughput: float
    naive_throughput: float
    ours_p50_ms: float
    naive_p50_ms: float

    @property
    def ratio(self) -> float:
        return self.ours_throughput / self.naive_throughput if self.naive_throughput else math.nan


@dataclass
class PairedRow:
    """Our server at its defaults and the naive server on one model, both started and settled, driven in turn at
    one concurrency in alternating rounds: the two sides of a round meet the same machine, seconds apart, where
    the load runs meet it minutes apart."""

    model: str
    concurrency: int
    seconds: float
    """Measured per server per round (after a warm-up)."""
    rounds: list[PairedRound]

    @property
    def ratio(self) -> float:
        """The median of the rounds' ratios (ours / naive), what to judge."""
        return lower_median(round_.ratio for round_ in self.rounds)

    def median(self, value: str) -> float:
        """The median over rounds of a `PairedRound` field (the lower middle of an even count)."""
        return lower_median(getattr(round_, value) for round_ in self.rounds)


@dataclass
class ReadyRow:
    """One server's cold starts on one model in the ready phase (`BenchmarkRun.ready_times`): each from starting
    the process to its readiness endpoint's first 200, polled every few milliseconds, ours and the naive server
    started in turn on a quiet machine."""

    server: str
    model: str
    starts_s: list[float]
    poll_s: float
    """How often the readiness endpoint was asked: how late a start can read."""

    @property
    def median_s(self) -> float:
        """The median start (the lower middle of an even count), what to judge."""
        return lower_median(self.starts_s)


@dataclass
class BenchResults:
    environment: Environment
    primary_model: str
    model_titles: dict[str, str]
    server_titles: dict[str, str]
    raw: list[RawInference] = field(default_factory=list)
    preprocessing: list[PreprocessRow] = field(default_factory=list)
    model_inputs: dict[str, str] = field(default_factory=dict)
    """Model key -> its preprocessing recipe (a key of the preprocessing rows)."""
    ceilings: list[CeilingRow] = field(default_factory=list)
    load: list[LoadRow] = field(default_factory=list)
    rate_searches: list[RateSearch] = field(default_factory=list)
    resources: list[ServerResources] = field(default_factory=list)
    accuracy: list[AccuracyRow] = field(default_factory=list)
    profiles: list[ProfileResult] = field(default_factory=list)
    protocol_load: list[LoadRow] = field(default_factory=list)
    """Our server at its defaults, the same model and image sent over /v2 (HTTP) and gRPC (`LoadRow.protocol`);
    its /v1 multipart runs are in `load`."""
    servers: list[ServerCommand] = field(default_factory=list)
    batching: list[BatchingRow] = field(default_factory=list)
    c1_reference_ms: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Model -> (preprocessing, batch-1 inference) on the small JPEG, measured in-process right before our server's
    concurrency-1 run on it, so the comparison is not skewed by drift since the raw measurements."""
    paired: list[PairedRow] = field(default_factory=list)
    """Ours against the naive server at concurrency 1, side by side (`BenchmarkRun.side_by_side`)."""
    ready: list[ReadyRow] = field(default_factory=list)
    """Cold starts, ours and the naive server in turn (`BenchmarkRun.ready_times`)."""
    stand_ins: dict[str, str] = field(default_factory=dict)
    """Bench model -> the model measured in its place when the run has not got it (the quick run's bundled model
    standing in for the ResNets)."""
    fixed_batch_sizes: list[int] = field(default_factory=list)
    """The --max-batch-size settings our server was also run with, against its default (auto)."""
    admission_max_queue_size: int = 0
    admission_max_queue_wait_ms: float | None = None
    admission_max_batch_size: int | None = None
    """Of the server the concurrency-64 targets are judged on (its batch size as it reported it)."""
    settings: dict[str, str] = field(default_factory=dict)
    """How each server and the load were configured, for the method section."""
    wall_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    median_of: list[str] = field(default_factory=list)
    """The full runs this is the per-point median of (`bench.median`), each named with its date and commit; empty
    for one run."""

    # ------------------------------------------------------------------ look-ups used by the report and targets

    def raw_for(self, model: str) -> RawInference | None:
        return next((row for row in self.raw if row.model == model), None)

    def ceiling_for(self, model: str, size: str) -> CeilingRow | None:
        return next((row for row in self.ceilings if row.model == model and row.size == size), None)

    def preprocess_for(self, model: str, size: str) -> PreprocessRow | None:
        recipe = self.model_inputs.get(model)
        return next((row for row in self.preprocessing if row.model_input == recipe and row.size == size), None)

    def load_rows(self, server: str, model: str, size: str | None = None) -> list[LoadRow]:
        return [
            row
            for row in self.load
            if row.server == server and row.model == model and (size is None or row.size == size)
        ]

    def load_at(self, server: str, model: str, size: str, concurrency: int) -> LoadRow | None:
        return next((row for row in self.load_rows(server, model, size) if row.concurrency == concurrency), None)

    def saturation(self, server: str, model: str, size: str) -> LoadRow | None:
        """The closed-loop run with the highest throughput: the server's saturation throughput."""
        rows = self.load_rows(server, model, size)
        return max(rows, key=lambda row: row.throughput) if rows else None

    def resources_for(self, server: str, model: str) -> ServerResources | None:
        return next((row for row in self.resources if row.server == server and row.model == model), None)

    def ready_for(self, server: str, model: str) -> ReadyRow | None:
        return next((row for row in self.ready if row.server == server and row.model == model), None)

    def paired_for(self, model: str, concurrency: int = 1) -> PairedRow | None:
        return next((row for row in self.paired if row.model == model and row.concurrency == concurrency), None)

    def protocol_at(self, model: str, protocol: str, concurrency: int) -> LoadRow | None:
        """Our server at its defaults, `model` and the small JPEG sent over `protocol` at `concurrency`."""
        if protocol == V1:
            return self.load_at("ours", model, "small-jpeg", concurrency)
        return next(
            (
                row
                for row in self.protocol_load
                if row.model == model and row.protocol == protocol and row.concurrency == concurrency
            ),
            None,
        )

    def protocol_saturation(self, model: str, protocol: str) -> LoadRow | None:
        """The best throughput over the concurrencies `protocol` was run at, on the small JPEG."""
        if protocol == V1:
            return self.saturation("ours", model, "small-jpeg")
        rows = [row for row in self.protocol_load if row.model == model and row.protocol == protocol]
        return max(rows, key=lambda row: row.throughput) if rows else None

    def batching_for(self, server: str, model: str) -> BatchingRow | None:
        return next((row for row in self.batching if row.server == server and row.model == model), None)

    def bench_model(self, key: str) -> str | None:
        """The model measured for bench model `key`: itself when the run has it, else its stand-in, else None."""
        if key in self.model_titles:
            return key
        stand_in = self.stand_ins.get(key)
        return stand_in if stand_in in self.model_titles else None

    def accuracy_for(self, model: str) -> AccuracyRow | None:
        return next((row for row in self.accuracy if row.model == model), None)

    def save_json(self, path: Path) -> None:
        def clean(value: object) -> object:
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)
            if isinstance(value, dict):
                return {key: clean(item) for key, item in value.items()}
            if isinstance(value, list | tuple):
                return [clean(item) for item in value]
            return value

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(clean(asdict(self)), indent=1) + "\n")
