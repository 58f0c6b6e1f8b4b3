"""Several worker processes on one port, when one event loop is the limit (`--workers`).

On a model as fast as the bundled ResNet-20 (well under a millisecond per image), the server's own work per
request (HTTP, multipart, hand-offs between threads) is most of the work, and it runs under one interpreter lock:
one process leaves cores idle. Then N worker processes, each with its own event loop, sessions and batchers and
1/N of the cores, serve the same listening socket (and bind the gRPC port with SO_REUSEPORT). On a slow model
(ResNet-50: 38 ms an image here) one process with every core batches better and holds one copy of the model.

`--workers auto` decides from the model's cost, measured: the first worker starts with every core, and once it is
ready it reports each model's inference time per image at batch 1. When the slowest is under
`CHEAP_MODEL_S_PER_IMAGE`, the supervisor starts one worker per core (each warmed up before it takes
connections) and then drains the first; otherwise the first serves alone. Readiness never lapses.

The supervisor imports no numpy, onnxruntime or model code and starts no thread, so that workers can be forked
from it. It forwards SIGTERM/SIGINT to the workers (the first
drains them, a second stops them at once), exits 0 when they all did, and fails fast (exit 1) if a worker dies
unexpectedly. Metrics: every worker writes its values to files in a private PROMETHEUS_MULTIPROC_DIR, and any
worker's /metrics sums them (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any, cast

from service import peer_readiness
from service.config import Settings
from service.memory import cgroup_memory_limit_bytes

logger = logging.getLogger("service")

CHEAP_MODEL_S_PER_IMAGE = 0.005
"""Below this inference time per image (batch 1), serving overhead rivals the model's: one worker per core."""
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTROL_DIR_ENV = "RESNET_SERVE_CONTROL_DIR"
"""service.model_control reads it (the supervisor imports nothing from there: it stays light)."""
_POLL_S = 0.2


@dataclass(frozen=True)
class WorkerPlan:
    count: int
    settings: Settings


def split_settings(settings: Settings, count: int, cpus: int) -> Settings:
    """One worker's share: its cores, connections and byte budgets are the pod's divided by `count` (so that the
    pod's memory and file descriptors stay within what the settings say). Each worker keeps its own model queues
    and wait bound: latency is bounded per worker."""
    if count == 1:
        return settings

    def split(threads: int | None) -> int:
        return max(1, (threads or cpus) // count)

    limit = cgroup_memory_limit_bytes()
    budget = settings.memory_budget_mb or (None if limit is None else limit / 2**20)

    return settings.model_copy(
        update={
            "workers": 1,
            "intra_op_threads": split(settings.intra_op_threads),
            "decode_threads": split(settings.decode_threads),
            "max_connections": max(1, math.ceil(settings.max_connections / count)),
            "max_inflight_bytes": max(settings.max_upload_bytes, settings.max_inflight_bytes // count),
            "max_decode_bytes": max(1024 * 1024, settings.max_decode_bytes // count),
            "memory_budget_mb": None if budget is None else budget / count,
        }
    )


def workers_for(seconds_per_image: dict[str, float], cpus: int) -> int:
    """`--workers auto`'s rule: one per core when every model is cheap, else one."""
    if cpus > 1 and seconds_per_image and max(seconds_per_image.values()) < CHEAP_MODEL_S_PER_IMAGE:
        return cpus
    return 1


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return cast(int, probe.getsockname()[1])


_PR_SET_PDEATHSIG = 1


def _die_with(supervisor: int) -> None:
    """Have the kernel stop this worker if the supervisor dies without forwarding a signal (SIGKILL, the OOM
    killer): a worker must not outlive it, holding the port. Linux only; elsewhere the supervisor's own exit
    path is all there is."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError, TypeError):
        return
    if os.getppid() != supervisor:  # it died before the request took effect
        os._exit(1)


def worker_main(
    settings_values: dict[str, Any],
    sock: socket.socket,
    index: int,
    report: Connection | None,
    warm_before_serving: bool,
) -> None:
    """A worker process: the app on the shared socket; reports its models' costs once ready (worker 0, auto)."""
    gc.disable()  # until the models are warm (ModelServer._warm_up says why)
    os.setpgrp()  # terminal signals go to the supervisor, which forwards them once
    _die_with(supervisor=os.getppid())
    # Until uvicorn installs its drain, a signal finds nothing in flight: leave at once (os._exit, not sys.exit, which
    # raised inside an import in progress would turn into an ImportError and a failed worker).
    for early in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(early, lambda *_: os._exit(0))
    from service import logs
    from service.model_server import ModelServer

    settings = Settings(**settings_values)
    logs.configure(settings.log_level, settings.log_format)

    def ready(costs: dict[str, float]) -> None:
        assert report is not None
        report.send(costs)
        report.close()

    from service.registry import StartupError

    try:
        try:
            server = ModelServer(settings, on_ready=ready if report is not None else None)
        except StartupError as exc:
            logger.error("cannot start: %s", exc)
            sys.exit(3)
        server.begin_loading()
        logger.info("worker %d (pid %d) starting", index, os.getpid())
        from service.server import serve  # the web stack, imported while the models load

        sys.exit(0 if serve(server, sockets=[sock], warm_before_serving=warm_before_serving) else 3)
    finally:
        logs.stop()  # multiprocessing ends this process with os._exit: no atexit


class Supervisor:
    def __init__(self, settings: Settings, cpus: int) -> None:
        self.settings = settings
        self.cpus = cpus
        # fork, not spawn: the supervisor has imported nothing heavy (no numpy, no onnxruntime, no threads), so a
        # forked worker starts from its state at once instead of starting an interpreter and importing anew; this
        # saves about 0.6 s of cold start (measured: ready after 0.8 s against 1.5 s with spawn).
        self.context = multiprocessing.get_context("fork")
        self.processes: dict[int, multiprocessing.process.BaseProcess] = {}
        self.signals = 0
        self.retiring: set[int] = set()

    def _start(
        self, index: int, settings: Settings, sock: socket.socket, report: Connection | None, warm_before_serving: bool
    ) -> None:
        process = self.context.Process(
            target=worker_main,
            args=(settings.model_dump(), sock, index, report, warm_before_serving),
            name=f"resnet-serve-worker-{index}",
        )
        process.start()
        self.processes[index] = process
        if not warm_before_serving and process.pid is not None:
            # Before any other worker starts, so that none of them can say ready while this one warms up.
            peer_readiness.mark_warming(Path(os.environ[MULTIPROCESS_ENV]), process.pid)

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        self.signals += 1
        for process in self.processes.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM if self.signals == 1 else signal.SIGINT)

    def run(self) -> int:
        settings = self.settings
        metrics_dir = tempfile.mkdtemp(prefix="resnet-serve-metrics-")
        os.environ[MULTIPROCESS_ENV] = metrics_dir
        # Where the workers log and acknowledge explicit model loads and unloads (service.model_control).
        control_dir = tempfile.mkdtemp(prefix="resnet-serve-control-")
        os.environ[CONTROL_DIR_ENV] = control_dir
        sock = _bind(settings.host, settings.port)
        port = sock.getsockname()[1]
        self.settings = settings = settings.model_copy(update={"port": port})
        logger.info(
            "resnet-serve running on %s://%s:%d with %s worker process(es) (pid %d supervises)",
            "http" if settings.tls_files is None else "https",
            settings.host,
            port,
            settings.workers,
            os.getpid(),
        )
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        try:
            return self._supervise(sock)
        finally:
            sock.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)
            shutil.rmtree(control_dir, ignore_errors=True)

    def _supervise(self, sock: socket.socket) -> int:
        settings = self.settings
        if settings.workers != "auto":
            count = int(settings.workers)
            share = split_settings(settings, count, self.cpus)
            for index in range(count):
                # One worker takes connections from the start, so that probes and scrapes are answered while the
                # models load, and its mark keeps every worker's /readyz at 503 until it is warm; the others take
                # connections only once warm. So a 200 from /readyz means every worker taking connections is ready
                # (a request that reached a worker still warming up was answered 503).
                self._start(index, share, sock, None, warm_before_serving=index > 0)
            return self._wait()
        costs = self._await_report(self._start_reporting(0, settings, sock, warm_before_serving=False))
        if costs is None:
            return self._wait()
        count = workers_for(costs, self.cpus)
        logger.info(
            "workers auto: inference per image at batch 1: %s; %d worker(s)",
            ", ".join(f"{name} {seconds * 1000:.2f} ms" for name, seconds in costs.items()) or "none",
            count,
        )
        if count > 1 and not self.signals:
            # Per-core workers warm up before they take connections; then the first, which has every core, drains.
            share = split_settings(settings, count, self.cpus)
            reports = [
                self._start_reporting(index, share, sock, warm_before_serving=True) for index in range(1, count + 1)
            ]
            if all(self._await_report(report) is not None for report in reports):
                first = self.processes[0]
                if first.is_alive() and first.pid is not None:
                    logger.info("workers auto: %d per-core workers serve; retiring worker 0 (pid %d)", count, first.pid)
                    self.retiring.add(0)
                    os.kill(first.pid, signal.SIGUSR1)  # service.server.RETIRE_SIGNAL
        return self._wait()

    def _start_reporting(
        self, index: int, settings: Settings, sock: socket.socket, *, warm_before_serving: bool
    ) -> tuple[int, Connection]:
        receive, send = self.context.Pipe(duplex=False)
        self._start(index, settings, sock, send, warm_before_serving)
        send.close()
        return index, receive

    def _await_report(self, report: tuple[int, Connection]) -> dict[str, float] | None:
        """The worker's models' costs once it is ready; None if it died or a signal came first."""
        index, receive = report
        while not receive.poll(_POLL_S):
            if self.signals or not self.processes[index].is_alive():
                return None
        try:
            return cast(dict[str, float], receive.recv())
        except EOFError:
            return None
        finally:
            receive.close()

    def _wait(self) -> int:
        status = 0
        while self.processes:
            for index, process in list(self.processes.items()):
                process.join(_POLL_S / max(1, len(self.processes)))
                if process.exitcode is None:
                    continue
                del self.processes[index]
                if process.exitcode != 0:
                    status = status or process.exitcode
                if not self.signals and index not in self.retiring:
                    logger.error("worker %d exited with %s; stopping the others", index, process.exitcode)
                    status = status or 1
                    self._forward(signal.SIGTERM, None)
                    self._forward(signal.SIGTERM, None)
                from prometheus_client import multiprocess

                if process.pid is not None:
                    # prometheus_client ships py.typed but leaves its multiprocess module unannotated.
                    multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
        return status


def run(settings: Settings, cpus: int) -> int:
    """Serve with worker processes; the exit status of the whole."""
    started = time.monotonic()
    status = Supervisor(settings, cpus).run()
    logger.info("all workers stopped after %.1f s (status %d)", time.monotonic() - started, status)
    return status
