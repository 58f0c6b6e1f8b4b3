"""Real servers for integration tests.

`ServerProcess` runs ``python -m service`` in a subprocess on a free loopback port (port 0; the port is read from
uvicorn's start-up line) and waits for readiness by polling /readyz. `InThreadServer` runs real uvicorn in a
thread of the test process, for the few tests that must hold the model's runtime at a chosen moment (warm-up,
a full queue, a passed deadline) through `GatedRuntime`, a wrapper around the real ONNX Runtime session.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.config import BUNDLED_MODEL_DIR, Settings
from service.model_server import ModelServer
from service.runtime import OnnxModelRuntime

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_MODEL = BUNDLED_MODEL_DIR / "fashion-mnist-resnet20.onnx"
STARTUP_LIMIT_S = 120.0
"""Only a guard against hanging forever; tests never assert on durations."""
POLL_INTERVAL_S = 0.05


def free_port() -> int:
    """A loopback port free now (for a listener whose port must be given, such as gRPC's)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def poll(condition: Callable[[], Any], what: str, limit_s: float = STARTUP_LIMIT_S) -> Any:
    """Call `condition` until it returns something truthy; fail (not hang) after `limit_s`."""
    give_up = time.monotonic() + limit_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > give_up:
            pytest.fail(f"gave up waiting for {what} after {limit_s:g} s")
        time.sleep(POLL_INTERVAL_S)


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """`wait_until(condition, what)` polls `condition` until it is truthy (no fixed sleeps, no timed asserts)."""
    return poll


class ServerProcess:
    """``python -m service`` in a subprocess, logging to a file."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        *,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        """`verify`: the server speaks HTTPS (it is given a certificate), and this context trusts it."""
        self.args = args
        self.log_path = log_path
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.verify: ssl.SSLContext | bool = verify if verify is not None else True

    @property
    def url(self) -> str:
        return f"{'http' if self.verify is True else 'https'}://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESNET_SERVE_")}
        env.update(self.extra_env)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                # gRPC is off unless a test asks for it (--grpc-port N): its default port would be shared.
                [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
            )
        return self

    def wait_listening(self) -> int:
        def port_or_exit() -> int | None:
            match = re.search(r"(?:Uvicorn|resnet-serve) running on https?://127\.0\.0\.1:(\d+)", self.log())
            if match:
                return int(match.group(1))
            if self.process is not None and self.process.poll() is not None:
                pytest.fail(f"server exited with code {self.process.returncode} before listening:\n{self.log()}")
            return None

        self.port = poll(port_or_exit, "the server to listen")
        return self.port

    def wait_ready(self) -> ServerProcess:
        self.wait_listening()

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                pytest.fail(f"server exited with code {self.process.returncode}:\n{self.log()}")
            try:
                return httpx.get(self.url + "/readyz", timeout=10, verify=self.verify).status_code == 200
            except httpx.TransportError:
                return False

        poll(ready, "/readyz to answer 200")
        return self

    def wait_exit(self, limit_s: float = STARTUP_LIMIT_S) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server did not exit within {limit_s:g} s:\n{self.log()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`start_server(*args, env={}, verify=None)` starts a server subprocess (not yet waited for; `verify`: it serves
    HTTPS, trusted by this context); all are killed afterwards."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, verify: ssl.SSLContext | None = None) -> ServerProcess:
        server = ServerProcess(list(args), tmp_path / f"server-{len(started)}.log", env, verify=verify).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="session")
def serving_repository(tmp_path_factory: pytest.TempPathFactory, make_classifier, gray_spec, rgb_spec) -> Path:
    """Three tiny real models: embedded metadata (tiny-gray, tiny-rgb) and sidecar-only (tiny-sidecar)."""
    build_classifier_onnx = make_classifier
    folder = tmp_path_factory.mktemp("repository")
    build_classifier_onnx(folder / "tiny-gray.onnx", gray_spec, seed=11)
    build_classifier_onnx(folder / "tiny-rgb.onnx", rgb_spec, seed=12)
    build_classifier_onnx(folder / "tiny-sidecar.onnx", gray_spec, seed=13, embed_metadata=False)
    sidecar = {**gray_spec.model_dump(), "labels": [f"sidecar-{i}" for i in range(10)], "dataset": "from sidecar"}
    (folder / "tiny-sidecar.json").write_text(json.dumps(sidecar))
    return folder


TINY_SERVER_LIMITS = {
    "max_upload_bytes": 1_048_576,
    "max_image_pixels": 4_000_000,
    "max_files_per_request": 4,
}


@pytest.fixture(scope="session")
def tiny_server(serving_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server over the tiny models for the whole session; limits set by flags and by environment."""
    log = tmp_path_factory.mktemp("tiny-server") / "server.log"
    server = ServerProcess(
        [
            "--model-dir",
            str(serving_repository),
            "--max-upload-bytes",
            str(TINY_SERVER_LIMITS["max_upload_bytes"]),
            "--max-files-per-request",
            str(TINY_SERVER_LIMITS["max_files_per_request"]),
            "--max-batch-size",
            "8",
            "--no-access-log",
        ],
        log,
        env={"RESNET_SERVE_MAX_IMAGE_PIXELS": str(TINY_SERVER_LIMITS["max_image_pixels"])},
    ).start()
    try:
        yield server.wait_ready()
    finally:
        server.kill()


@pytest.fixture(scope="session")
def bundled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The server exactly as a newcomer starts it: no --model-dir, so the bundled repository."""
    if not BUNDLED_MODEL.is_file():
        pytest.fail(
            f"the bundled model {BUNDLED_MODEL.relative_to(REPO_ROOT)} is missing; export it first "
            f"(see models/ and the README)"
        )
    log = tmp_path_factory.mktemp("bundled-server") / "server.log"
    server = ServerProcess(["--no-access-log"], log).start()
    try:
        yield server.wait_ready()
    finally:
        server.kill()


class GatedRuntime:
    """The real `OnnxModelRuntime`, except that warm-up and batch runs can be held until the test releases them."""

    def __init__(self, inner: OnnxModelRuntime) -> None:
        self.inner = inner
        self.warm_up_gate = threading.Event()
        self.warm_up_gate.set()
        self.run_gate = threading.Event()
        self.run_gate.set()
        self.batch_sizes: list[int] = []
        self.batches_entered = threading.Semaphore(0)
        self.memory_releases = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def warm_up(self, *args: Any) -> None:
        self.warm_up_gate.wait()
        self.inner.warm_up(*args)

    def time_batch(self, *args: Any) -> float:
        # Warm-up at batch 1 and batch-size tuning: held by the warm-up gate, not counted as served batches.
        self.warm_up_gate.wait()
        return self.inner.time_batch(*args)

    def batch1_seconds(self, *args: Any) -> float:
        return self.inner.batch1_seconds(*args)

    def release_batch_memory(self, *args: Any) -> None:
        self.memory_releases += 1
        self.inner.release_batch_memory(*args)

    def run(self, batch: np.ndarray, output_name: str | None = None) -> np.ndarray:
        self.batch_sizes.append(len(batch))
        self.batches_entered.release()
        self.run_gate.wait()
        return self.inner.run(batch, output_name)

    def wait_for_batch(self) -> None:
        if not self.batches_entered.acquire(timeout=STARTUP_LIMIT_S):
            pytest.fail("no batch reached the runtime")


class InThreadServer:
    """Real uvicorn serving a `ModelServer`'s HTTP app from a thread of the test process, on a loopback socket."""

    def __init__(self, settings: Settings, *, hold_warm_up: bool = False) -> None:
        self.runtimes: dict[str, GatedRuntime] = {}

        def open_gated(path: Path, providers: list[str], intra_op_threads: int | None) -> GatedRuntime:
            runtime = GatedRuntime(OnnxModelRuntime(path, providers=providers, intra_op_threads=intra_op_threads or 1))
            if hold_warm_up:
                runtime.warm_up_gate.clear()
            self.runtimes[path.stem] = runtime
            return runtime

        self.model_server = ModelServer(settings, open_runtime=open_gated)
        self.app = self.model_server.http_app()
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def start(self) -> InThreadServer:
        self.thread.start()
        poll(lambda: self.server.started or not self.thread.is_alive(), "the in-thread server to start")
        if not self.server.started:
            pytest.fail("the in-thread server failed to start")
        return self

    def stop(self) -> None:
        for runtime in self.runtimes.values():
            runtime.warm_up_gate.set()
            runtime.run_gate.set()
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=STARTUP_LIMIT_S)
        self.socket.close()


@pytest.fixture
def in_thread_server() -> Iterator[Callable[..., InThreadServer]]:
    """`in_thread_server(settings, hold_warm_up=False)` builds an in-thread server (call `.start()`); it is
    stopped after the test. With `hold_warm_up`, every model's warm-up waits for its `warm_up_gate`."""
    servers: list[InThreadServer] = []

    def build(settings: Settings, *, hold_warm_up: bool = False) -> InThreadServer:
        server = InThreadServer(settings, hold_warm_up=hold_warm_up)
        servers.append(server)
        return server

    yield build
    for server in servers:
        server.stop()


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def to_png() -> Callable[[np.ndarray], bytes]:
    """uint8 array (H, W) or (H, W, 3) -> PNG bytes."""
    return png_bytes


SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class MetricSamples(dict[SampleKey, float]):
    """{(sample name, sorted labels): value}. A key whose labels are a subset of the series' (a test that names
    the model, not its version) reads the sum of every series that has them, 0 when none does."""

    def __missing__(self, key: SampleKey) -> float:
        name, labels = key
        wanted = set(labels)
        return sum(
            value for (sample, sample_labels), value in self.items() if sample == name and wanted <= set(sample_labels)
        )

    def get(self, key: SampleKey, default: float | None = None) -> float | None:  # type: ignore[override]
        value = self[key]
        return default if value == 0 and key not in self and default is not None else value


def parse_metrics(text: str) -> MetricSamples:
    samples = MetricSamples()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(url: str) -> MetricSamples:
    """/metrics as {(sample name, sorted labels): value}."""
    return parse_metrics(httpx.get(url + "/metrics", timeout=30).text)


@pytest.fixture
def metrics_of() -> Callable[[str], dict]:
    """`metrics_of(url)` scrapes /metrics into {(name, sorted label items): value}."""
    return scrape


def raw_http(port: int, head: bytes, body_parts: list[bytes] = (), *, read_response: bool = True) -> tuple[int, bytes]:
    """Send a hand-made request (possibly incomplete) over a socket and read the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=STARTUP_LIMIT_S) as connection:
        connection.sendall(head)
        for part in body_parts:
            connection.sendall(part)
        return read_http_response(connection)


def read_http_response(connection: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length_match = re.search(rb"(?i)content-length:\s*(\d+)", head)
    if length_match:
        needed = int(length_match.group(1))
        while len(body) < needed:
            chunk = connection.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, body


@pytest.fixture
def http_raw() -> Callable[..., tuple[int, bytes]]:
    """`http_raw(port, head, [body parts])` sends a hand-made request and returns (status, body)."""
    return raw_http


@pytest.fixture
def http_response_reader() -> Callable[[socket.socket], tuple[int, bytes]]:
    """`reader(connection)` reads one HTTP response from a socket: (status, body)."""
    return read_http_response


@pytest.fixture(scope="session")
def bundled_offline_probabilities() -> Callable[[np.ndarray], np.ndarray]:
    """`probabilities(images)`: what the bundled model gives offline for uint8 28x28 grayscale images.

    Independent of the service: torchvision's preprocessing from the model's own metadata and an onnxruntime
    session opened here.
    """
    import onnxruntime as ort
    import torch
    from torchvision import transforms

    from service.modelspec import build_spec, fields_from_metadata_props

    if not BUNDLED_MODEL.is_file():
        pytest.fail(f"the bundled model {BUNDLED_MODEL.relative_to(REPO_ROOT)} is missing")
    session = ort.InferenceSession(str(BUNDLED_MODEL), providers=["CPUExecutionProvider"])
    spec = build_spec(fields_from_metadata_props(session.get_modelmeta().custom_metadata_map), source="bundled")
    pipeline = transforms.Compose(
        [
            transforms.Resize(spec.resize_size, antialias=True),
            transforms.CenterCrop(spec.crop_size),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )

    def probabilities(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            batch = torch.stack([pipeline(Image.fromarray(image, "L").convert(spec.color_mode)) for image in images])
        logits = session.run([spec.output_name], {spec.input_name: batch.numpy()})[0].astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    return probabilities
