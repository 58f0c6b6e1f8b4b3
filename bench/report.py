"""`BenchResults` -> docs/BENCHMARKS.md: tables, the ratios ours/ceiling and ours/naive, each issue target met or
missed and by how much. Pure: no measurement happens here, so every number in the document comes from the run."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from bench.results import BenchResults, LoadRow
from bench.workload import SIZES_BY_KEY

SMALL = "small-jpeg"
LARGE = "12mp-jpeg"
CEILING_TARGET_SMALL = 0.95
CEILING_TARGET_LARGE = 0.90
C1_OVERHEAD_MS = 3.0
C64_P99_MS = 2000.0
REJECT_MS = 50.0
IDLE_PERCENT = 2.0
INT8_SPEEDUP = 2.0
ACCURACY_POINTS = 0.5


@dataclass(frozen=True)
class TargetOutcome:
    name: str
    goal: str
    measured: str
    met: bool | None
    """None: not measured in this run (the reason is in `measured`)."""
    margin: str


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"


def _pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines + [""]


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0 or math.isnan(numerator):
        return None
    return numerator / denominator


# ------------------------------------------------------------------------------------------------------- targets


class Measurement(NamedTuple):
    """What a target's `measure` found: the measured text, the verdict and the margin text."""

    measured: str
    met: bool | None
    """None: measured but nothing to judge (the reason is in `measured`), as `TargetOutcome.met`."""
    margin: str


NOT_MEASURED = Measurement("not measured", None, "—")


@dataclass(frozen=True)
class TargetDefinition:
    """One target of the issue: its name, its goal as stated, and how a run is judged against it.

    `measure` returns None when the run lacks what the target needs; it is shown as "not measured".
    """

    name: str | Callable[[BenchResults], str]
    """The target's name, or a function of the run for names that show what was run (a size, a model)."""
    goal: str
    measure: Callable[[BenchResults], Measurement | None]

    def evaluate(self, results: BenchResults) -> TargetOutcome:
        name = self.name if isinstance(self.name, str) else self.name(results)
        return TargetOutcome(name, self.goal, *(self.measure(results) or NOT_MEASURED))


def _saturation_name(size: str) -> Callable[[BenchResults], str]:
    def name(results: BenchResults) -> str:
        ceiling = results.ceiling_for(results.primary_model, size)
        return f"Saturation throughput, {ceiling.size_label if ceiling else size}"

    return name


def _saturation(size: str, target: float) -> Callable[[BenchResults], Measurement | None]:
    def measure(results: BenchResults) -> Measurement | None:
        ceiling = results.ceiling_for(results.primary_model, size)
        saturation = results.saturation("ours", results.primary_model, size)
        if ceiling is None or saturation is None:
            return None
        ratio = _ratio(saturation.throughput, ceiling.images_per_second)
        if ratio is None:
            return None
        return Measurement(
            f"{saturation.throughput:.1f} img/s (concurrency {saturation.concurrency}) vs ceiling "
            f"{ceiling.images_per_second:.1f} = {ratio:.3f}",
            ratio >= target,
            f"{ratio - target:+.3f} of the ceiling ({saturation.throughput - target * ceiling.images_per_second:+.1f}"
            f" img/s)")

    return measure


def _c1_latency(results: BenchResults) -> Measurement | None:
    c1 = results.load_at("ours", results.primary_model, SMALL, 1)
    if not c1 or not results.c1_reference_ms:
        return None
    pre = results.preprocess_for(results.primary_model, SMALL)
    raw = results.raw_for(results.primary_model)
    batch1 = raw.batch(1) if raw else None
    pre_ms, inference_ms = results.c1_reference_ms
    floor = pre_ms + inference_ms
    overhead = c1.p50_ms - floor
    earlier = f"; at the start of the run {pre.server_ms:.1f} + {batch1.ms_per_batch:.1f} ms" if pre and batch1 else ""
    return Measurement(
        f"p50 {c1.p50_ms:.1f} ms vs {pre_ms:.1f} + {inference_ms:.1f} = {floor:.1f} ms timed just before the run "
        f"(overhead {overhead:.1f} ms){earlier}",
        overhead <= C1_OVERHEAD_MS,
        f"{C1_OVERHEAD_MS - overhead:+.1f} ms of slack")


def _c64_accepted(results: BenchResults) -> Measurement | None:
    c64 = results.load_at("ours", results.primary_model, SMALL, 64)
    if not c64 or not c64.ok:
        return None
    # Little's law: an accepted image waits behind at most the queue plus the batch being run.
    in_system = results.ours_max_queue_size + results.ours_max_batch_size
    bound = (f"; queue {results.ours_max_queue_size} + batch {results.ours_max_batch_size} = {in_system} images "
             f"at {c64.throughput:.1f} img/s take {in_system / c64.throughput:.2f} s" if c64.throughput > 0 else "")
    if results.ours_max_queue_wait_ms:
        bound += f"; admission refuses what would wait over {results.ours_max_queue_wait_ms:g} ms"
    return Measurement(f"p99 {c64.p99_ms:.0f} ms over {c64.ok} answers{bound}", c64.p99_ms < C64_P99_MS,
                       f"{C64_P99_MS - c64.p99_ms:+.0f} ms of slack")


def _c64_refused(results: BenchResults) -> Measurement | None:
    c64 = results.load_at("ours", results.primary_model, SMALL, 64)
    if not c64:
        return None
    if c64.rejected_p99_ms is None:
        return Measurement("no request was refused in the run", None, "—")
    return Measurement(
        f"{c64.statuses.get('503', 0)} refused with 503: p50 {c64.rejected_p50_ms:.1f} ms, "
        f"p99 {c64.rejected_p99_ms:.1f} ms, max {c64.rejected_max_ms:.1f} ms",
        c64.rejected_p99_ms <= REJECT_MS,
        f"{REJECT_MS - c64.rejected_p99_ms:+.1f} ms of slack (p99)")


def _idle_cpu(results: BenchResults) -> Measurement | None:
    resources = results.resources_for("ours", results.primary_model)
    if not resources or resources.idle_cpu_percent is None:
        return None
    return Measurement(f"{resources.idle_cpu_percent:.2f}% over {resources.idle_seconds:g} s",
                       resources.idle_cpu_percent < IDLE_PERCENT,
                       f"{IDLE_PERCENT - resources.idle_cpu_percent:+.2f} points")


def _int8_key(results: BenchResults) -> str:
    return f"{results.primary_model}-int8"


def _int8_name(results: BenchResults) -> str:
    int8_model = _int8_key(results)
    return f"INT8 throughput ({results.model_titles.get(int8_model, int8_model)})"


def _int8_throughput(results: BenchResults) -> Measurement | None:
    model, int8_model = results.primary_model, _int8_key(results)
    fp32_sat, int8_sat = results.saturation("ours", model, SMALL), results.saturation("ours", int8_model, SMALL)
    fp32_raw, int8_raw = results.raw_for(model), results.raw_for(int8_model)
    if not (fp32_sat and int8_sat and fp32_raw and int8_raw):
        return None
    served = int8_sat.throughput / fp32_sat.throughput
    raw_ratio = int8_raw.best.images_per_second / fp32_raw.best.images_per_second
    return Measurement(
        f"served {int8_sat.throughput:.1f} vs {fp32_sat.throughput:.1f} img/s = {served:.2f}×; raw ONNX Runtime "
        f"best {int8_raw.best.images_per_second:.1f} vs {fp32_raw.best.images_per_second:.1f} = {raw_ratio:.2f}×",
        served >= INT8_SPEEDUP,
        f"{served - INT8_SPEEDUP:+.2f}× (served), {raw_ratio - INT8_SPEEDUP:+.2f}× (raw)")


def _int8_accuracy(results: BenchResults) -> Measurement | None:
    fp32_acc, int8_acc = results.accuracy_for("bundled"), results.accuracy_for("bundled-int8")
    if not (fp32_acc and int8_acc):
        return None
    drop = 100 * (fp32_acc.test_accuracy - int8_acc.test_accuracy)
    return Measurement(
        f"fp32 {100 * fp32_acc.test_accuracy:.2f}%, INT8 {100 * int8_acc.test_accuracy:.2f}% "
        f"({fp32_acc.images:,} test images): {drop:+.2f} points",
        abs(drop) <= ACCURACY_POINTS,
        f"{ACCURACY_POINTS - abs(drop):+.2f} points of slack")


TARGETS: tuple[TargetDefinition, ...] = (
    TargetDefinition(_saturation_name(SMALL), f"≥ {CEILING_TARGET_SMALL:.2f} × ceiling",
                     _saturation(SMALL, CEILING_TARGET_SMALL)),
    TargetDefinition(_saturation_name(LARGE), f"≥ {CEILING_TARGET_LARGE:.2f} × ceiling",
                     _saturation(LARGE, CEILING_TARGET_LARGE)),
    TargetDefinition("Concurrency 1 latency, 500x375 JPEG",
                     f"p50 ≤ preprocessing + batch-1 inference + {C1_OVERHEAD_MS:g} ms", _c1_latency),
    TargetDefinition("Concurrency 64, accepted requests", f"p99 < {C64_P99_MS / 1000:g} s", _c64_accepted),
    TargetDefinition("Concurrency 64, requests beyond the queue", f"503 within {REJECT_MS:g} ms", _c64_refused),
    TargetDefinition("Idle server CPU", f"< {IDLE_PERCENT:g}% of a core", _idle_cpu),
    TargetDefinition(_int8_name, f"≥ {INT8_SPEEDUP:g}× fp32", _int8_throughput),
    TargetDefinition("INT8 accuracy, bundled Fashion-MNIST model", f"within {ACCURACY_POINTS:g} point of fp32",
                     _int8_accuracy),
)
"""The issue's targets in report order; a new target is one more entry here."""


def evaluate_targets(results: BenchResults) -> list[TargetOutcome]:
    """The issue's targets, judged on the run's primary model (ResNet-50 fp32 in a full run)."""
    return [target.evaluate(results) for target in TARGETS]


# ------------------------------------------------------------------------------------------------------- report


def _errors(row: LoadRow) -> str:
    return ", ".join(f"{status}: {count}" for status, count in row.statuses.items()) or "none"


def _verdict(met: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured"}[met]


def render(results: BenchResults) -> str:
    env = results.environment
    titles = results.model_titles
    servers = results.server_titles
    primary = results.primary_model
    out: list[str] = [
        "# Benchmarks",
        "",
        f"Written by `{env.command}` ({env.mode} run, {results.wall_seconds / 60:.1f} minutes). Every number below "
        "comes from that one run on this machine; rerun it to refresh this file. What is measured and how: see "
        "[Method](#method).",
        "",
        "## Machine",
        "",
    ]
    out += _table(["", ""], [
        ["CPU", env.cpu_model],
        ["Instruction sets", env.simd],
        ["Cores (this process may use / online)", f"{env.cores} / {env.online_cpus}"],
        ["Load average at start (1, 5, 15 min)", env.load_average],
        ["Date", env.date],
        ["Git commit", env.git_commit],
        *[[name, version] for name, version in env.versions.items()],
    ])

    # -------------------------------------------------------------------------------------- headline
    out += ["## Headline", ""]
    ceiling = results.ceiling_for(primary, SMALL)
    ours = results.saturation("ours", primary, SMALL)
    naive = results.saturation("naive", primary, SMALL)
    headline = []
    if ceiling and ours:
        headline.append(f"- {titles[primary]}, 500x375 JPEG: ours saturates at **{ours.throughput:.1f} img/s**, "
                        f"**{ours.throughput / ceiling.images_per_second:.2f} of the ceiling** "
                        f"({ceiling.images_per_second:.1f} img/s).")
    if ours and naive and naive.throughput > 0:
        of_ceiling = f" ({naive.throughput / ceiling.images_per_second:.2f} of the ceiling)" if ceiling else ""
        headline.append(f"- Naive FastAPI server: {naive.throughput:.1f} img/s{of_ceiling}; "
                        f"**ours/naive = {ours.throughput / naive.throughput:.2f}**.")
    raw = results.raw_for(primary)
    batch1 = raw.batch(1) if raw else None
    if raw and batch1:
        headline.append(f"- Raw ONNX Runtime on this machine: {raw.best.images_per_second:.1f} img/s at its best batch "
                        f"({raw.best.batch_size}), {batch1.images_per_second:.1f} img/s at batch 1.")
    ours64, naive64 = results.load_at("ours", primary, SMALL, 64), results.load_at("naive", primary, SMALL, 64)
    if ours64 and naive64:
        headline.append(f"- Concurrency 64: p99 {ours64.p99_ms:.0f} ms (ours) vs {naive64.p99_ms:.0f} ms (naive).")
    for search in results.rate_searches:
        if search.model == primary:
            best = search.best_rate
            headline.append(f"- Open loop (Poisson), highest rate with p99 < {search.p99_limit_ms:.0f} ms, "
                            f"{servers[search.server]}: " + (f"**{best:.1f} req/s**" if best else "none of the rates tried")
                            + ".")
    targets = evaluate_targets(results)
    met = sum(1 for t in targets if t.met is True)
    missed = sum(1 for t in targets if t.met is False)
    headline.append(f"- Targets: {met} met, {missed} missed, {len(targets) - met - missed} not measured (next section).")
    out += headline + [""]

    # -------------------------------------------------------------------------------------- targets
    out += ["## Targets", "",
            f"Judged on {titles[primary]}, as the issue states them; the margin is positive when a target is met.", ""]
    out += _table(["Target", "Goal", "Measured", "Verdict", "Margin"],
                  [[t.name, t.goal, t.measured, _verdict(t.met), t.margin] for t in targets])

    # -------------------------------------------------------------------------------------- raw
    out += ["## Raw ONNX Runtime throughput", "",
            "Images per second (milliseconds per batch) through the server's own runtime class "
            "(`service.runtime.OnnxModelRuntime`: one intra-op thread per core, no spinning, full graph "
            "optimisation), on random inputs, median over the timed runs.", ""]
    sizes = sorted({row.batch_size for raw in results.raw for row in raw.batches})
    rows = []
    for raw in results.raw:
        cells = [raw.title]
        for size in sizes:
            row = raw.batch(size)
            cells.append(f"{row.images_per_second:.1f} ({row.ms_per_batch:.1f} ms)" if row else "—")
        cells.append(f"{raw.best.images_per_second:.1f} (batch {raw.best.batch_size})")
        rows.append(cells)
    out += _table(["Model", *[f"batch {s}" for s in sizes], "best"], rows)
    for raw in results.raw:
        if raw.default_session_batch1:
            out += [f"With a default `InferenceSession` (as the naive server has it), {raw.title} at batch 1: "
                    f"{raw.default_session_batch1.images_per_second:.1f} img/s "
                    f"({raw.default_session_batch1.ms_per_batch:.1f} ms).", ""]

    # -------------------------------------------------------------------------------------- preprocessing
    out += ["## Preprocessing cost per image", "",
            "Milliseconds per image, one thread, through the server's own `service.preprocess.preprocess_image` "
            "(decode, resize, centre crop, normalise); mean over the photos of each photo's median. Draft: JPEG "
            "draft decoding (on by default in the server) where it applies.", ""]
    out += _table(["Model input", "Image", "Full decode (ms)", "Draft (ms)", "Server pays (ms)"],
                  [[row.model_input, row.size_label, _num(row.full_decode_ms, 2), _num(row.draft_ms, 2),
                    _num(row.server_ms, 2)] for row in results.preprocessing])

    # -------------------------------------------------------------------------------------- ceiling
    out += ["## Ceiling", "",
            "Ceiling = 1 / (preprocessing per image / cores + inference per image at the best batch): every core "
            "busy, preprocessing spread over all of them, inference at its most efficient batch, nothing else.", ""]
    out += _table(["Model", "Image", "Preprocessing (ms)", "Inference per image (ms, batch)", "Cores",
                   "Ceiling (img/s)", "Without draft (img/s)"],
                  [[titles[row.model], row.size_label, _num(row.preprocess_ms, 2),
                    f"{row.inference_ms_per_image:.2f} (batch {row.best_batch})", str(row.cores),
                    _num(row.images_per_second), _num(row.without_draft)] for row in results.ceilings])

    # -------------------------------------------------------------------------------------- closed loop
    out += ["## Closed-loop load", "",
            "N clients, each sending its next request (one image, multipart) when its previous answer arrives. "
            "Latencies are of successful answers; errors count requests sent in the window by outcome (503 is the "
            "server refusing at a full queue; a refused client waits its Retry-After, capped at 1 s). CPU columns are "
            "cores' worth of CPU over the window (1.0 = one core busy).", ""]
    rows = []
    for row in results.load:
        ceiling_row = results.ceiling_for(row.model, row.size)
        naive_row = results.saturation("naive", row.model, row.size) if row.server == "ours" else None
        rows.append([
            servers[row.server], titles[row.model], row.size_label, str(row.concurrency), _num(row.throughput),
            _num(row.p50_ms), _num(row.p95_ms), _num(row.p99_ms), _errors(row),
            _num(row.server_cpu_cores, 2), _num(row.client_cpu_cores, 2),
            _num(_ratio(row.throughput, ceiling_row.images_per_second if ceiling_row else None), 2),
            _num(_ratio(row.throughput, naive_row.throughput if naive_row else None), 2),
        ])
    out += _table(["Server", "Model", "Image", "Conc.", "Throughput (img/s)", "p50 (ms)", "p95 (ms)", "p99 (ms)",
                   "Errors", "Server CPU", "Client CPU", "/ceiling", "/naive best"], rows)
    refusals = [row for row in results.load if row.rejected_p99_ms is not None]
    if refusals:
        out += ["Latency of the 503 refusals:", ""]
        out += _table(["Server", "Model", "Image", "Conc.", "Refused", "p50 (ms)", "p99 (ms)", "max (ms)"],
                      [[servers[row.server], titles[row.model], row.size_label, str(row.concurrency),
                        str(row.statuses.get("503", 0)), _num(row.rejected_p50_ms), _num(row.rejected_p99_ms),
                        _num(row.rejected_max_ms)]
                       for row in refusals])

    # -------------------------------------------------------------------------------------- saturation summary
    out += ["## Ours against the ceiling and the naive server", "",
            "Saturation throughput is the best of the closed-loop runs at that image size.", ""]
    rows = []
    for ceiling_row in results.ceilings:
        ours_row = results.saturation("ours", ceiling_row.model, ceiling_row.size)
        naive_row = results.saturation("naive", ceiling_row.model, ceiling_row.size)
        if ours_row is None and naive_row is None:
            continue
        rows.append([titles[ceiling_row.model], ceiling_row.size_label, _num(ceiling_row.images_per_second),
                     _num(ours_row.throughput if ours_row else None), _num(naive_row.throughput if naive_row else None),
                     _num(_ratio(ours_row.throughput if ours_row else None, ceiling_row.images_per_second), 2),
                     _num(_ratio(naive_row.throughput if naive_row else None, ceiling_row.images_per_second), 2),
                     _num(_ratio(ours_row.throughput if ours_row else None,
                                 naive_row.throughput if naive_row else None), 2)])
    out += _table(["Model", "Image", "Ceiling", "Ours", "Naive", "Ours/ceiling", "Naive/ceiling", "Ours/naive"], rows)

    # -------------------------------------------------------------------------------------- open loop
    out += ["## Open-loop load (Poisson arrivals)", "",
            "Requests arrive as a Poisson process at a fixed rate whatever the server does, as in MLPerf's Server "
            "scenario; latency counts from each request's scheduled arrival. A rate passes when the p99 latency, "
            "with every failed request counted as infinitely slow, stays under the limit. The search tries 0.95 and "
            "0.3 of the closed-loop saturation throughput, halves the lower rate (up to 3 times) until one passes, "
            "then bisects.", ""]
    for search in results.rate_searches:
        best = search.best_rate
        out += [f"**{servers[search.server]}, {titles[search.model]}, 500x375 JPEG**: highest passing rate "
                + (f"**{best:.1f} req/s**" if best else "none") + f" (p99 limit {search.p99_limit_ms:.0f} ms).", ""]
        out += _table(["Offered (req/s)", "Answered (img/s)", "p50 (ms)", "p99 (ms)", "Failed / sent", "Failures",
                       "Client CPU", "Passed"],
                      [[_num(t.rate), _num(t.throughput), _num(t.p50_ms), _num(t.p99_ms), f"{t.failures} / {t.requests}",
                        ", ".join(f"{k}: {v}" for k, v in t.statuses.items()) or "none",
                        _num(t.client_cpu_cores, 2), "yes" if t.passed else "no"] for t in search.trials])

    # -------------------------------------------------------------------------------------- resources
    out += ["## Server resources", "",
            "Idle CPU: the server process's CPU time (all threads, /proc/PID/stat) over an idle period right after "
            "its load runs, in percent of one core. RSS from /proc/PID/status at the end of its runs.", ""]
    out += _table(["Server", "Model", "Ready after (s)", "Idle CPU (% of a core)", "RSS (MiB)", "Peak RSS (MiB)"],
                  [[servers[row.server], titles[row.model], _num(row.ready_after_s), _num(row.idle_cpu_percent, 2),
                    _num(row.rss_mb, 0), _num(row.peak_rss_mb, 0)] for row in results.resources])

    # -------------------------------------------------------------------------------------- INT8
    if results.accuracy:
        out += ["## INT8 accuracy", "",
                "Top-1 on the Fashion-MNIST test split, preprocessed by the server's own `image_to_tensor`, run "
                "through `OnnxModelRuntime`.", ""]
        out += _table(["Model", "Test images", "Top-1 accuracy"],
                      [[row.title, f"{row.images:,}", _pct(row.test_accuracy, 2)] for row in results.accuracy])

    # -------------------------------------------------------------------------------------- profile
    for profile in results.profiles:
        out += [f"## Profile: {servers[profile.server]}, {titles[profile.model]}, "
                f"{SIZES_BY_KEY[profile.size].label}, "
                f"concurrency {profile.concurrency}", "",
                f"py-spy, {profile.seconds:g} s at 100 Hz during a separate run ({profile.throughput:.1f} img/s while "
                f"sampled), {profile.samples} samples of running Python threads. Cores: a thread group's samples as "
                "cores' worth of busy time. ONNX Runtime's own pool threads are native and not sampled; the batcher "
                "thread that calls it is.", ""]
        out += _table(["Thread group", "Cores", "Share", "Innermost frames (share of the group)"],
                      [[group.thread_group, _num(group.cores, 2), _pct(group.share, 0),
                        "; ".join(f"{frame} {100 * share:.0f}%" for frame, share in group.top_frames)]
                       for group in profile.groups])

    # -------------------------------------------------------------------------------------- method
    out += ["## Method", "",
            "- Models: torchvision ResNet-50 and ResNet-18 exported by `python -m models.export --torchvision ARCH` "
            "(random weights: speed does not depend on them), INT8 with `--quantize int8`; the bundled Fashion-MNIST "
            "ResNet-20 (its INT8 from `models.export --checkpoint ... --quantize int8`, or from the bundled file when "
            "the checkpoint is absent).",
            f"- Images: scikit-image photos ({results.settings.get('photos', '')}) fitted and encoded as a 500x375 "
            "JPEG, a 1920x1080 JPEG, a 4000x3000 JPEG (upscaled), quality 90, and a 1000x1000 PNG; a load run cycles "
            "through the photos.",
            f"- Ours: `{results.settings.get('ours', '')}`, every other setting at its default.",
            f"- Naive: `{results.settings.get('naive', '')}` (bench/naive_server.py): a FastAPI `def` endpoint, one image "
            "per request at batch 1, PIL decoding at full size, a default `InferenceSession`, no queue limit.",
            f"- Load: {results.settings.get('load', '')}. The load generator (bench/loadgen.py) is a raw-asyncio "
            "HTTP/1.1 client with keep-alive that reports its own CPU; it runs on the same cores as the server.",
            "- Percentiles are nearest-rank over the requests sent in the measurement window.",
            "- The ceiling leaves out HTTP handling and the load generator, which share the same cores; a server "
            "can still measure slightly above it because timings drift by a few percent on this shared machine.",
            ]
    raw = results.raw_for(primary)
    if results.c1_reference_ms and raw and raw.batch(1):
        out.append(f"- Drift within this run: {titles[primary]} batch-1 inference took {raw.batch(1).ms_per_batch:.1f} ms "
                   f"in the raw measurement and {results.c1_reference_ms[1]:.1f} ms when timed again minutes later.")
    out += [f"- Note: {note}" for note in results.notes]
    out.append("")
    return "\n".join(out)
