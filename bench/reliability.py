"""``python -m bench.reliability``: the server under bursts and attacks, measured and judged; writes
docs/RELIABILITY.md (keeping its soak section, which ``python -m bench.soak`` writes).

    python -m bench.reliability                  # about 6 minutes on 2 cores (exports ResNet-50 once if missing)
    python -m bench.reliability --quick --output /tmp/RELIABILITY.md     # smoke run: bundled model, short

What it runs, each on a fresh server started as `python -m service` with the Kubernetes manifest's settings:
1. bursts: 5x the saturation rate for 10 s of open-loop (Poisson) requests, ResNet-50 with one image per request
   and the bundled model with 16; saturation is measured first in the same run;
2. 32 concurrent uploads at the upload limit (real 30 MB PNGs), RSS read from /proc, with the server's own
   allocator setting and with glibc's large mmap threshold for comparison;
3. 500 slow sockets beside valid clients, against the same clients alone;
4. every kind of slow or incomplete request at the default deadlines, and when the server closed it;
5. the 16-bit PNG whose decode used to cost 1.3 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bench import attacks, loadgen
from bench.results import Environment
from bench.run import environment
from bench.servers import OURS, RunningServer, process_memory
from bench.workload import DEFAULT_CACHE_DIR, REPO_ROOT, ensure_images, ensure_model, model_case

logger = logging.getLogger("bench")

MANIFEST_ARGS = (
    "--max-batch-size",
    "32",
    "--max-batch-delay-ms",
    "5",
    "--max-queue-size",
    "256",
    "--max-queue-wait-ms",
    "1500",
    "--request-timeout-s",
    "10",
    "--max-connections",
    "256",
)
"""The settings of deploy/k8s/kustomization.yaml."""
WAIT_BOUND_S = 1.5
BURST_FACTOR = 5.0
REFUSAL_P99_MS = 50.0
GOODPUT_SHARE = 0.90
UPLOAD_PEAK_MB = 400.0
UPLOAD_AFTER_MB = 100.0
SLOW_SOCKET_P99_MS = 20.0
SOAK_MARKER = "<!-- soak -->"


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _metric(url: str, name: str, model: str | None = None) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == name and (model is None or sample.labels.get("model") == model):
                total += sample.value
    return total


@dataclass
class Burst:
    model: str
    images_per_request: int
    saturation_img_s: float
    offered_req_s: float
    window_s: float
    sent: int
    statuses: dict[str, int]
    accepted_p50_ms: float
    accepted_p99_ms: float
    refused_p50_ms: float
    refused_p99_ms: float
    refused_max_ms: float
    goodput_img_s: float
    decoded: int
    inferred: int
    decode_pool: int
    batch_ms: float
    """One full batch at the measured seconds per image: what the wait bound allows beyond itself."""
    saturation_cpu: tuple[float, float | None] = (math.nan, None)
    """(load generator, server) CPU in cores while saturated: both share this machine's cores."""
    burst_cpu: tuple[float, float | None] = (math.nan, None)
    """The same during the burst, where the load generator sends five times the requests."""


@dataclass
class Uploads:
    allocator: str
    upload_mb: float
    statuses: dict[str, int]
    idle_mb: float
    peak_mb: float
    after_mb: float
    idle_pss_mb: float = math.nan
    """The idle tree's PSS: what DEPLOY.md's memory arithmetic starts from (shared pages counted once)."""


@dataclass
class SlowSockets:
    sockets: int
    baseline_p99_ms: float
    with_sockets_p99_ms: float
    baseline_p50_ms: float
    with_sockets_p50_ms: float
    closed_by_server: int
    valid_statuses: dict[str, int]


@dataclass
class Reliability:
    environment: Environment
    bursts: list[Burst] = field(default_factory=list)
    uploads: list[Uploads] = field(default_factory=list)
    slow: SlowSockets | None = None
    deadlines: list[attacks.Closed] = field(default_factory=list)
    deadline_limits_s: dict[str, float] = field(default_factory=dict)
    sixteen_bit: dict[str, float] = field(default_factory=dict)


def _statuses(run: loadgen.LoadRun) -> dict[str, int]:
    return {loadgen.STATUS_NAMES.get(code, str(code)): count for code, count in sorted(run.status_counts().items())}


def measure_burst(
    model_key: str, images_per_request: int, cache_dir: Path, *, seconds: float, saturation_s: float
) -> Burst:
    case = ensure_model(model_case(model_key, cache_dir))
    photos = ensure_images(cache_dir)["small-jpeg"]
    log = cache_dir / "logs" / f"reliability-burst-{model_key}.log"
    with RunningServer(OURS, case, log, MANIFEST_ARGS).wait_ready().wait_settled() as server:
        files = [(p.name, p.data, p.size.content_type) for p in photos]
        requests = [
            loadgen.multipart_request_files(
                "127.0.0.1",
                server.port,
                server.classify_path,
                [files[(start + i) % len(files)] for i in range(images_per_request)],
            )
            for start in range(len(files))
        ]
        concurrency = max(4, 32 // images_per_request * 2)
        logger.info("burst %s: saturation, closed loop at concurrency %d", model_key, concurrency)
        saturated = asyncio.run(
            loadgen.closed_loop(
                "127.0.0.1",
                server.port,
                requests,
                concurrency=concurrency,
                warmup_s=1.0,
                duration_s=saturation_s,
                server_cpu=server.cpu_seconds,
            )
        )
        saturation = saturated.throughput * images_per_request
        time.sleep(1.0)
        url = f"http://127.0.0.1:{server.port}"
        decoded0 = _metric(url, "resnet_serve_images_decoded_total", case.name)
        inferred0 = _metric(url, "resnet_serve_images_inferred_total", case.name)
        rate = BURST_FACTOR * saturation / images_per_request
        logger.info(
            "burst %s: %.1f img/s saturation, offering %.1f req/s for %g s", model_key, saturation, rate, seconds
        )
        run = asyncio.run(
            loadgen.open_loop(
                "127.0.0.1",
                server.port,
                requests,
                rate=rate,
                warmup_s=0.0,
                duration_s=seconds,
                max_connections=2048,
                timeout_s=60.0,
                server_cpu=server.cpu_seconds,
            )
        )
        time.sleep(1.0)
        decoded = _metric(url, "resnet_serve_images_decoded_total", case.name) - decoded0
        inferred = _metric(url, "resnet_serve_images_inferred_total", case.name) - inferred0
        described = httpx.get(f"{url}/v1/models/{case.name}", timeout=30).json()["batching"]
        batch_ms = _ms((described["seconds_per_image"] or 0.0) * described["max_batch_size"])
        decode_pool = server_decode_threads(server)
    accepted = run.latencies(200)
    refused = run.latencies(503)
    return Burst(
        model=case.title,
        images_per_request=images_per_request,
        saturation_img_s=saturation,
        offered_req_s=rate,
        window_s=seconds,
        sent=len(run.in_window),
        statuses=_statuses(run),
        accepted_p50_ms=_ms(loadgen.percentile(accepted, 0.5)),
        accepted_p99_ms=_ms(loadgen.percentile(accepted, 0.99)),
        refused_p50_ms=_ms(loadgen.percentile(refused, 0.5)),
        refused_p99_ms=_ms(loadgen.percentile(refused, 0.99)),
        refused_max_ms=_ms(max(refused, default=math.nan)),
        goodput_img_s=run.throughput * images_per_request,
        decoded=int(decoded),
        inferred=int(inferred),
        decode_pool=decode_pool,
        batch_ms=batch_ms,
        saturation_cpu=(saturated.client_cpu_fraction, saturated.server_cpu_fraction),
        burst_cpu=(run.client_cpu_fraction, run.server_cpu_fraction),
    )


def _cpu_pair(cpu: tuple[float, float | None]) -> str:
    client, server = cpu
    return f"{client:.2f} / {'?' if server is None else f'{server:.2f}'}"


def server_decode_threads(server: RunningServer) -> int:
    """The server's decode pool size: its --decode-threads default, the CPUs the process may use."""
    from service.runtime import available_cpus

    return available_cpus()


def measure_uploads(cache_dir: Path, *, allocator_env: dict[str, str], label: str, count: int) -> Uploads:
    data_path = cache_dir / "images" / "noise-30mb.png"
    if not data_path.is_file():
        data_path.parent.mkdir(parents=True, exist_ok=True)
        data_path.write_bytes(attacks.noise_png(30 * 2**20))
    data = data_path.read_bytes()
    case = ensure_model(model_case("bundled", cache_dir))
    log = cache_dir / "logs" / f"reliability-uploads-{label}.log"
    with RunningServer(OURS, case, log, MANIFEST_ARGS, env=allocator_env).wait_ready().wait_settled() as server:
        request = attacks.raw_request("127.0.0.1", server.port, server.classify_path, data, "image/png")
        time.sleep(1.0)
        idle_memory = process_memory(server.pid)
        idle = idle_memory.rss_bytes

        async def all_at_once() -> list[loadgen.Response]:
            async def one() -> loadgen.Response:
                connection = loadgen.HttpConnection("127.0.0.1", server.port)
                try:
                    return await connection.send(request)
                finally:
                    connection.close()

            return await asyncio.gather(*(one() for _ in range(count)))

        logger.info("uploads (%s): %d concurrent uploads of %.1f MB", label, count, len(data) / 1e6)
        responses = asyncio.run(all_at_once())
        peak = process_memory(server.pid).peak_rss_bytes
        after = _settled_rss(server.pid, idle)
    statuses: dict[str, int] = {}
    for response in responses:
        statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
    return Uploads(
        label,
        len(data) / 2**20,
        dict(sorted(statuses.items())),
        idle / 1e6,
        peak / 1e6,
        after / 1e6,
        idle_memory.pss_bytes / 1e6,
    )


def _settled_rss(pid: int, idle: int, limit_s: float = 10.0) -> int:
    """RSS once it stops falling (or after `limit_s`)."""
    give_up = time.monotonic() + limit_s
    previous = process_memory(pid).rss_bytes
    while time.monotonic() < give_up:
        time.sleep(1.0)
        current = process_memory(pid).rss_bytes
        if current >= previous or current <= idle:
            return current
        previous = current
    return process_memory(pid).rss_bytes


def measure_slow_sockets(cache_dir: Path, *, sockets: int, seconds: float) -> SlowSockets:
    case = ensure_model(model_case("bundled", cache_dir))
    photo = ensure_images(cache_dir)["small-jpeg"][0]
    log = cache_dir / "logs" / "reliability-slow-sockets.log"
    # The manifest caps connections at 256; this measures the server's default cap of 1000, above the sockets.
    with (
        RunningServer(OURS, case, log, (*MANIFEST_ARGS, "--max-connections", "1000"))
        .wait_ready()
        .wait_settled() as server
    ):
        request = loadgen.multipart_request(
            "127.0.0.1", server.port, server.classify_path, photo.data, photo.name, photo.size.content_type
        )

        async def valid_clients() -> loadgen.LoadRun:
            return await loadgen.closed_loop(
                "127.0.0.1", server.port, [request], concurrency=4, warmup_s=1.0, duration_s=seconds
            )

        logger.info("slow sockets: baseline")
        baseline = asyncio.run(valid_clients())

        async def beside_slow_sockets() -> tuple[loadgen.LoadRun, int]:
            stop = asyncio.Event()
            holder = asyncio.ensure_future(attacks.hold_slow_sockets("127.0.0.1", server.port, sockets, stop))
            await asyncio.sleep(2.0)  # every slow socket open before the clients start
            run = await valid_clients()
            stop.set()
            return run, await holder

        logger.info("slow sockets: %d slow sockets beside the same clients", sockets)
        loaded, closed = asyncio.run(beside_slow_sockets())
    return SlowSockets(
        sockets=sockets,
        baseline_p50_ms=_ms(loadgen.percentile(baseline.latencies(200), 0.5)),
        baseline_p99_ms=_ms(loadgen.percentile(baseline.latencies(200), 0.99)),
        with_sockets_p50_ms=_ms(loadgen.percentile(loaded.latencies(200), 0.5)),
        with_sockets_p99_ms=_ms(loadgen.percentile(loaded.latencies(200), 0.99)),
        closed_by_server=closed,
        valid_statuses=_statuses(loaded),
    )


def measure_deadlines(cache_dir: Path, results: Reliability) -> None:
    from service.config import Settings

    defaults = Settings()
    results.deadline_limits_s = {
        "idle": defaults.header_timeout_s,
        "slow-head": defaults.header_timeout_s,
        "slow-body": defaults.body_timeout_s,
        "short-body": defaults.body_timeout_s,
    }
    case = ensure_model(model_case("bundled", cache_dir))
    log = cache_dir / "logs" / "reliability-deadlines.log"
    with RunningServer(OURS, case, log, MANIFEST_ARGS).wait_ready().wait_settled() as server:

        async def all_kinds() -> list[attacks.Closed]:
            limit = max(results.deadline_limits_s.values()) + 30
            return list(
                await asyncio.gather(
                    *(
                        attacks.slow_request("127.0.0.1", server.port, kind, limit_s=limit)
                        for kind in results.deadline_limits_s
                    )
                )
            )

        logger.info("deadlines: one connection of each kind, up to %g s", defaults.body_timeout_s)
        results.deadlines = asyncio.run(all_kinds())


def measure_sixteen_bit(cache_dir: Path, results: Reliability) -> None:
    data = attacks.sixteen_bit_png()
    case = ensure_model(model_case("bundled", cache_dir))
    log = cache_dir / "logs" / "reliability-16bit.log"
    with RunningServer(OURS, case, log, MANIFEST_ARGS).wait_ready().wait_settled() as server:
        before = process_memory(server.pid)
        started = time.monotonic()
        response = httpx.post(
            f"http://127.0.0.1:{server.port}{server.classify_path}",
            content=data,
            headers={"Content-Type": "image/png"},
            timeout=120,
        )
        seconds = time.monotonic() - started
        after = process_memory(server.pid)
    results.sixteen_bit = {
        "wire_kb": len(data) / 1000,
        "status": response.status_code,
        "seconds": seconds,
        "peak_growth_mb": (after.peak_rss_bytes - before.rss_bytes) / 2**20,
    }


# ---------------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None


def verdicts(results: Reliability) -> list[Verdict]:
    out: list[Verdict] = []
    for burst in results.bursts:
        bound = WAIT_BOUND_S * 1000 + burst.batch_ms
        out.append(
            Verdict(
                f"{burst.model}, {burst.images_per_request} img/request: accepted p99 ≤ wait bound + one "
                f"batch ({bound:.0f} ms)",
                f"{burst.accepted_p99_ms:.0f} ms",
                burst.accepted_p99_ms <= bound,
            )
        )
        out.append(
            Verdict(
                f"{burst.model}: refusals p99 ≤ {REFUSAL_P99_MS:g} ms",
                f"{burst.refused_p99_ms:.1f} ms (max {burst.refused_max_ms:.1f})",
                None if math.isnan(burst.refused_p99_ms) else burst.refused_p99_ms <= REFUSAL_P99_MS,
            )
        )
        share = burst.goodput_img_s / burst.saturation_img_s if burst.saturation_img_s else math.nan
        out.append(
            Verdict(
                f"{burst.model}: goodput ≥ {GOODPUT_SHARE:.0%} of saturation",
                f"{burst.goodput_img_s:.1f} of {burst.saturation_img_s:.1f} img/s = {share:.2f}",
                share >= GOODPUT_SHARE,
            )
        )
        out.append(
            Verdict(
                f"{burst.model}: images decoded ≤ inferred + decode pool ({burst.decode_pool})",
                f"{burst.decoded} decoded, {burst.inferred} inferred",
                burst.decoded <= burst.inferred + burst.decode_pool,
            )
        )
        bad = {k: v for k, v in burst.statuses.items() if k.startswith("5") and k not in ("503", "504")}
        out.append(
            Verdict(
                f"{burst.model}: no 5xx but 503/504", ", ".join(f"{k}: {v}" for k, v in bad.items()) or "none", not bad
            )
        )
    own = next((u for u in results.uploads if u.allocator == "server default"), None)
    if own is not None:
        out.append(
            Verdict(
                f"32 concurrent uploads at the limit: peak RSS ≤ idle + {UPLOAD_PEAK_MB:g} MB",
                f"+{own.peak_mb - own.idle_mb:.0f} MB",
                own.peak_mb - own.idle_mb <= UPLOAD_PEAK_MB,
            )
        )
        out.append(
            Verdict(
                f"… and afterwards ≤ idle + {UPLOAD_AFTER_MB:g} MB",
                f"+{own.after_mb - own.idle_mb:.0f} MB",
                own.after_mb - own.idle_mb <= UPLOAD_AFTER_MB,
            )
        )
    if results.slow is not None:
        cost = results.slow.with_sockets_p99_ms - results.slow.baseline_p99_ms
        out.append(
            Verdict(
                f"{results.slow.sockets} slow sockets cost valid clients < {SLOW_SOCKET_P99_MS:g} ms of p99",
                f"{cost:+.1f} ms ({results.slow.baseline_p99_ms:.1f} → {results.slow.with_sockets_p99_ms:.1f})",
                cost < SLOW_SOCKET_P99_MS,
            )
        )
    for closed in results.deadlines:
        limit = results.deadline_limits_s[closed.kind]
        out.append(
            Verdict(
                f"`{closed.kind}` closed within its deadline ({limit:g} s)",
                f"{closed.status or 'no answer'} after {closed.seconds:.1f} s",
                closed.seconds <= limit + 1.0 and closed.status == 408,
            )
        )
    return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def render(results: Reliability, command: str, wall_s: float) -> str:
    env = results.environment
    out = [
        "# Reliability under bursts and attacks",
        "",
        f"Written by `{command}` ({wall_s / 60:.1f} minutes) on {env.date}, commit {env.git_commit}: {env.cpu_model}, "
        f"{env.cores} cores usable, load average at start {env.load_average}. Every server ran as "
        f"`python -m service` with the Kubernetes manifest's settings (`{' '.join(MANIFEST_ARGS)}`) and every other "
        "setting at its default. Rerun the command to refresh this file; the soak section comes from "
        "`make soak` (`python -m bench.soak`).",
        "",
        "## Targets",
        "",
    ]
    out += _table(
        ["Target", "Measured", "Verdict"],
        [
            [v.target, v.measured, {True: "**met**", False: "**missed**", None: "not measured"}[v.met]]
            for v in verdicts(results)
        ],
    )
    out += [
        "## Bursts",
        "",
        f"Saturation: the best closed-loop throughput, measured first on the same server. Then requests arrive as a "
        f"Poisson process at {BURST_FACTOR:g}x that rate (in requests) for the window, whatever the server does; "
        "latency counts from each request's scheduled arrival. Goodput: images answered 200 per second within the "
        "window. Decoded and inferred: the server's own counters over the burst. CPU: cores used by the load generator "
        "and by the server (all its processes) while saturated and during the burst; both run on this machine, so "
        "what the load generator takes during the burst is taken from the model.",
        "",
    ]
    out += _table(
        [
            "Model",
            "Images / request",
            "Saturation (img/s)",
            "Offered (req/s)",
            "Sent",
            "Answers",
            "Accepted p50 / p99 (ms)",
            "Refused p50 / p99 / max (ms)",
            "Goodput (img/s)",
            "Decoded",
            "Inferred",
            "CPU saturated: client / server",
            "CPU burst: client / server",
        ],
        [
            [
                b.model,
                str(b.images_per_request),
                f"{b.saturation_img_s:.1f}",
                f"{b.offered_req_s:.1f}",
                str(b.sent),
                ", ".join(f"{k}: {v}" for k, v in b.statuses.items()),
                f"{b.accepted_p50_ms:.0f} / {b.accepted_p99_ms:.0f}",
                f"{b.refused_p50_ms:.1f} / {b.refused_p99_ms:.1f} / {b.refused_max_ms:.1f}",
                f"{b.goodput_img_s:.1f}",
                str(b.decoded),
                str(b.inferred),
                _cpu_pair(b.saturation_cpu),
                _cpu_pair(b.burst_cpu),
            ]
            for b in results.bursts
        ],
    )
    out += [
        "## Concurrent uploads at the limit",
        "",
        "32 clients each send a real PNG of random pixels just under the 32 MiB upload limit at once, to the "
        "bundled model. RSS from /proc/PID/status: before, its high-water mark, and once it stops falling. "
        "`server default` is the server as shipped (it fixes glibc's mmap threshold at 4 MiB); `glibc 32 MiB "
        "threshold` starts it with `MALLOC_MMAP_THRESHOLD_=33554432`, which glibc's own dynamic threshold rises "
        "to after large frees. RSS is summed over the supervisor and its workers, so pages the forked workers "
        "share with it count once per process; idle PSS counts each page once, as the pod's memory limit does.",
        "",
    ]
    out += _table(
        ["Allocator", "Upload (MiB)", "Answers", "Idle PSS (MB)", "Idle (MB)", "Peak (MB)", "After (MB)"],
        [
            [
                u.allocator,
                f"{u.upload_mb:.1f}",
                ", ".join(f"{k}: {v}" for k, v in u.statuses.items()),
                f"{u.idle_pss_mb:.0f}",
                f"{u.idle_mb:.0f}",
                f"{u.peak_mb:.0f} (+{u.peak_mb - u.idle_mb:.0f})",
                f"{u.after_mb:.0f} (+{u.after_mb - u.idle_mb:.0f})",
            ]
            for u in results.uploads
        ],
    )
    if results.slow is not None:
        s = results.slow
        out += [
            "## Slow sockets beside valid clients",
            "",
            f"Four valid clients in a closed loop (one 500x375 JPEG per request, bundled model, the server's default "
            f"`--max-connections 1000`), alone and then "
            f"beside {s.sockets} connections that send a request head one byte a second and are reopened as soon "
            f"as the server closes them ({s.closed_by_server} were closed by the header deadline during the run).",
            "",
        ]
        out += _table(
            ["", "p50 (ms)", "p99 (ms)"],
            [
                ["alone", f"{s.baseline_p50_ms:.1f}", f"{s.baseline_p99_ms:.1f}"],
                [f"beside {s.sockets} slow sockets", f"{s.with_sockets_p50_ms:.1f}", f"{s.with_sockets_p99_ms:.1f}"],
            ],
        )
    if results.deadlines:
        out += [
            "## Slow and incomplete requests",
            "",
            "One connection of each kind at the default deadlines; the time is from opening the connection to the "
            "server closing it.",
            "",
        ]
        out += _table(
            ["Kind", "Deadline (s)", "Answer", "Closed after (s)"],
            [
                [c.kind, f"{results.deadline_limits_s[c.kind]:g}", str(c.status or "none"), f"{c.seconds:.1f}"]
                for c in results.deadlines
            ],
        )
    if results.sixteen_bit:
        b = results.sixteen_bit
        out += [
            "## The 16-bit PNG",
            "",
            f"A 7000x7000 16-bit grey PNG of {b['wire_kb']:.0f} kB: answered {b['status']:g} after "
            f"{b['seconds']:.2f} s; the server's peak RSS grew by {b['peak_growth_mb']:.0f} MB (it was 1,276 MB "
            "before the image was resized in its own mode).",
            "",
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: bundled model only, short, fewer clients")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "RELIABILITY.md")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    started = time.monotonic()
    command = "python -m bench.reliability" + (" --quick" if args.quick else "")
    results = Reliability(environment(_PlanLike("reliability"), command))
    burst_s, saturation_s = (2.0, 2.0) if args.quick else (10.0, 8.0)
    cases = [("bundled", 16)] if args.quick else [("resnet50", 1), ("bundled", 16)]
    for key, per_request in cases:
        results.bursts.append(
            measure_burst(key, per_request, args.cache_dir, seconds=burst_s, saturation_s=saturation_s)
        )
    count = 8 if args.quick else 32
    results.uploads.append(measure_uploads(args.cache_dir, allocator_env={}, label="server default", count=count))
    results.uploads.append(
        measure_uploads(
            args.cache_dir,
            allocator_env={"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)},
            label="glibc 32 MiB threshold",
            count=count,
        )
    )
    results.slow = measure_slow_sockets(
        args.cache_dir, sockets=50 if args.quick else 500, seconds=2.0 if args.quick else 10.0
    )
    if not args.quick:
        measure_deadlines(args.cache_dir, results)
    measure_sixteen_bit(args.cache_dir, results)
    text = render(results, command, time.monotonic() - started)
    previous = args.output.read_text() if args.output.is_file() else ""
    if SOAK_MARKER in previous:
        text += "\n" + previous[previous.index(SOAK_MARKER) :]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    json_path = args.cache_dir / f"reliability-{'quick' if args.quick else 'full'}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    import json

    json_path.write_text(json.dumps(asdict(results), indent=1, default=str))
    for verdict in verdicts(results):
        print(
            f"  {verdict.target}: {verdict.measured} -> "
            f"{ {True: 'met', False: 'MISSED', None: 'not measured'}[verdict.met] }"
        )
    print(f"wrote {args.output} and {json_path}")
    return 0


@dataclass(frozen=True)
class _PlanLike:
    mode: str


if __name__ == "__main__":
    sys.exit(main())
