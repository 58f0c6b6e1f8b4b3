"""One benchmark run, start to end: prepare, measure in-process, load each server, collect `BenchResults`."""

from __future__ import annotations

import asyncio
import datetime
import gc
import importlib.metadata
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen, measure, profiling, workload
from bench.results import (
    AccuracyRow,
    BatchRow,
    BenchResults,
    CeilingRow,
    Environment,
    LoadRow,
    PreprocessRow,
    ProfileGroup,
    ProfileResult,
    RateSearch,
    RateTrialRow,
    RawInference,
    ServerResources,
)
from bench.servers import NAIVE, OURS, OURS_ARGS, OURS_MAX_QUEUE_WAIT_MS, RunningServer, ServerKind
from bench.workload import IMAGE_SIZES, SIZES_BY_KEY, EncodedImage, ModelCase
from service.__main__ import load_settings
from service.modelspec import ModelSpec
from service.runtime import OnnxModelRuntime, available_cpus

logger = logging.getLogger("bench")

P99_LIMIT_S = 0.100
"""The open-loop search's latency bound (MLPerf's Server scenario bounds a percentile; the issue says p99 100 ms)."""
SMALL = "small-jpeg"
LARGE = "12mp-jpeg"


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
    concurrencies: tuple[int, ...] = (1, 8, 32, 64)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    size_concurrency: int = 32
    """Concurrency of the runs at image sizes other than the small JPEG, and of the lighter models."""
    photos: tuple[str, ...] = workload.PHOTOS
    ours_args: tuple[str, ...] = OURS_ARGS
    """Flags of `python -m service` besides host, port, model folder and logging (later flags win)."""
    notes: tuple[str, ...] = ()
    """Printed under the report's method, for settings a reader must know to read the numbers."""


FULL = Plan(mode="full", models=("resnet50", "resnet18", "bundled"), warmup_s=2.0, load_s=12.0, rate_trial_s=10.0,
            rate_steps=6, idle_s=10.0, raw_min_s=2.0, raw_min_runs=3, preprocess_min_s=1.5, preprocess_min_runs=5,
            profile_s=10.0)

QUICK_HOLD_MS = 25
QUICK_OURS_ARGS = ("--max-queue-size", "1", "--max-files-per-request", "1", "--max-batch-size", "2",
                   "--max-batch-delay-ms", str(QUICK_HOLD_MS), "--max-queue-wait-ms", str(OURS_MAX_QUEUE_WAIT_MS))
"""Our server in the quick run: a one-image queue whose image is held 25 ms, so that concurrency 64 must overflow.

The smoke test wants every target judged, and the refusal target needs 503s among the requests sent in the
concurrency-64 window. With the full run's settings that depends on speed: admission counts only images already
decoded and queued (`BatchPolicy.has_room`), not requests being read or decoded, so the queue overflows only when
inference is the bottleneck, and the bundled model's inference is about as fast as decoding its images. Here no
speed decides it:

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
they measure, and the accuracy needs the Fashion-MNIST test set, which `make test` installs. The price: here our
server does at most 40 images per second, each at least 25 ms, and its quick-run numbers say nothing about it."""

QUICK = Plan(mode="quick", models=("bundled",), warmup_s=0.3, load_s=1.0, rate_trial_s=0.8, rate_steps=3,
             idle_s=1.0, raw_min_s=0.05, raw_min_runs=2, preprocess_min_s=0.05, preprocess_min_runs=2, profile_s=0.0,
             batch_sizes=(1, 4, 32), photos=workload.PHOTOS[:1], ours_args=QUICK_OURS_ARGS,
             notes=(f"Quick run: our server queues one image and holds it {QUICK_HOLD_MS} ms (--max-queue-size 1 "
                    f"--max-batch-size 2 --max-batch-delay-ms {QUICK_HOLD_MS}), so that concurrency 64 is refused "
                    f"whatever the machine's speed; its throughput (at most {1000 // QUICK_HOLD_MS} img/s) and "
                    "latency are those of that setting, not of the defaults.",))


def preprocessing_recipe(spec: ModelSpec) -> str:
    return f"{spec.color_mode}, resize {spec.resize_size}, crop {spec.crop_size}, {spec.interpolation}"


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=workload.REPO_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=workload.REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
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
        cpu_model=cpu_model, simd=simd, cores=available_cpus(), online_cpus=os.cpu_count() or 1,
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), versions=versions,
        git_commit=_git_commit(), mode=plan.mode, command=command,
        load_average=" ".join(f"{value:.2f}" for value in os.getloadavg()),
    )


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

    @property
    def primary(self) -> str:
        return self.plan.models[0]

    # --------------------------------------------------------------------------------------- in-process work

    def measure_inference(self) -> None:
        for key, case in self.models.items():
            logger.info("raw ONNX Runtime throughput: %s", case.title)
            runtime = OnnxModelRuntime(case.path)
            spec = measure.model_spec(runtime)
            self.specs[key] = spec
            self.results.model_inputs[key] = preprocessing_recipe(spec)
            timings = measure.raw_inference(runtime, spec, self.plan.batch_sizes, min_seconds=self.plan.raw_min_s,
                                            min_runs=self.plan.raw_min_runs)
            rows = [BatchRow(t.batch_size, t.seconds_per_batch * 1e3, t.images_per_second) for t in timings]
            raw = RawInference(key, case.title, rows)
            if key == self.primary:
                default = measure.default_session_batch1(case.path, spec, min_seconds=self.plan.raw_min_s,
                                                         min_runs=self.plan.raw_min_runs)
                raw.default_session_batch1 = BatchRow(1, default.seconds_per_batch * 1e3, default.images_per_second)
            self.results.raw.append(raw)
            if spec.color_mode == "L" and spec.crop_size == 28:
                self._measure_accuracy(key, runtime, spec)
            del runtime
            gc.collect()  # frees the session and its thread pool before the next one

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
                full = measure.preprocessing(images, spec, jpeg_draft=False, min_seconds=self.plan.preprocess_min_s,
                                             min_runs=self.plan.preprocess_min_runs)
                draft_ms = None
                if full.draft_applies:
                    draft = measure.preprocessing(images, spec, jpeg_draft=True,
                                                  min_seconds=self.plan.preprocess_min_s,
                                                  min_runs=self.plan.preprocess_min_runs)
                    draft_ms = draft.seconds_per_image * 1e3
                self.results.preprocessing.append(
                    PreprocessRow(recipe, size.key, size.label, full.seconds_per_image * 1e3, draft_ms))

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
                without = (measure.ceiling(pre.full_decode_ms / 1e3, inference_s, self.cores)
                           if pre.draft_ms is not None else None)
                self.results.ceilings.append(CeilingRow(key, size.key, size.label, pre.server_ms, inference_s * 1e3,
                                                        best.batch_size, self.cores, value, without))

    # ------------------------------------------------------------------------------------------------- load

    def _requests(self, server: RunningServer, size: str) -> list[bytes]:
        return [loadgen.multipart_request("127.0.0.1", server.port, server.classify_path, image.data, image.name,
                                          image.size.content_type) for image in self.images[size]]

    def closed(self, server: RunningServer, size: str, concurrency: int, *, record: bool = True
               ) -> loadgen.LoadRun:
        logger.info("closed loop: %s %s %s concurrency %d", server.kind.key, server.model.key, size, concurrency)
        run = asyncio.run(loadgen.closed_loop(
            "127.0.0.1", server.port, self._requests(server, size), concurrency=concurrency,
            warmup_s=self.plan.warmup_s, duration_s=self.plan.load_s, server_cpu=server.cpu_seconds))
        if record:
            self.results.load.append(load_row(server.kind.key, server.model.key, size, run))
        return run

    def rate_search(self, server: RunningServer, size: str) -> None:
        saturation = self.results.saturation(server.kind.key, server.model.key, size)
        if saturation is None or saturation.throughput <= 0:
            return
        requests = self._requests(server, size)

        async def run_at(rate: float) -> loadgen.LoadRun:
            logger.info("open loop: %s %s %.1f/s", server.kind.key, server.model.key, rate)
            return await loadgen.open_loop("127.0.0.1", server.port, requests, rate=rate, warmup_s=self.plan.warmup_s,
                                           duration_s=self.plan.rate_trial_s, server_cpu=server.cpu_seconds)

        async def search() -> list[loadgen.RateTrial]:
            return await loadgen.search_max_rate(run_at, low=0.3 * saturation.throughput,
                                                 high=0.95 * saturation.throughput, steps=self.plan.rate_steps,
                                                 p99_limit_s=P99_LIMIT_S)

        trials = asyncio.run(search())
        rows = []
        for trial in trials:
            window = trial.run.in_window
            ok = trial.run.latencies(200)
            rows.append(RateTrialRow(
                rate=trial.rate, throughput=trial.run.throughput, p50_ms=_ms(loadgen.percentile(ok, 0.5)),
                p99_ms=_ms(trial.p99_s), failures=sum(1 for s in window if s.status != 200), requests=len(window),
                passed=trial.passed, client_cpu_cores=trial.run.client_cpu_fraction,
                statuses=status_names(trial.run)))
        self.results.rate_searches.append(RateSearch(server.kind.key, server.model.key, size, P99_LIMIT_S * 1e3, rows))

    def idle_and_memory(self, server: RunningServer, *, idle: bool) -> None:
        idle_percent = None
        if idle:
            time.sleep(1.0)  # let the last answers and connection closes settle
            logger.info("idle CPU of %s for %g s", server.kind.key, self.plan.idle_s)
            before = server.cpu_seconds()
            started = time.monotonic()
            time.sleep(self.plan.idle_s)
            idle_percent = 100 * (server.cpu_seconds() - before) / (time.monotonic() - started)
        memory = server.memory()
        self.results.resources.append(ServerResources(
            server.kind.key, server.model.key, server.ready_after_s or 0.0, memory.rss_bytes / 2**20,
            memory.peak_rss_bytes / 2**20, idle_percent, self.plan.idle_s if idle else None))

    def profile(self, server: RunningServer, size: str, concurrency: int) -> None:
        if self.plan.profile_s <= 0 or profiling.py_spy() is None:
            if self.plan.profile_s > 0:
                self.results.notes.append("py-spy is not installed, so the run has no profile (pip install py-spy).")
            return
        output = self.log_dir / f"profile-{server.kind.key}-{server.model.key}-{size}-c{concurrency}.txt"
        seconds = self.plan.profile_s
        # The profiled run is separate and not reported as a load row: sampling costs the server some CPU.
        plan_load = self.plan.load_s
        recorder_holder: dict[str, object] = {}

        async def profiled() -> loadgen.LoadRun:
            async def start_recorder() -> None:
                await asyncio.sleep(self.plan.warmup_s)
                recorder_holder["process"] = profiling.start_recording(server.pid, seconds, output)

            recorder_task = asyncio.ensure_future(start_recorder())
            run = await loadgen.closed_loop("127.0.0.1", server.port, self._requests(server, size),
                                            concurrency=concurrency, warmup_s=self.plan.warmup_s,
                                            duration_s=max(plan_load, seconds + 1.0))
            await recorder_task
            return run

        run = asyncio.run(profiled())
        recorder = recorder_holder["process"]
        assert isinstance(recorder, subprocess.Popen)
        out, _ = recorder.communicate(timeout=60)
        if recorder.returncode != 0 or not output.exists():
            self.results.notes.append(f"py-spy failed ({recorder.returncode}): {out.decode(errors='replace')[-300:]}")
            return
        summary = profiling.summarise(output.read_text(), seconds)
        groups = []
        for group, count in summary.by_group.most_common():
            frames = summary.self_frames[group]
            groups.append(ProfileGroup(group, summary.cores(count), count / summary.samples,
                                       [(frame, n / count) for frame, n in frames.most_common(6)]))
        self.results.profiles.append(ProfileResult(server.kind.key, server.model.key, size, concurrency, seconds,
                                                   summary.samples, run.throughput, groups))

    def start(self, kind: ServerKind, key: str) -> RunningServer:
        extra = self.plan.ours_args if kind is OURS else ()
        log = self.log_dir / f"{kind.key}-{key}.log"
        logger.info("starting %s with %s", kind.title, self.models[key].title)
        return RunningServer(kind, self.models[key], log, extra).wait_ready()

    def c1_reference(self) -> tuple[float, float]:
        """Preprocessing and batch-1 inference of the primary model, timed now (the server idles meanwhile)."""
        key = self.primary
        spec = self.specs[key]
        runtime = OnnxModelRuntime(self.models[key].path)
        (batch1,) = measure.raw_inference(runtime, spec, [1], min_seconds=self.plan.raw_min_s,
                                          min_runs=self.plan.raw_min_runs)
        del runtime
        gc.collect()
        pre = measure.preprocessing(self.images[SMALL], spec, jpeg_draft=True, min_seconds=self.plan.preprocess_min_s,
                                    min_runs=self.plan.preprocess_min_runs)
        return pre.seconds_per_image * 1e3, batch1.seconds_per_batch * 1e3

    def load_primary(self, kind: ServerKind) -> None:
        key = self.primary
        with self.start(kind, key) as server:
            for concurrency in self.plan.concurrencies:
                if kind is OURS and concurrency == 1:
                    self.results.c1_reference_ms = self.c1_reference()
                self.closed(server, SMALL, concurrency)
            sizes = [LARGE] if kind is NAIVE else [size.key for size in IMAGE_SIZES if size.key != SMALL]
            for size in sizes:
                self.closed(server, size, self.plan.size_concurrency)
            self.rate_search(server, SMALL)
            self.idle_and_memory(server, idle=True)
            if kind is OURS:
                self.profile(server, SMALL, self.plan.size_concurrency)

    def load_secondary(self, kind: ServerKind, key: str, concurrencies: Sequence[int]) -> None:
        with self.start(kind, key) as server:
            for concurrency in concurrencies:
                self.closed(server, SMALL, concurrency)
            self.idle_and_memory(server, idle=False)
            if kind is OURS and key == "bundled":
                # The light model is where per-request overhead, not inference, sets the pace.
                self.profile(server, SMALL, self.plan.size_concurrency)


def _ms(seconds: float) -> float:
    return seconds * 1e3


def status_names(run: loadgen.LoadRun) -> dict[str, int]:
    """Non-200 outcomes of the window's requests, by HTTP status or client-side failure."""
    return {loadgen.STATUS_NAMES.get(status, str(status)): count
            for status, count in sorted(run.status_counts().items()) if status != 200}


def load_row(server: str, model: str, size: str, run: loadgen.LoadRun) -> LoadRow:
    ok = run.latencies(200)
    rejected = run.latencies(503)
    statuses = status_names(run)
    return LoadRow(
        server=server, model=model, size=size, size_label=SIZES_BY_KEY[size].label,
        concurrency=run.concurrency or 0, throughput=run.throughput,
        p50_ms=_ms(loadgen.percentile(ok, 0.50)), p95_ms=_ms(loadgen.percentile(ok, 0.95)),
        p99_ms=_ms(loadgen.percentile(ok, 0.99)), ok=len(ok), statuses=statuses,
        server_cpu_cores=run.server_cpu_fraction, client_cpu_cores=run.client_cpu_fraction,
        rejected_p50_ms=_ms(loadgen.percentile(rejected, 0.50)) if rejected else None,
        rejected_p99_ms=_ms(loadgen.percentile(rejected, 0.99)) if rejected else None,
        rejected_max_ms=_ms(max(rejected)) if rejected else None,
    )


def run_benchmark(plan: Plan, cache_dir: Path, command: str) -> BenchResults:
    started = time.monotonic()
    results = BenchResults(environment=environment(plan, command), primary_model=plan.models[0], model_titles={},
                           server_titles={OURS.key: OURS.title, NAIVE.key: NAIVE.title})
    ours_settings = load_settings(list(plan.ours_args))  # the server's own parser: defaults plus our flags
    results.ours_max_queue_size = ours_settings.max_queue_size
    results.ours_max_queue_wait_ms = ours_settings.max_queue_wait_ms
    results.ours_max_batch_size = ours_settings.max_batch_size
    results.settings = {
        "ours": "python -m service " + " ".join(plan.ours_args) + " --no-access-log --log-level warning",
        "naive": "python -m bench.naive_server",
        "load": (f"closed loop: {plan.warmup_s:g} s warm-up then {plan.load_s:g} s measured per run; open loop: "
                 f"{plan.rate_trial_s:g} s measured per rate tried; idle CPU over {plan.idle_s:g} s"),
        "photos": ", ".join(plan.photos),
        "python": sys.executable,
    }
    results.notes.extend(plan.notes)
    run = BenchmarkRun(plan, cache_dir, results)
    run.prepare()
    run.measure_inference()
    run.measure_preprocessing()
    run.compute_ceilings()
    run.load_primary(OURS)
    run.load_primary(NAIVE)
    int8 = workload.int8_key(run.primary)
    if int8 in run.models:
        run.load_secondary(OURS, int8, [plan.size_concurrency])
    for key in plan.models[1:]:
        run.load_secondary(OURS, key, [1, plan.size_concurrency])
        run.load_secondary(NAIVE, key, [plan.size_concurrency])
    results.wall_seconds = time.monotonic() - started
    return results
