"""The servers under test as subprocesses, and what /proc says about them (CPU seconds, resident memory)."""

from __future__ import annotations

import compileall
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.workload import REPO_ROOT, ModelCase

READY_LIMIT_S = 600.0
"""A guard against hanging on a server that never becomes ready (ResNet-50 warm-up takes seconds, not minutes)."""
POLL_INTERVAL_S = 0.1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ServerFailed(RuntimeError):
    """A server under test exited or never became ready; the message carries its log."""


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a server with worker processes is a tree), those alive now."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            pending += [int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            continue
    return found


def _own_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 to 17 of proc(5) (utime, stime, and those of waited-for children); `fields` starts at field 3.
    return sum(int(value) for value in fields[11:15]) / _CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of all threads of `pid` and its worker processes so far, from /proc/PID/stat
    (a retired worker's time counts once its parent has reaped it)."""
    total = 0.0
    for member in process_tree(pid):
        try:
            total += _own_cpu_seconds(member)
        except OSError:
            continue
    return total


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User plus system CPU time of each thread of `pid` and its worker processes so far, by native thread ID,
    from /proc/PID/task/TID/stat (threads that ended are gone from it)."""
    seconds = {}
    for member in process_tree(pid):
        try:
            threads = [int(tid) for tid in os.listdir(f"/proc/{member}/task")]
        except OSError:
            continue
        for tid in threads:
            try:
                stat = Path(f"/proc/{member}/task/{tid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            seconds[tid] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14 and 15
    return seconds


@dataclass(frozen=True)
class Memory:
    rss_bytes: int
    peak_rss_bytes: int
    pss_bytes: int = 0
    """Proportional set size: a page the forked workers share with the supervisor counts once across the tree, as
    the pod's memory cgroup charges it, where the RSS sum counts it in every process."""


def process_memory(pid: int) -> Memory:
    """RSS, peak RSS and PSS summed over `pid` and its worker processes alive now."""
    rss = peak = pss = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, rest = line.partition(":")
            if key == "VmRSS":
                rss += int(rest.split()[0]) * 1024
            elif key == "VmHWM":
                peak += int(rest.split()[0]) * 1024
    return Memory(rss, peak, pss)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get_status(port: int, path: str, tls: ssl.SSLContext | None = None) -> int | None:
    connection = (
        http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls)
        if tls is not None
        else http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    )
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


@dataclass(frozen=True)
class ServerKind:
    """How to start one server implementation and ask whether it is ready."""

    key: str
    title: str
    readiness_path: str

    def command(self, model: ModelCase, port: int, extra_args: tuple[str, ...], grpc_port: int = 0) -> list[str]:
        if self.key == "ours":
            return [
                sys.executable,
                "-m",
                "service",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--grpc-port",
                str(grpc_port),
                "--model-dir",
                str(model.folder),
                "--no-access-log",
                "--log-level",
                "warning",
                *extra_args,
            ]
        if self.key == "granian":
            # Our app (the same create_app) under granian: settings from the environment, as the factory reads them.
            # No gRPC listener (server.py starts it beside uvicorn) and none of server.py's protocol guards.
            return [
                "env",
                f"RESNET_SERVE_MODEL_DIR={model.folder}",
                "RESNET_SERVE_ACCESS_LOG=false",
                "RESNET_SERVE_LOG_LEVEL=warning",
                sys.executable,
                "-m",
                "granian",
                "--interface",
                "asgi",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--loop",
                "uvloop",
                "--no-ws",
                "--log-level",
                "warning",
                *extra_args,
                "service.app:create_app",
            ]
        return [
            sys.executable,
            "-m",
            "bench.naive_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model",
            str(model.path),
            *extra_args,
        ]


OURS = ServerKind("ours", "ours (service)", "/readyz")
NAIVE = ServerKind("naive", "naive FastAPI", "/healthz")
GRANIAN = ServerKind("granian", "ours under granian", "/readyz")
"""Our app served by granian (Rust HTTP, `pip install granian`: not a dependency) instead of uvicorn + httptools,
one worker: what another HTTP server would save per request (`python -m bench.paired --baseline granian`)."""

OURS_MAX_QUEUE_SIZE = 32
OURS_MAX_QUEUE_WAIT_MS = 1500
OURS_ADMISSION_ARGS = ("--max-queue-size", str(OURS_MAX_QUEUE_SIZE), "--max-queue-wait-ms", str(OURS_MAX_QUEUE_WAIT_MS))
"""The admission flags of the separately started server that the concurrency-64 targets are judged on (every other
target is judged on a server at its defaults): at most 32 queued images, so that 64 concurrent clients overflow
the queue and the benchmark sees how fast the excess is refused, and at most 1.5 s of expected wait, the setting
an operator who wants p99 under 2 s would choose (the count alone bounds the wait only for one CPU)."""


def compile_bytecode(root: Path) -> None:
    """Write the bytecode of `root`'s service package, as `make serve` does before it starts our server (and the
    container's install does): where PYTHONDONTWRITEBYTECODE is set, as on this project's machines, Python would
    otherwise compile each of its modules from source at every start: 0.09 s of a cold start here (bundled model,
    10 alternating starts, 2026-12-04), almost half the gap to the naive server. Quick when the bytecode is current."""
    compileall.compile_dir(root / "service", quiet=1)


SETTLE_WINDOW_S = 1.0
SETTLE_IDLE_CORES = 0.05
SETTLE_LIMIT_S = 60.0


class RunningServer:
    """A server subprocess on a free loopback port, its output in a log file."""

    def __init__(
        self,
        kind: ServerKind,
        model: ModelCase,
        log_path: Path,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        *,
        grpc: bool = False,
        key: str | None = None,
        cwd: Path = REPO_ROOT,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.kind = kind
        self.tls = tls
        """How a client trusts the server when it serves HTTPS (its flags give it a certificate); None: HTTP."""
        self.key = key or kind.key
        """How the benchmark's results name this server (a configuration of `kind`)."""
        self.model = model
        self.port = free_port()
        self.grpc_port = free_port() if grpc and kind is OURS else 0
        """Our server's gRPC port; 0: gRPC off (the naive server has none)."""
        self.log_path = log_path
        self.extra_args = tuple(extra_args)
        self.command = kind.command(model, self.port, self.extra_args, self.grpc_port)
        if kind is not NAIVE:
            compile_bytecode(cwd)
        environment = {key: value for key, value in os.environ.items() if not key.startswith("RESNET_SERVE_")}
        environment.update(env or {})
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=cwd, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        self._started_at = time.monotonic()
        self.ready_after_s: float | None = None
        """From starting the process to the readiness endpoint's first 200."""
        self.settled_after_s: float | None = None
        """From starting the process to `wait_settled`'s end."""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def classify_path(self) -> str:
        return f"/v1/models/{self.model.name}/classify"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, poll_s: float = POLL_INTERVAL_S) -> RunningServer:
        """Wait for the readiness endpoint's first 200, asking every `poll_s` (which bounds how late
        `ready_after_s` can read)."""
        started = self._started_at
        while True:
            if self.process.poll() is not None:
                raise ServerFailed(f"{self.kind.title} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if _get_status(self.port, self.kind.readiness_path, self.tls) == 200:
                self.ready_after_s = time.monotonic() - started
                return self
            if time.monotonic() - started > READY_LIMIT_S:
                self.stop()
                raise ServerFailed(f"{self.kind.title} not ready after {READY_LIMIT_S:g} s:\n{self.log()[-4000:]}")
            time.sleep(poll_s)

    def wait_settled(
        self, window_s: float = SETTLE_WINDOW_S, idle_cores: float = SETTLE_IDLE_CORES, limit_s: float = SETTLE_LIMIT_S
    ) -> RunningServer:
        """Wait, after readiness, until the server's processes stay the same and idle for `window_s`.

        Our server with `--workers auto` answers ready from its first worker, then may start one worker per core
        (each warms up) and retire the first: loads measured before that is over would measure the change-over.
        Gives up after `limit_s` and goes on (the time is recorded either way)."""
        give_up = time.monotonic() + limit_s
        members, cpu = set(process_tree(self.pid)), self.cpu_seconds()
        while time.monotonic() < give_up:
            time.sleep(window_s)
            now_members, now_cpu = set(process_tree(self.pid)), self.cpu_seconds()
            if now_members == members and now_cpu - cpu <= idle_cores * window_s:
                break
            members, cpu = now_members, now_cpu
        self.settled_after_s = time.monotonic() - self._started_at
        return self

    def processes(self) -> int:
        """How many processes the server is now (a supervisor and workers count each)."""
        return len(process_tree(self.pid))

    def get_json(self, path: str) -> object:
        """GET `path` from the server and decode its JSON answer (raises on a non-200 answer)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise ServerFailed(f"GET {path} answered {response.status}: {body[:300]!r}")
            return json.loads(body)
        finally:
            connection.close()

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def memory(self) -> Memory:
        return process_memory(self.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
