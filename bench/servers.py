"""The servers under test as subprocesses, and what /proc says about them (CPU seconds, resident memory)."""

from __future__ import annotations

import http.client
import os
import signal
import socket
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


@dataclass(frozen=True)
class Memory:
    rss_bytes: int
    peak_rss_bytes: int


def process_memory(pid: int) -> Memory:
    """RSS and peak RSS summed over `pid` and its worker processes alive now."""
    rss = peak = 0
    for member in process_tree(pid):
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
    return Memory(rss, peak)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get_status(port: int, path: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
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

    def command(self, model: ModelCase, port: int, extra_args: tuple[str, ...]) -> list[str]:
        if self.key == "ours":
            return [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--grpc-port", "0",
                    "--model-dir", str(model.folder), "--no-access-log", "--log-level", "warning", *extra_args]
        return [sys.executable, "-m", "bench.naive_server", "--host", "127.0.0.1", "--port", str(port),
                "--model", str(model.path), *extra_args]


OURS = ServerKind("ours", "ours (service)", "/readyz")
NAIVE = ServerKind("naive", "naive FastAPI", "/healthz")

OURS_MAX_QUEUE_SIZE = 32
OURS_MAX_QUEUE_WAIT_MS = 1500
OURS_ARGS = ("--max-queue-size", str(OURS_MAX_QUEUE_SIZE), "--max-queue-wait-ms", str(OURS_MAX_QUEUE_WAIT_MS))
"""Every setting of ours is its default except admission: at most 32 queued images, so that 64 concurrent clients
overflow the queue and the benchmark sees how fast the excess is refused, and at most 1.5 s of expected wait, the
setting an operator who wants p99 under 2 s would choose (the count alone bounds the wait only for one CPU)."""


class RunningServer:
    """A server subprocess on a free loopback port, its output in a log file."""

    def __init__(self, kind: ServerKind, model: ModelCase, log_path: Path, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.model = model
        self.port = free_port()
        self.log_path = log_path
        self.command = kind.command(model, self.port, extra_args)
        environment = {key: value for key, value in os.environ.items() if not key.startswith("RESNET_SERVE_")}
        environment.update(env or {})
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, env=environment, stdout=log,
                                            stderr=subprocess.STDOUT)
        self.ready_after_s: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def classify_path(self) -> str:
        return f"/v1/models/{self.model.name}/classify"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> RunningServer:
        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise ServerFailed(f"{self.kind.title} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if _get_status(self.port, self.kind.readiness_path) == 200:
                self.ready_after_s = time.monotonic() - started
                return self
            if time.monotonic() - started > READY_LIMIT_S:
                self.stop()
                raise ServerFailed(f"{self.kind.title} not ready after {READY_LIMIT_S:g} s:\n{self.log()[-4000:]}")
            time.sleep(POLL_INTERVAL_S)

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
