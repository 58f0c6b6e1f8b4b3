"""Several worker processes on one port (`--workers`): the supervisor, auto's switch-over, metrics summed over
the workers, the drain, and a worker that dies. Real servers, real sockets, real models."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.workers import CHEAP_MODEL_S_PER_IMAGE, split_settings, workers_for
from tests.images import random_png


def children(pid: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing's resource tracker is a child too, not a worker)."""
    workers = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if b"resource_tracker" not in command:
            workers.append(int(child))
    return workers


def classify(url: str, seed: int) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/gray/classify", files={"file": ("x.png", random_png(seed), "image/png")}, timeout=120
    )


@pytest.fixture
def gray_dir(tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "gray.onnx", gray_spec, seed=8)
    return tmp_path


def test_auto_moves_a_cheap_model_to_one_worker_per_core_without_losing_readiness(
    start_server, gray_dir, wait_until, metrics_of
):
    server = start_server("--model-dir", str(gray_dir), "--workers", "auto", "--grpc-port", "0").wait_ready()
    expected = classify(server.url, 1).json()["results"][0]["top_k"]
    statuses: Counter[int] = Counter()
    readiness: list[float] = []
    stop = threading.Event()

    def keep_probing() -> None:
        # New connections all the time, as a load balancer's probes and clients make: none may meet a worker that
        # is going away.
        while not stop.is_set():
            statuses[httpx.get(server.url + "/readyz", timeout=30).status_code] += 1
            statuses[classify(server.url, 1).status_code] += 1
            readiness.append(metrics_of(server.url)[("resnet_serve_model_ready", (("model", "gray"),))])

    prober = threading.Thread(target=keep_probing)
    prober.start()
    try:
        wait_until(lambda: "per-core workers serve; retiring worker 0" in server.log(), "the switch-over")
        wait_until(lambda: len(children(server.process.pid)) == 2, "two workers left")
    finally:
        stop.set()
        prober.join()
    assert set(statuses) == {200}, statuses  # readiness never lapsed, no request was refused
    # Nor in the metrics: a worker that warms up before it serves, or that retires, has no say in the minimum.
    assert readiness and set(readiness) == {1}, readiness
    answers = [classify(server.url, 1) for _ in range(20)]
    assert {r.status_code for r in answers} == {200}
    assert all(r.json()["results"][0]["top_k"] == expected for r in answers)
    # Whichever worker answers a scrape, the counters are summed over all of them (and over the retired one):
    # every classification this test received, the first one included, is counted once.
    classified = metrics_of(server.url)[("resnet_serve_images_classified_total", (("model", "gray"),))]
    assert classified == 1 + statuses[200] // 2 + len(answers)
    ready = metrics_of(server.url)[("resnet_serve_model_ready", (("model", "gray"),))]
    assert ready == 1
    threads = {
        int(server_threads)
        for server_threads in [
            httpx.get(server.url + "/v1/models/gray", timeout=30).json()["intra_op_threads"] for _ in range(6)
        ]
    }
    assert threads == {1}  # each worker has its share of the two cores


def test_once_ready_every_worker_answers(start_server, tmp_path, make_classifier, gray_spec):
    # A probe's 200 comes from one worker; the requests after it may meet any of them, so a worker that is still
    # warming up must not take connections (it answered 503 not_ready right after /readyz said 200). Warming up
    # many models one after the other spreads the workers' ready times apart.
    for seed in range(12):
        make_classifier(tmp_path / ("gray.onnx" if seed == 0 else f"gray{seed}.onnx"), gray_spec, seed=seed)
    server = start_server("--model-dir", str(tmp_path), "--workers", "3", "--grpc-port", "0").wait_ready()
    answers: list[int] = []

    def fresh_connection(seed: int) -> None:
        answers.append(classify(server.url, seed).status_code)

    clients = [threading.Thread(target=fresh_connection, args=(seed,)) for seed in range(24)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    assert Counter(answers) == {200: 24}


def test_sigterm_drains_every_worker_and_exits_0(start_server, gray_dir, wait_until):
    server = start_server("--model-dir", str(gray_dir), "--workers", "2", "--grpc-port", "0").wait_ready()
    # Ready means the first worker serves; the second takes connections once warm, and a worker stopped before that
    # has nothing to drain (it leaves at once, saying nothing).
    wait_until(lambda: server.log().count("model(s) ready") == 2, "both workers warm")
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def client(seed: int) -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                try:
                    response = http.post(
                        f"{server.url}/v1/models/gray/classify",
                        files={"file": ("x.png", random_png(seed), "image/png")},
                    )
                    outcome = str(response.status_code)
                except httpx.TransportError as exc:
                    outcome = type(exc).__name__
                with lock:
                    outcomes[outcome] += 1
                if outcome != "200":
                    return

    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(6)]
    for thread in clients:
        thread.start()
    wait_until(lambda: outcomes["200"] >= 20, "load under way")
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    stop.set()
    for thread in clients:
        thread.join(timeout=120)
    # Every request was answered: 200 before the drain, 503 shutting_down or a closed connection after it.
    assert set(outcomes) <= {"200", "503", "ConnectError", "RemoteProtocolError", "ReadError"}, outcomes
    assert server.log().count("drained: no request in flight; stopping") == 2


def test_a_worker_that_dies_stops_the_others_and_the_supervisor_fails(start_server, gray_dir, wait_until):
    server = start_server("--model-dir", str(gray_dir), "--workers", "2", "--grpc-port", "0").wait_ready()
    wait_until(lambda: len(children(server.process.pid)) == 2, "two workers")
    victim = children(server.process.pid)[0]
    import os

    os.kill(victim, signal.SIGKILL)
    assert server.wait_exit() != 0
    assert "stopping the others" in server.log()


def test_the_auto_rule_and_each_workers_share():
    assert workers_for({"small": CHEAP_MODEL_S_PER_IMAGE / 10}, cpus=4) == 4
    assert workers_for({"small": 0.0001, "resnet50": 0.038}, cpus=4) == 1  # one slow model: one process batches best
    assert workers_for({"small": 0.0001}, cpus=1) == 1
    settings = Settings(max_connections=1000, max_inflight_bytes=128 * 2**20, max_decode_bytes=384 * 2**20)
    share = split_settings(settings, 2, cpus=4)
    assert (share.workers, share.intra_op_threads, share.decode_threads) == (1, 2, 2)
    assert share.max_connections == 500
    assert share.max_inflight_bytes == 64 * 2**20 and share.max_decode_bytes == 192 * 2**20
    assert share.max_queue_size == settings.max_queue_size  # queues and wait bounds are per worker
    assert split_settings(settings, 1, cpus=4) is settings


def test_workers_do_not_outlive_a_killed_supervisor(start_server, gray_dir, wait_until):
    server = start_server("--model-dir", str(gray_dir), "--workers", "2", "--grpc-port", "0").wait_ready()
    wait_until(lambda: len(children(server.process.pid)) == 2, "two workers")
    workers = children(server.process.pid)
    server.process.kill()  # SIGKILL: no chance to forward anything
    server.process.wait(timeout=60)
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), "the workers to be gone")


def _server_side_owner(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """The process holding the server's end of the loopback connection from `client_port`."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == server_port and int(fields[2].split(":")[1], 16) == client_port:
            inode = fields[9]
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if fd.readlink().name == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def test_a_retiring_worker_lets_a_slow_upload_run_to_its_deadline(start_server, gray_dir, wait_until):
    """An upload still arriving when auto retires the first worker is answered by that worker as if nothing
    happened: here 408 at the body deadline (it never completes), not cut with a 500 once the keep-alive and
    the grace (1 s + 0 s here) are over."""
    server = start_server(
        "--model-dir",
        str(gray_dir),
        "--workers",
        "auto",
        "--grpc-port",
        "0",
        "--body-timeout-s",
        "12",
        "--keep-alive-timeout-s",
        "1",
        "--shutdown-grace-s",
        "0",
    ).wait_ready()
    first_worker = children(server.process.pid)
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as slow:
        slow.sendall(
            b"POST /v1/models/gray/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n\x89PNG\r\n\x1a\n"
        )
        opened = time.monotonic()
        wait_until(
            lambda: _server_side_owner(server.port, slow.getsockname()[1], first_worker) is not None,
            "the first worker to hold the connection",
        )
        wait_until(lambda: "per-core workers serve; retiring worker 0" in server.log(), "the switch-over")
        answer = slow.recv(4096)
        waited = time.monotonic() - opened
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert 11 <= waited < 30, waited
