"""One benchmark run, start to end: prepare, measure in-process, load each server, collect `BenchResults`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import importlib.metadata
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen, measure, profiling, workload
from bench.results import (
    GRPC_BYTES,
    GRPC_FP32,
    V1,
    V2_BYTES,
    V2_FP32,
    AccuracyRow,
    BatchingRow,
    BatchRow,
    BenchResults,
    CeilingRow,
    Environment,
    LoadRow,
    PairedRound,
    PairedRow,
    PreprocessRow,
    ProfileGroup,
    ProfileResult,
    RateSearch,
    RateTrialRow,
    RawInference,
    ReadyRow,
    ServerCommand,
    ServerResources,
    fixed_batch_key,
)
from bench.servers import (
    NAIVE,
    OURS,
    OURS_ADMISSION_ARGS,
    OURS_MAX_QUEUE_WAIT_MS,
    RunningServer,
    ServerKind,
    thread_cpu_seconds,
)
from bench.workload import IMAGE_SIZES, SIZES_BY_KEY, EncodedImage, ModelCase
from service.__main__ import load_settings
from service.config import Settings
from service.modelspec import ModelSpec
from service.preprocess import DecodeOptions, preprocess_image
from service.runtime import OnnxModelRuntime, available_cpus

logger = logging.getLogger("bench")

P99_LIMIT_S = 0.100
"""The open-loop search's latency bound (MLPerf's Server scenario bounds a percentile; the issue says p99 100 ms)."""
SMALL = "small-jpeg"
LARGE = "12mp-jpeg"
TOP_K = 5
"""V2 and gRPC requests ask for the classification extension's top 5, what /v1/classify answers by default."""
READY_POLL_S = 0.005
"""How often the ready phase asks a starting server whether it is ready: well under the 0.1-0.5 s it judges."""


@dataclass(frozen=True)
class Variant:
    """One configuration of a server under test: the key the results name it by, its title, its flags."""

    key: str
    title: str
    kind: ServerKind
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """How long and how much to measure; `FULL` is the real run, `QUICK` the smoke test's."""

    mode: str
    models: tuple[str, ...]
    warmup_s: float
    load_s: float
    rate_trial_s: float
    rate_steps: int
    idle_s: float
    raw_min_s: float
    raw_min_runs: int
    preprocess_min_s: float
    preprocess_min_runs: int
    profile_s: float
    concurrencies: tuple[int, ...] = (1, 8, 32)
    """Of our server at its defaults on the small JPEG, on every model (and of the naive server on the primary)."""
    admission_concurrency: int = 64
    """Of the separately started server with admission flags (and of the naive server on the primary)."""
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    """Raw ONNX Runtime batch sizes."""
    size_concurrency: int = 32
    """Concurrency of the saturation runs: other image sizes, the lighter models, the fixed batch sizes."""
    protocol_concurrencies: tuple[int, ...] = (1, 8, 32)
    """Of the V2 HTTP and gRPC runs (the /v1 multipart ones are `concurrencies`)."""
    fixed_batch_sizes: tuple[int, ...] = (1, 8, 32)
    """Our server is also run with each --max-batch-size here, at `size_concurrency`; the largest also at the
    latency concurrencies, to compare with the default (auto)."""
    fixed_batch_latency_concurrencies: tuple[int, ...] = (1, 8)
    batch_models: tuple[str, ...] = workload.BENCH_MODELS
    """Bench models (or their stand-ins) that get the fixed batch size runs."""
    stand_ins: tuple[tuple[str, str], ...] = ()
    """(bench model, model measured in its place) when the run has not got it (`BenchResults.stand_ins`)."""
    settle_window_s: float = 1.0
    """After readiness, a server must keep the same processes and stay idle this long before a load starts."""
    photos: tuple[str, ...] = workload.PHOTOS
    ours_args: tuple[str, ...] = ()
    """Flags given to every server of ours besides host, ports, model folder and logging (later flags win); none:
    the defaults, what `make serve` runs."""
    admission_args: tuple[str, ...] = OURS_ADMISSION_ARGS
    """The admission flags of the server the concurrency-64 targets are judged on."""
    notes: tuple[str, ...] = ()
    """Printed under the report's method, for settings a reader must know to read the numbers."""
    paired_rounds: int = 4
    """Rounds of the side-by-side concurrency-1 comparison with the naive server (`BenchmarkRun.side_by_side`);
    even, so that each server runs first as often as the other."""
    paired_s: float = 5.0
    """Measured per server per round, after `paired_warmup_s`."""
    paired_warmup_s: float = 1.0
    ready_starts: int = 3
    """Cold starts of each server per model in the ready phase (`BenchmarkRun.ready_times`)."""


FULL = Plan(
    mode="full",
    models=("resnet50", "resnet18", "bundled"),
    warmup_s=2.0,
    load_s=12.0,
    rate_trial_s=10.0,
    rate_steps=6,
    idle_s=10.0,
    raw_min_s=2.0,
    raw_min_runs=3,
    preprocess_min_s=1.5,
    preprocess_min_runs=5,
    profile_s=10.0,
)

QUICK_HOLD_MS = 25
QUICK_ADMISSION_ARGS = (
    "--workers",
    "1",
    "--max-queue-size",
    "1",
    "--max-files-per-request",
    "1",
    "--max-batch-size",
    "2",
    "--max-batch-delay-ms",
    str(QUICK_HOLD_MS),
    "--max-queue-wait-ms",
    str(OURS_MAX_QUEUE_WAIT_MS),
)
"""The admission server in the quick run: one process whose one-image queue holds its image 25 ms, so that
concurrency 64 must overflow.

The smoke test wants every target judged, and the refusal target needs 503s among the requests sent in the
concurrency-64 window. With the full run's settings that depends on speed: admission counts only images already
decoded and queued (`BatchPolicy.has_room`), not requests being read or decoded, so the queue overflows only when
inference is the bottleneck, and the bundled model's inference is about as fast as decoding its images. Here no
speed decides it:

- one worker process (--workers 1), hence one queue;
- a batch of 2 never fills from a queue of 1, so each admitted image waits the whole --max-batch-delay-ms in the
  queue (`BatchPolicy.ready_at`), and meanwhile every admission check refuses (1 queued + 1 > 1), the one before
  the upload is read as well as the one after decoding: admissions are at least 25 ms apart on the monotonic clock;
- the 64 clients send their first requests together: over the 0.3 s warm-up at most 0.3 / 0.025 + 1 = 13 are
  admitted and at least 51 refused. Each of those clients waits its Retry-After (1 s) and sends again inside the
  measured second, its 51 retries within 0.3 s of each other, of which at most about 14 can be admitted: at least
  37 requests of the window are refused, and the admitted ones are answered.

Assumed is only that the server decides the 64 first requests (most refused before their body is read) within
the 0.3 s warm-up, milliseconds on any machine that runs the test. The other targets need only that each step ran:
the load runs, ceilings (from the raw and preprocessing measurements), idle CPU and INT8 runs are recorded whatever
they measure, and the accuracy needs the Fashion-MNIST test set, which `make test` installs. Only this server is
held so; every other target is judged on servers at their defaults, as in the full run."""

QUICK = Plan(
    mode="quick",
    models=("bundled",),
    warmup_s=0.3,
    load_s=1.0,
    rate_trial_s=0.8,
    rate_steps=3,
    idle_s=1.0,
    raw_min_s=0.05,
    raw_min_runs=2,
    preprocess_min_s=0.05,
    preprocess_min_runs=2,
    profile_s=0.0,
    batch_sizes=(1, 4, 32),
    protocol_concurrencies=(32,),
    fixed_batch_sizes=(1, 32),
    stand_ins=(("resnet50", "bundled"), ("resnet18", "bundled"), ("resnet50-int8", "bundled-int8")),
    settle_window_s=0.3,
    photos=workload.PHOTOS[:1],
    admission_args=QUICK_ADMISSION_ARGS,
    paired_rounds=2,
    paired_s=0.5,
    paired_warmup_s=0.2,
    ready_starts=1,
    notes=(
        "Quick run: the bundled model stands in for ResNet-50 fp32 and ResNet-18, its INT8 for ResNet-50 "
        "INT8; the V2 and gRPC runs are at concurrency 32 only and the fixed batch sizes are 1 and 32. "
        f"The concurrency-64 server queues one image and holds it {QUICK_HOLD_MS} ms (--workers 1 "
        f"--max-queue-size 1 --max-batch-size 2 --max-batch-delay-ms {QUICK_HOLD_MS}), so that "
        "concurrency 64 is refused whatever the machine's speed; its numbers are those of that setting.",
    ),
)


def preprocessing_recipe(spec: ModelSpec) -> str:
    return f"{spec.color_mode}, resize {spec.resize_size}, crop {spec.crop_size}, {spec.interpolation}"


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=workload.REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=workload.REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
"""CPU features that decide which ONNX Runtime kernels (fp32 and INT8) can run."""


def _lscpu() -> tuple[str, str]:
    """The CPU model name and which of `SIMD_FLAGS` it has, from `lscpu`."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("Flags:"):
                flags = set(line.split(":", 1)[1].split())
    except (OSError, subprocess.CalledProcessError):
        return model, "unknown"
    return model, ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in SIMD_FLAGS)


def environment(plan: Plan, command: str) -> Environment:
    versions = {"python": platform.python_version()}
    for package in ("onnxruntime", "numpy", "pillow", "fastapi", "uvicorn", "python-multipart"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    cpu_model, simd = _lscpu()
    return Environment(
        cpu_model=cpu_model,
        simd=simd,
        cores=available_cpus(),
        online_cpus=os.cpu_count() or 1,
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        versions=versions,
        git_commit=_git_commit(),
        mode=plan.mode,
        command=command,
        load_average=" ".join(f"{value:.2f}" for value in os.getloadavg()),
    )


def timed_runtime(path: Path) -> tuple[OnnxModelRuntime, float]:
    """The model's session as our server creates it, and the seconds creating it took in this process."""
    started = time.perf_counter()
    runtime = OnnxModelRuntime(path)
    return runtime, time.perf_counter() - started


def variants(plan: Plan) -> dict[str, Variant]:
    """Every server configuration the plan runs, by results key."""
    found = {
        "ours": Variant("ours", "ours (service)", OURS, plan.ours_args),
        "ours-admission": Variant(
            "ours-admission", "ours, admission flags", OURS, (*plan.ours_args, *plan.admission_args)
        ),
        "naive": Variant("naive", "naive FastAPI", NAIVE),
    }
    for size in plan.fixed_batch_sizes:
        key = fixed_batch_key(size)
        found[key] = Variant(
            key, f"ours, --max-batch-size {size}", OURS, (*plan.ours_args, "--max-batch-size", str(size))
        )
    return found


def command_text(command: Sequence[str], cache_dir: Path) -> str:
    """A server's command line as a reader can rerun it: `python` for the interpreter, CACHE for the cache folder."""
    words = ["python" if index == 0 else word.replace(str(cache_dir), "CACHE") for index, word in enumerate(command)]
    return shlex.join(words)


class BenchmarkRun:
    def __init__(self, plan: Plan, cache_dir: Path, results: BenchResults) -> None:
        self.plan = plan
        self.cache_dir = cache_dir
        self.results = results
        self.cores = results.environment.cores
        self.log_dir = cache_dir / "logs"
        self.models: dict[str, ModelCase] = {}
        self.specs: dict[str, ModelSpec] = {}
        self.images: dict[str, list[EncodedImage]] = {}
        self.variants = variants(plan)
        self._tensors: dict[str, list[bytes]] = {}

    # ------------------------------------------------------------------------------------------------ prepare

    def prepare(self) -> None:
        keys = list(self.plan.models)
        for key in self.plan.models:
            int8 = workload.int8_key(key)
            if int8 and (key == self.plan.models[0] or key == "bundled"):
                keys.append(int8)
        for key in keys:
            self.models[key] = workload.ensure_model(workload.model_case(key, self.cache_dir))
        self.images = workload.ensure_images(self.cache_dir, IMAGE_SIZES, self.plan.photos)
        for key, case in self.models.items():
            self.results.model_titles[key] = case.title
        self.results.stand_ins = {
            key: stand_in for key, stand_in in self.plan.stand_ins if key not in self.models and stand_in in self.models
        }

    @property
    def primary(self) -> str:
        return self.plan.models[0]

    def resolved(self, keys: Sequence[str]) -> list[str]:
        """The run's models for bench models `keys` (each itself or its stand-in), once each, in order."""
        found: list[str] = []
        for key in keys:
            model = self.results.bench_model(key)
            if model is not None and model not in found:
                found.append(model)
        return found

    # --------------------------------------------------------------------------------------- in-process work

    def measure_inference(self) -> None:
        for key, case in self.models.items():
            logger.info("raw ONNX Runtime throughput: %s", case.title)
            gc.collect()
            runtime, session_load_s = timed_runtime(case.path)
            session = measure.DefaultSession(case.path)
            spec = measure.model_spec(runtime)
            self.specs[key] = spec
            self.results.model_inputs[key] = preprocessing_recipe(spec)
            timings = measure.raw_inference(
                session, spec, self.plan.batch_sizes, min_seconds=self.plan.raw_min_s, min_runs=self.plan.raw_min_runs
            )
            rows = [BatchRow(t.batch_size, t.seconds_per_batch * 1e3, t.images_per_second) for t in timings]
            raw = RawInference(key, case.title, rows, session_load_s=session_load_s)
            if key == self.primary:
                default = measure.default_session_batch1(
                    case.path, spec, min_seconds=self.plan.raw_min_s, min_runs=self.plan.raw_min_runs
                )
                raw.default_session_batch1 = BatchRow(1, default.seconds_per_batch * 1e3, default.images_per_second)
            self.results.raw.append(raw)
            if spec.color_mode == "L" and spec.crop_size == 28:
                self._measure_accuracy(key, runtime, spec)
            del runtime, session
            gc.collect()  # frees the sessions and their thread pools before the next one

    def _measure_accuracy(self, key: str, runtime: OnnxModelRuntime, spec: ModelSpec) -> None:
        try:
            images, labels = workload.fashion_mnist_test_set()
        except Exception as exc:  # the data set is a Debian package; a run without it says so in the report
            self.results.notes.append(f"Fashion-MNIST test set unavailable, accuracy of {key} not measured: {exc}")
            return
        accuracy = measure.top1_accuracy(runtime, spec, images, labels)
        self.results.accuracy.append(AccuracyRow(key, self.models[key].title, accuracy, len(labels)))

    def measure_preprocessing(self) -> None:
        done: set[str] = set()
        for key in self.plan.models:
            spec = self.specs[key]
            recipe = preprocessing_recipe(spec)
            if recipe in done:
                continue
            done.add(recipe)
            for size in IMAGE_SIZES:
                logger.info("preprocessing cost: %s, %s", recipe, size.label)
                images = self.images[size.key]
                full = measure.preprocessing(
                    images,
                    spec,
                    jpeg_draft=False,
                    min_seconds=self.plan.preprocess_min_s,
                    min_runs=self.plan.preprocess_min_runs,
                )
                draft_ms = None
                if full.draft_applies:
                    draft = measure.preprocessing(
                        images,
                        spec,
                        jpeg_draft=True,
                        min_seconds=self.plan.preprocess_min_s,
                        min_runs=self.plan.preprocess_min_runs,
                    )
                    draft_ms = draft.seconds_per_image * 1e3
                self.results.preprocessing.append(
                    PreprocessRow(recipe, size.key, size.label, full.seconds_per_image * 1e3, draft_ms)
                )

    def compute_ceilings(self) -> None:
        for key in self.models:
            raw = self.results.raw_for(key)
            assert raw is not None
            best = raw.best
            inference_s = best.ms_per_batch / best.batch_size / 1e3
            for size in IMAGE_SIZES:
                pre = self.results.preprocess_for(key, size.key)
                if pre is None:
                    continue
                value = measure.ceiling(pre.server_ms / 1e3, inference_s, self.cores)
                without = (
                    measure.ceiling(pre.full_decode_ms / 1e3, inference_s, self.cores)
                    if pre.draft_ms is not None
                    else None
                )
                self.results.ceilings.append(
                    CeilingRow(
                        key,
                        size.key,
                        size.label,
                        pre.server_ms,
                        inference_s * 1e3,
                        best.batch_size,
                        self.cores,
                        value,
                        without,
                    )
                )

    # ------------------------------------------------------------------------------------------------- load

    def _fp32_tensors(self, key: str) -> list[bytes]:
        """The small JPEGs preprocessed once by the server's own code, as [1, C, H, W] little-endian floats."""
        if key not in self._tensors:
            spec = self.specs[key]
            self._tensors[key] = [
                preprocess_image(image.data, spec, DecodeOptions(), image.size.content_type)
                .tensor[None]
                .astype("<f4")
                .tobytes()
                for image in self.images[SMALL]
            ]
        return self._tensors[key]

    def _requests(self, server: RunningServer, size: str, protocol: str = V1) -> list:
        host, port, model = "127.0.0.1", server.port, server.model
        if protocol == V1:
            return [
                loadgen.multipart_request(
                    host, port, server.classify_path, image.data, image.name, image.size.content_type
                )
                for image in self.images[size]
            ]
        spec = self.specs[model.key]
        k = min(TOP_K, spec.num_classes)
        if protocol in (V2_BYTES, GRPC_BYTES):
            inputs = [("BYTES", [1], loadgen.v2_bytes_tensor([image.data])) for image in self.images[size]]
        else:
            assert size == SMALL
            shape = [1, spec.channels, spec.crop_size, spec.crop_size]
            inputs = [("FP32", shape, data) for data in self._fp32_tensors(model.key)]
        if protocol in (V2_BYTES, V2_FP32):
            return [
                loadgen.v2_binary_request(
                    host,
                    port,
                    model.name,
                    input_name=spec.input_name,
                    datatype=datatype,
                    shape=shape,
                    data=data,
                    output_name=spec.output_name,
                    classification=k,
                )
                for datatype, shape, data in inputs
            ]
        return [
            loadgen.grpc_infer_request(
                model.name,
                input_name=spec.input_name,
                datatype=datatype,
                shape=shape,
                data=data,
                output_name=spec.output_name,
                classification=k,
            )
            for datatype, shape, data in inputs
        ]

    def _closed_loop(
        self, server: RunningServer, size: str, concurrency: int, protocol: str, duration_s: float
    ) -> Awaitable[loadgen.LoadRun]:
        requests = self._requests(server, size, protocol)
        if protocol in (GRPC_BYTES, GRPC_FP32):
            return loadgen.grpc_closed_loop(
                server.grpc_target,
                requests,
                concurrency=concurrency,
                warmup_s=self.plan.warmup_s,
                duration_s=duration_s,
                server_cpu=server.cpu_seconds,
            )
        return loadgen.closed_loop(
            "127.0.0.1",
            server.port,
            requests,
            concurrency=concurrency,
            warmup_s=self.plan.warmup_s,
            duration_s=duration_s,
            server_cpu=server.cpu_seconds,
        )

    def closed(
        self, server: RunningServer, size: str, concurrency: int, *, protocol: str = V1, record: bool = True
    ) -> loadgen.LoadRun:
        logger.info(
            "closed loop: %s %s %s %s concurrency %d", server.key, server.model.key, size, protocol, concurrency
        )
        run = asyncio.run(self._closed_loop(server, size, concurrency, protocol, self.plan.load_s))
        if record:
            row = load_row(server.key, server.model.key, size, run, protocol)
            (self.results.load if protocol == V1 else self.results.protocol_load).append(row)
        return run

    def protocols(self, server: RunningServer) -> None:
        """The small JPEG over V2 HTTP and gRPC, as BYTES and as FP32 tensors (/v1 multipart runs separately)."""
        asyncio.run(loadgen.grpc_wait_ready(server.grpc_target))
        for protocol in (V2_BYTES, V2_FP32, GRPC_BYTES, GRPC_FP32):
            for concurrency in self.plan.protocol_concurrencies:
                self.closed(server, SMALL, concurrency, protocol=protocol)

    def rate_search(self, server: RunningServer, size: str) -> None:
        saturation = self.results.saturation(server.key, server.model.key, size)
        if saturation is None or saturation.throughput <= 0:
            return
        requests = self._requests(server, size)

        async def run_at(rate: float) -> loadgen.LoadRun:
            logger.info("open loop: %s %s %.1f/s", server.key, server.model.key, rate)
            return await loadgen.open_loop(
                "127.0.0.1",
                server.port,
                requests,
                rate=rate,
                warmup_s=self.plan.warmup_s,
                duration_s=self.plan.rate_trial_s,
                server_cpu=server.cpu_seconds,
            )

        async def search() -> list[loadgen.RateTrial]:
            return await loadgen.search_max_rate(
                run_at,
                low=0.3 * saturation.throughput,
                high=0.95 * saturation.throughput,
                steps=self.plan.rate_steps,
                p99_limit_s=P99_LIMIT_S,
            )

        trials = asyncio.run(search())
        rows = []
        for trial in trials:
            window = trial.run.in_window
            ok = trial.run.latencies(200)
            rows.append(
                RateTrialRow(
                    rate=trial.rate,
                    throughput=trial.run.throughput,
                    p50_ms=_ms(loadgen.percentile(ok, 0.5)),
                    p99_ms=_ms(trial.p99_s),
                    failures=sum(1 for s in window if s.status != 200),
                    requests=len(window),
                    passed=trial.passed,
                    client_cpu_cores=trial.run.client_cpu_fraction,
                    statuses=status_names(trial.run),
                )
            )
        self.results.rate_searches.append(RateSearch(server.key, server.model.key, size, P99_LIMIT_S * 1e3, rows))

    def resources(self, server: RunningServer, settled_rss_mb: float, processes: int, *, idle: bool) -> None:
        idle_percent = None
        if idle:
            # Let the last answers and connection closes settle, and our server give back its batches' memory (a
            # one-off run, batch_memory_release_s after its last batch): idle CPU is what it costs at rest.
            time.sleep(1.0 + Settings.model_fields["batch_memory_release_s"].default)
            logger.info("idle CPU of %s for %g s", server.key, self.plan.idle_s)
            before = server.cpu_seconds()
            started = time.monotonic()
            time.sleep(self.plan.idle_s)
            idle_percent = 100 * (server.cpu_seconds() - before) / (time.monotonic() - started)
        memory = server.memory()
        self.results.resources.append(
            ServerResources(
                server.key,
                server.model.key,
                server.ready_after_s or 0.0,
                memory.rss_bytes / 2**20,
                memory.peak_rss_bytes / 2**20,
                idle_percent,
                self.plan.idle_s if idle else None,
                settled_after_s=server.settled_after_s,
                rss_settled_mb=settled_rss_mb,
                processes=processes,
            )
        )

    def profile(self, server: RunningServer, size: str, concurrency: int, protocol: str = V1) -> None:
        if self.plan.profile_s <= 0 or profiling.py_spy() is None:
            if self.plan.profile_s > 0 and not any("py-spy" in note for note in self.results.notes):
                self.results.notes.append("py-spy is not installed, so the run has no profile (pip install py-spy).")
            return
        logger.info("profile: %s %s %s %s concurrency %d", server.key, server.model.key, size, protocol, concurrency)
        output = self.log_dir / f"profile-{server.key}-{server.model.key}-{size}-{protocol}-c{concurrency}.txt"
        seconds = self.plan.profile_s
        # The profiled run is separate and not reported as a load row: sampling costs the server some CPU.
        plan_load = self.plan.load_s
        recorder_holder: dict[str, object] = {}

        async def profiled() -> loadgen.LoadRun:
            async def start_recorder() -> None:
                await asyncio.sleep(self.plan.warmup_s)
                cpu_before, started = thread_cpu_seconds(server.pid), time.monotonic()
                recorder = profiling.start_recording(server.pid, seconds, output)
                recorder_holder["process"] = recorder
                # The CPU read again as the recording ends, while the load still runs (it lasts a second longer).
                recorder_holder["out"] = (await asyncio.to_thread(recorder.communicate, timeout=seconds + 60))[0]
                recorder_holder["cpu"] = (cpu_before, thread_cpu_seconds(server.pid), time.monotonic() - started)

            recorder_task = asyncio.ensure_future(start_recorder())
            run = await self._closed_loop(server, size, concurrency, protocol, max(plan_load, seconds + 1.0))
            await recorder_task
            return run

        run = asyncio.run(profiled())
        recorder = recorder_holder["process"]
        out = recorder_holder["out"]
        assert isinstance(recorder, subprocess.Popen) and isinstance(out, bytes)
        if recorder.returncode != 0 or not output.exists():
            self.results.notes.append(f"py-spy failed ({recorder.returncode}): {out.decode(errors='replace')[-300:]}")
            return
        summary = profiling.summarise(output.read_text(), seconds)
        cpu_before, cpu_after, cpu_seconds = recorder_holder["cpu"]  # type: ignore[misc]
        cpu = profiling.cpu_by_group(summary, cpu_before, cpu_after, cpu_seconds)
        groups = []
        for group, count in summary.by_group.most_common():
            frames = summary.self_frames[group]
            groups.append(
                ProfileGroup(
                    group,
                    summary.cores(count),
                    count / summary.samples,
                    [(frame, n / count) for frame, n in frames.most_common(6)],
                    cpu.get(group, 0.0),
                )
            )
        if profiling.NATIVE_GROUP in cpu:
            groups.append(ProfileGroup(profiling.NATIVE_GROUP, 0.0, 0.0, [], cpu[profiling.NATIVE_GROUP]))
        self.results.profiles.append(
            ProfileResult(
                server.key,
                server.model.key,
                size,
                concurrency,
                seconds,
                summary.samples,
                run.throughput,
                groups,
                protocol,
            )
        )

    @contextlib.contextmanager
    def serving(self, variant_key: str, key: str, *, idle: bool = False) -> Iterator[RunningServer]:
        """Start one server configuration on one model, wait until it is ready and settled, record how it was
        started and what it runs with; on leaving, record its resources (and idle CPU with `idle`) and stop it."""
        variant = self.variants[variant_key]
        log = self.log_dir / f"{variant.key}-{key}.log"
        logger.info("starting %s with %s", variant.title, self.models[key].title)
        server = RunningServer(
            variant.kind, self.models[key], log, variant.args, grpc=variant.kind is OURS, key=variant.key
        )
        with server:
            server.wait_ready()
            server.wait_settled(self.plan.settle_window_s)
            settled_rss_mb, processes = server.memory().rss_bytes / 2**20, server.processes()
            self.results.servers.append(ServerCommand(variant.key, key, command_text(server.command, self.cache_dir)))
            if variant.kind is OURS:
                self._record_batching(server)
            yield server
            self.resources(server, settled_rss_mb, processes, idle=idle)

    def _record_batching(self, server: RunningServer) -> None:
        described = server.get_json(f"/v1/models/{server.model.name}")
        assert isinstance(described, dict)
        batching = described.get("batching") or {}
        curve = [
            (int(point["batch_size"]), float(point["images_per_second"])) for point in batching.get("batch_curve") or []
        ]
        self.results.batching.append(
            BatchingRow(
                server.key,
                server.model.key,
                int(batching["max_batch_size"]),
                str(batching.get("max_batch_size_source", "")),
                curve,
            )
        )

    def c1_reference(self, key: str) -> tuple[float, float]:
        """Preprocessing and batch-1 inference of `key` on the small JPEG, timed now (the server idles meanwhile)."""
        spec = self.specs[key]
        runtime = OnnxModelRuntime(self.models[key].path)
        (batch1,) = measure.raw_inference(
            runtime, spec, [1], min_seconds=self.plan.raw_min_s, min_runs=self.plan.raw_min_runs
        )
        del runtime
        gc.collect()
        pre = measure.preprocessing(
            self.images[SMALL],
            spec,
            jpeg_draft=True,
            min_seconds=self.plan.preprocess_min_s,
            min_runs=self.plan.preprocess_min_runs,
        )
        return pre.seconds_per_image * 1e3, batch1.seconds_per_batch * 1e3

    def _small_concurrencies(self, server: RunningServer, key: str) -> None:
        for concurrency in self.plan.concurrencies:
            if concurrency == 1 and key in (self.primary, "bundled"):
                self.results.c1_reference_ms[key] = self.c1_reference(key)
            self.closed(server, SMALL, concurrency)

    def load_ours(self, key: str) -> None:
        """Our server at its defaults on `key`: the small JPEG at each concurrency, and for the primary model the
        other image sizes, the open-loop search, idle CPU and a profile; V2 and gRPC on the primary and the
        bundled model; then the fixed batch sizes, when `key` is one of the plan's batch models."""
        primary = key == self.primary
        with self.serving("ours", key, idle=primary) as server:
            self._small_concurrencies(server, key)
            if primary:
                for size in IMAGE_SIZES:
                    if size.key != SMALL:
                        self.closed(server, size.key, self.plan.size_concurrency)
            if key in (self.primary, "bundled"):
                self.protocols(server)
            if primary:
                self.rate_search(server, SMALL)
            if key in (self.primary, "bundled"):
                # On the light model per-request overhead, not inference, sets the pace.
                self.profile(server, SMALL, self.plan.size_concurrency)
            if key == "bundled":
                # Where a gRPC call costs more than a V2 HTTP request with the same image (a target compares them).
                for protocol in (V2_BYTES, GRPC_BYTES):
                    self.profile(server, SMALL, self.plan.size_concurrency, protocol)
        if key in self.resolved(self.plan.batch_models):
            self.load_fixed_batches(key)

    def load_fixed_batches(self, key: str) -> None:
        largest = max(self.plan.fixed_batch_sizes)
        for size in self.plan.fixed_batch_sizes:
            with self.serving(fixed_batch_key(size), key) as server:
                concurrencies = [*self.plan.fixed_batch_latency_concurrencies] if size == largest else []
                for concurrency in (*concurrencies, self.plan.size_concurrency):
                    self.closed(server, SMALL, concurrency)

    def load_admission(self) -> None:
        with self.serving("ours-admission", self.primary) as server:
            self.closed(server, SMALL, self.plan.admission_concurrency)
        batching = self.results.batching_for("ours-admission", self.primary)
        self.results.admission_max_batch_size = batching.max_batch_size if batching else None

    def side_by_side(self, key: str, concurrency: int = 1) -> None:
        """Ours at its defaults and the naive server on `key`, both started and settled (one after the other, so
        that neither's start slows the other's), then driven in turn at `concurrency` for `paired_rounds` rounds,
        the order alternating, while the other idles. A round's two runs are seconds apart; the load runs, minutes
        apart, each meet another hour of this shared machine, and at concurrency 1 that drift (5-10%) is larger
        than the difference to measure."""
        model = self.models[key]
        logger.info("side by side at concurrency %d: ours and naive on %s", concurrency, model.title)
        with contextlib.ExitStack() as stack:
            servers: dict[str, RunningServer] = {}
            for variant_key in ("ours", "naive"):
                variant = self.variants[variant_key]
                log = self.log_dir / f"{variant.key}-{key}-side-by-side.log"
                server = stack.enter_context(RunningServer(variant.kind, model, log, variant.args, key=variant.key))
                server.wait_ready()
                server.wait_settled(self.plan.settle_window_s)
                servers[variant_key] = server
            rounds = []
            for index in range(self.plan.paired_rounds):
                order = ("ours", "naive") if index % 2 == 0 else ("naive", "ours")
                runs = {}
                for name in order:
                    server = servers[name]
                    runs[name] = asyncio.run(
                        loadgen.closed_loop(
                            "127.0.0.1",
                            server.port,
                            self._requests(server, SMALL),
                            concurrency=concurrency,
                            warmup_s=self.plan.paired_warmup_s,
                            duration_s=self.plan.paired_s,
                        )
                    )
                p50 = {name: _ms(loadgen.percentile(run.latencies(200), 0.50)) for name, run in runs.items()}
                rounds.append(
                    PairedRound(order[0], runs["ours"].throughput, runs["naive"].throughput, p50["ours"], p50["naive"])
                )
        self.results.paired.append(PairedRow(key, concurrency, self.plan.paired_s, rounds))

    def ready_times(self, key: str) -> None:
        """Start ours at its defaults and the naive server on `key` `ready_starts` times each, in turn (the order
        alternating), each stopped once ready: how long from starting the process to its readiness endpoint's first
        200. Run first, on a quiet machine: a start measured in the load phases follows minutes of CPU-bound work
        (the ceilings, the server before it) and is polled every 100 ms."""
        model = self.models[key]
        logger.info("ready times: ours and naive on %s, %d starts each", model.title, self.plan.ready_starts)
        starts: dict[str, list[float]] = {"ours": [], "naive": []}
        for index in range(self.plan.ready_starts):
            for variant_key in ("ours", "naive") if index % 2 == 0 else ("naive", "ours"):
                variant = self.variants[variant_key]
                log = self.log_dir / f"{variant.key}-{key}-ready-{index}.log"
                with RunningServer(
                    variant.kind, model, log, variant.args, grpc=variant.kind is OURS, key=variant.key
                ) as server:
                    server.wait_ready(poll_s=READY_POLL_S)
                    assert server.ready_after_s is not None
                    starts[variant_key].append(server.ready_after_s)
        for variant_key, times in starts.items():
            self.results.ready.append(ReadyRow(variant_key, key, times, READY_POLL_S))

    def load_naive(self, key: str, concurrencies: Sequence[int]) -> None:
        primary = key == self.primary
        with self.serving("naive", key, idle=primary) as server:
            for concurrency in concurrencies:
                self.closed(server, SMALL, concurrency)
            if primary:
                self.closed(server, LARGE, self.plan.size_concurrency)
                self.rate_search(server, SMALL)


def _ms(seconds: float) -> float:
    return seconds * 1e3


def status_names(run: loadgen.LoadRun) -> dict[str, int]:
    """Non-200 outcomes of the window's requests, by HTTP status or client-side failure."""
    return {
        loadgen.STATUS_NAMES.get(status, str(status)): count
        for status, count in sorted(run.status_counts().items())
        if status != 200
    }


def load_row(server: str, model: str, size: str, run: loadgen.LoadRun, protocol: str = V1) -> LoadRow:
    ok = run.latencies(200)
    rejected = run.latencies(503)
    statuses = status_names(run)
    return LoadRow(
        server=server,
        model=model,
        size=size,
        size_label=SIZES_BY_KEY[size].label,
        concurrency=run.concurrency or 0,
        throughput=run.throughput,
        p50_ms=_ms(loadgen.percentile(ok, 0.50)),
        p95_ms=_ms(loadgen.percentile(ok, 0.95)),
        p99_ms=_ms(loadgen.percentile(ok, 0.99)),
        ok=len(ok),
        statuses=statuses,
        server_cpu_cores=run.server_cpu_fraction,
        client_cpu_cores=run.client_cpu_fraction,
        rejected_p50_ms=_ms(loadgen.percentile(rejected, 0.50)) if rejected else None,
        rejected_p99_ms=_ms(loadgen.percentile(rejected, 0.99)) if rejected else None,
        rejected_max_ms=_ms(max(rejected)) if rejected else None,
        protocol=protocol,
    )


def run_benchmark(plan: Plan, cache_dir: Path, command: str) -> BenchResults:
    started = time.monotonic()
    kinds = variants(plan)
    results = BenchResults(
        environment=environment(plan, command),
        primary_model=plan.models[0],
        model_titles={},
        server_titles={key: variant.title for key, variant in kinds.items()},
    )
    # The server's own parser: defaults plus the admission server's flags.
    admission = load_settings(list(kinds["ours-admission"].args))
    results.admission_max_queue_size = admission.max_queue_size
    results.admission_max_queue_wait_ms = admission.max_queue_wait_ms
    results.fixed_batch_sizes = list(plan.fixed_batch_sizes)
    logging_flags = "--no-access-log --log-level warning"
    results.settings = {
        "ours": " ".join(("python -m service", *plan.ours_args, logging_flags)),
        "admission": " ".join(("python -m service", *kinds["ours-admission"].args, logging_flags)),
        "naive": "python -m bench.naive_server",
        "load": (
            f"closed loop: {plan.warmup_s:g} s warm-up then {plan.load_s:g} s measured per run; open loop: "
            f"{plan.rate_trial_s:g} s measured per rate tried; idle CPU over {plan.idle_s:g} s"
        ),
        "settle": f"{plan.settle_window_s:g} s",
        "photos": ", ".join(plan.photos),
        "python": sys.executable,
    }
    results.notes.extend(plan.notes)
    run = BenchmarkRun(plan, cache_dir, results)
    run.prepare()
    naive_c1 = run.resolved(workload.BENCH_MODELS)
    skipped = [key for key in workload.BENCH_MODELS if key not in plan.batch_models]
    if skipped:
        results.notes.append(
            f"The fixed --max-batch-size runs were left out for {', '.join(skipped)} (--batch-models), "
            "to keep the run short: their auto batch size targets are not measured."
        )
    for key in run.resolved([run.primary, "bundled"]):
        run.ready_times(key)
    run.measure_inference()
    run.measure_preprocessing()
    run.compute_ceilings()
    run.load_ours(run.primary)
    run.load_admission()
    run.load_naive(run.primary, (*plan.concurrencies, plan.admission_concurrency))
    int8 = workload.int8_key(run.primary)
    if int8 in run.models:
        run.load_ours(int8)
        if int8 in naive_c1:
            run.load_naive(int8, [1])
    for key in plan.models[1:]:
        run.load_ours(key)
        run.load_naive(key, [1, plan.size_concurrency])
    for key in naive_c1:
        run.side_by_side(key)
    results.wall_seconds = time.monotonic() - started
    return results
