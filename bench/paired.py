r"""``python -m bench.paired``: our server against a baseline, side by side in alternating rounds, as ratios.

    python -m bench.paired                          # ours vs the naive FastAPI server (make bench-quick)
    python -m bench.paired --baseline cd0350c       # ours vs ours at an earlier commit (a paired comparison)
    python -m bench.paired --baseline granian --ours-args="--workers 1" --models bundled
                                                    # our app under granian instead of uvicorn, one worker each
    python -m bench.paired --models resnet50 --concurrency 1,8,32 --rounds 5 --seconds 10

    # What the operators' features cost (docs/DEPLOY.md, "What the features cost"):
    python -m bench.paired --baseline cea1f06               # every feature off, against the commit before them
    python -m bench.paired --baseline HEAD                  # nothing differs: the noise of the machine
    python -m bench.paired --baseline HEAD --tls ours       # TLS on ours, plain HTTP on the same commit
    python -m bench.paired --baseline HEAD --otlp-sink --ours-args=--tracing --baseline-args= \
        --ours-env OTEL_TRACES_SAMPLER=always_on            # --baseline-args= keeps the baseline untraced
    python -m bench.paired --baseline HEAD --otlp-sink --ours-args=--tracing --baseline-args= \
        --ours-env OTEL_TRACES_SAMPLER=traceidratio --ours-env OTEL_TRACES_SAMPLER_ARG=0.01

Each round starts every server in turn (the order alternates from round to round, so that drift on a shared
machine does not favour one), waits until it is ready and settled, and drives it with closed-loop clients posting
the bench's 500x375 JPEG to /v1 at each concurrency. Our server runs at its defaults, as `make serve` runs it less
the access log, unless `--ours-args` says otherwise; a baseline of ours gets the same flags unless `--baseline-args`
says otherwise, and each side's environment can be added to (`--ours-env`, `--baseline-env`). `--tls ours` (or
`both`) serves that side over HTTPS with a throwaway certificate, and its clients speak TLS to it (each keeps its
connection, as HTTP clients do). `--otlp-sink` gives the exporters of a traced side a receiver that discards what it
gets. The report is the median over rounds of each server's throughput and p50/p99, and the median of the per-round
ratios (ours / baseline), which is what to judge: both servers of a round met the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import shlex
import ssl
import statistics
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench import loadgen, workload
from bench.servers import GRANIAN, NAIVE, OURS, RunningServer, ServerKind
from bench.workload import DEFAULT_CACHE_DIR, REPO_ROOT, SIZES_BY_KEY

logger = logging.getLogger("bench")

SMALL_JPEG = "small-jpeg"


@dataclass(frozen=True)
class Contender:
    """A server under test: which implementation, from which source tree, with which flags."""

    key: str
    kind: ServerKind
    cwd: Path = REPO_ROOT
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    """Added to the server's environment (OTEL_* variables, say)."""
    tls: ssl.SSLContext | None = None
    """Served over HTTPS (its `args` name the certificate), and this context trusts it."""


@dataclass
class Point:
    """One server at one concurrency over the rounds."""

    throughputs: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    cpu_ms_per_request: list[float] = field(default_factory=list)
    """The server's CPU (all its processes and threads) per answered request: the work it does for one."""
    failures: int = 0


def _environment(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    found = []
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise SystemExit(f"environment entries are NAME=VALUE, got {pair!r}")
        found.append((name, value))
    return tuple(found)


class _Tls:
    """A throwaway CA and server certificate for a side that serves HTTPS: its flags, and its clients' context."""

    def __init__(self, cache_dir: Path) -> None:
        from tests.certificates import CertificateAuthority  # cryptography: the test and bench extras

        issued = CertificateAuthority("bench", cache_dir / "tls").issue_server()
        self.flags = ("--ssl-certfile", str(issued.certfile), "--ssl-keyfile", str(issued.keyfile))
        self.client = ssl.create_default_context(cafile=str(issued.ca_file))


class OtlpSink:
    """An OTLP/HTTP receiver on the loopback that answers every export 200 and keeps nothing: the exporters do
    their whole work (encode, send, wait for the answer) without a collector's cost landing on the machine."""

    def __init__(self) -> None:
        class Discard(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Discard)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def environment(self) -> tuple[tuple[str, str], ...]:
        return (("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _worktree(revision: str, cache_dir: Path) -> Path:
    """A checkout of `revision` beside the cache (made once, reused), whose `service` package the baseline runs."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    path = cache_dir / "worktrees" / commit[:12]
    if not (path / "service").is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=REPO_ROOT, check=True)
    return path


def _measure(
    contender: Contender,
    model: workload.ModelCase,
    requests: list[bytes],
    concurrencies: list[int],
    seconds: float,
    log_dir: Path,
) -> dict[int, loadgen.LoadRun]:
    # The baseline's own tree first on the path: `python -m service` must import its package, not ours.
    env = {"PYTHONPATH": str(contender.cwd), **dict(contender.env)}
    server = RunningServer(
        contender.kind,
        model,
        log_dir / f"{contender.key}-{model.key}.log",
        contender.args,
        env=env,
        cwd=contender.cwd,
        tls=contender.tls,
    )
    with server:
        server.wait_ready().wait_settled()
        path = server.classify_path if contender.kind is OURS else f"/v1/models/{model.name}/classify"
        runs = {}
        for concurrency in concurrencies:
            prepared = [
                loadgen.multipart_request("127.0.0.1", server.port, path, image, "image.jpg", "image/jpeg")
                for image in requests
            ]
            runs[concurrency] = asyncio.run(
                loadgen.closed_loop(
                    "127.0.0.1",
                    server.port,
                    prepared,
                    concurrency=concurrency,
                    warmup_s=min(2.0, seconds / 3),
                    duration_s=seconds,
                    server_cpu=server.cpu_seconds,
                    tls=contender.tls,
                )
            )
        return runs


def run(
    contenders: tuple[Contender, Contender],
    models: list[str],
    concurrencies: list[int],
    rounds: int,
    seconds: float,
    cache_dir: Path,
) -> str:
    images = workload.ensure_images(cache_dir, sizes=(SIZES_BY_KEY[SMALL_JPEG],))[SMALL_JPEG]
    lines = [
        f"# Paired: {contenders[0].key} / {contenders[1].key}",
        "",
        f"`python -m bench.paired {shlex.join(sys.argv[1:])}`: {rounds} rounds, {seconds:g} s per point, closed-loop "
        f"clients posting a 500x375 JPEG to /v1; medians over rounds.",
        "",
        "| model | concurrency | ours req/s | baseline req/s | ratio (median of rounds) | ratios by round "
        "| p50 ms ours / baseline | p99 ms ours / baseline | server CPU ms per request ours / baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in models:
        model = workload.ensure_model(workload.model_case(key, cache_dir))
        points = {(c.key, n): Point() for c in contenders for n in concurrencies}
        for round_index in range(rounds):
            order = contenders if round_index % 2 == 0 else contenders[::-1]
            for contender in order:
                logger.info("round %d/%d: %s on %s", round_index + 1, rounds, contender.key, key)
                runs = _measure(
                    contender, model, [image.data for image in images], concurrencies, seconds, cache_dir / "paired"
                )
                for concurrency, load in runs.items():
                    point = points[(contender.key, concurrency)]
                    point.throughputs.append(load.throughput)
                    latencies = load.latencies()
                    point.p50s.append(loadgen.percentile(latencies, 0.50) * 1000)
                    point.p99s.append(loadgen.percentile(latencies, 0.99) * 1000)
                    answered = load.throughput * load.window_s
                    if load.server_cpu_s is not None and answered:
                        point.cpu_ms_per_request.append(load.server_cpu_s / answered * 1000)
                    point.failures += sum(count for status, count in load.status_counts().items() if status != 200)
        for concurrency in concurrencies:
            ours, base = points[(contenders[0].key, concurrency)], points[(contenders[1].key, concurrency)]
            ratios = [a / b if b else float("nan") for a, b in zip(ours.throughputs, base.throughputs, strict=True)]
            failed = f" ({ours.failures} / {base.failures} failed)" if ours.failures or base.failures else ""
            lines.append(
                f"| {model.title} | {concurrency} | {statistics.median(ours.throughputs):.1f} | "
                f"{statistics.median(base.throughputs):.1f} | **{statistics.median(ratios):.3f}**{failed} | "
                f"{', '.join(f'{r:.3f}' for r in ratios)} | {statistics.median(ours.p50s):.1f} / "
                f"{statistics.median(base.p50s):.1f} | {statistics.median(ours.p99s):.1f} / "
                f"{statistics.median(base.p99s):.1f} | {_median(ours.cpu_ms_per_request):.2f} / "
                f"{_median(base.cpu_ms_per_request):.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.paired",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="REVISION",
        help="compare with our server at this git revision, or with 'granian': our app at this commit served by "
        "granian, one worker (pip install granian); default: the naive FastAPI server",
    )
    parser.add_argument("--models", default="resnet50,bundled", help="comma-separated (default: resnet50,bundled)")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated client counts (default: 1,32)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point (default: 5)")
    parser.add_argument("--ours-args", default="", help="extra flags for our server (default: none, its defaults)")
    parser.add_argument(
        "--baseline-args", default=None, help="flags for a baseline of ours (default: the same as --ours-args)"
    )
    parser.add_argument("--ours-env", action="append", default=[], metavar="NAME=VALUE", help="for our server")
    parser.add_argument("--baseline-env", action="append", default=[], metavar="NAME=VALUE", help="for the baseline")
    parser.add_argument(
        "--tls",
        choices=("none", "ours", "both"),
        default="none",
        help="serve over HTTPS with a throwaway certificate, and have the clients speak TLS (default: none)",
    )
    parser.add_argument(
        "--otlp-sink",
        action="store_true",
        help="run an OTLP/HTTP receiver that accepts and discards spans, and point both sides' exporters at it",
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown table here")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    sink = OtlpSink() if args.otlp_sink else None
    sink_env = sink.environment() if sink is not None else ()
    tls = _Tls(args.cache_dir) if args.tls != "none" else None
    ours_args = tuple(shlex.split(args.ours_args))
    ours = Contender(
        "ours",
        OURS,
        args=ours_args + (tls.flags if tls is not None else ()),
        env=sink_env + _environment(args.ours_env),
        tls=tls.client if tls is not None else None,
    )
    if args.baseline is None:
        baseline = Contender("naive", NAIVE)
    elif args.baseline == "granian":
        if importlib.util.find_spec("granian") is None:
            raise SystemExit("--baseline granian needs granian, which is not a dependency: pip install granian")
        baseline = Contender("granian", GRANIAN, args=tuple(shlex.split(args.baseline_args or "")))
    else:
        baseline_tls = tls if args.tls == "both" else None
        baseline_args = ours_args if args.baseline_args is None else tuple(shlex.split(args.baseline_args))
        baseline = Contender(
            f"ours@{args.baseline}",
            OURS,
            cwd=_worktree(args.baseline, args.cache_dir),
            args=baseline_args + (baseline_tls.flags if baseline_tls is not None else ()),
            env=sink_env + _environment(args.baseline_env),
            tls=baseline_tls.client if baseline_tls is not None else None,
        )
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    concurrencies = [int(value) for value in args.concurrency.split(",")]
    try:
        report = run((ours, baseline), models, concurrencies, args.rounds, args.seconds, args.cache_dir)
    finally:
        if sink is not None:
            sink.close()
    print(report)
    if args.output is not None:
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
