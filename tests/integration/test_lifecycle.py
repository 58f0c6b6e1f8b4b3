"""Start-up, readiness and shutdown of real servers."""

from __future__ import annotations

import signal
import socket
import threading
from collections import Counter

import httpx
import pytest

from service.config import Settings
from tests.images import random_png


@pytest.fixture
def gray_model_dir(tmp_path, make_classifier, gray_spec):
    folder = tmp_path / "models"
    make_classifier(folder / "gray.onnx", gray_spec, seed=7)
    return folder


# --- start-up and readiness -------------------------------------------------------------------------------------


def test_readyz_is_503_until_warm_up_is_done_then_200(in_thread_server, gray_model_dir, wait_until, metrics_of):
    server = in_thread_server(Settings(model_dir=gray_model_dir, max_batch_size=4), hold_warm_up=True).start()
    runtime = server.runtimes["gray"]

    assert httpx.get(server.url + "/healthz", timeout=30).json() == {"status": "alive"}
    not_ready = httpx.get(server.url + "/readyz", timeout=30)
    assert not_ready.status_code == 503
    assert not_ready.json() == {"status": "starting", "models": {"gray": "warming_up"}}
    refused = httpx.post(server.url + "/v1/classify", files={"file": ("a.png", random_png(1), "image/png")}, timeout=30)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "not_ready"
    assert refused.headers["Retry-After"] == "1"
    assert metrics_of(server.url)[("resnet_serve_model_ready", (("model", "gray"),))] == 0

    runtime.warm_up_gate.set()
    wait_until(lambda: httpx.get(server.url + "/readyz", timeout=30).status_code == 200, "readiness after warm-up")

    assert httpx.get(server.url + "/readyz", timeout=30).json() == {"status": "ready", "models": {"gray": "ready"}}
    accepted = httpx.post(
        server.url + "/v1/classify", files={"file": ("a.png", random_png(1), "image/png")}, timeout=60
    )
    assert accepted.status_code == 200
    assert metrics_of(server.url)[("resnet_serve_model_ready", (("model", "gray"),))] == 1


def test_missing_metadata_fails_start_up_with_a_clear_message(start_server, tmp_path, make_classifier, gray_spec):
    folder = tmp_path / "bare-models"
    make_classifier(folder / "exported-elsewhere.onnx", gray_spec, embed_metadata=False)
    server = start_server("--model-dir", str(folder))
    assert server.wait_exit() == 3
    log = server.log()
    assert "cannot start: exported-elsewhere.onnx: missing model metadata field(s) labels, color_mode" in log
    assert "sidecar JSON file" in log


def test_empty_model_folder_fails_start_up(start_server, tmp_path):
    (tmp_path / "empty").mkdir()
    server = start_server("--model-dir", str(tmp_path / "empty"))
    assert server.wait_exit() == 3
    assert "no *.onnx model files in" in server.log()


# --- SIGTERM ----------------------------------------------------------------------------------------------------


class SlowUpload:
    """A classify request whose body is sent in two halves, so it stays in flight as long as the test wants."""

    def __init__(self, port: int, filename: str, image: bytes) -> None:
        boundary = "sigterm-test-boundary"
        self.body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + image
            + f"\r\n--{boundary}--\r\n".encode()
        )
        head = (
            f"POST /v1/models/gray/classify?top_k=10 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(self.body)}\r\n\r\n"
        ).encode()
        self.connection = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.connection.sendall(head + self.body[: len(self.body) // 2])

    def finish(self, read_http_response) -> tuple[int, bytes]:
        with self.connection:
            self.connection.sendall(self.body[len(self.body) // 2 :])
            return read_http_response(self.connection)


def test_sigterm_under_load_finishes_in_flight_requests_and_exits_0(
    start_server, gray_model_dir, wait_until, metrics_of, http_response_reader
):
    server = start_server("--model-dir", str(gray_model_dir), "--shutdown-grace-s", "120", "--no-access-log")
    server.wait_ready()
    url = server.url
    images = {f"slow-{n}.png": random_png(100 + n) for n in range(3)}
    expected = {}
    for name, image in images.items():
        answer = httpx.post(
            f"{url}/v1/models/gray/classify",
            params={"top_k": 10},
            files={"file": (name, image, "image/png")},
            timeout=60,
        )
        expected[name] = answer.json()["results"][0]["top_k"]

    # Requests certainly in flight when the signal comes: uploads the test has only half sent.
    slow = [SlowUpload(server.port, name, image) for name, image in images.items()]
    wait_until(lambda: metrics_of(url)[("resnet_serve_http_requests_in_flight", ())] >= 3, "3 uploads in flight")

    # Load around the signal: clients classifying in a loop until told to stop.
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def client(seed: int) -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                try:
                    response = http.post(
                        f"{url}/v1/models/gray/classify", files={"file": ("x.png", random_png(seed), "image/png")}
                    )
                    outcome = str(response.status_code)
                    if response.status_code != 200:
                        outcome += " " + response.json()["error"]["code"]
                except httpx.TransportError as exc:
                    outcome = f"transport error {type(exc).__name__}"
                with lock:
                    outcomes[outcome] += 1
                if outcome != "200":
                    return

    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for thread in clients:
        thread.start()
    wait_until(lambda: outcomes["200"] >= 16, "load to be under way")

    server.signal(signal.SIGTERM)

    wait_until(lambda: httpx.get(url + "/readyz", timeout=30).status_code == 503, "readiness to turn 503")
    assert httpx.get(url + "/readyz", timeout=30).json()["status"] == "draining"
    refused = httpx.post(
        f"{url}/v1/models/gray/classify", files={"file": ("new.png", random_png(1), "image/png")}, timeout=30
    )
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "shutting_down"
    assert server.process.poll() is None  # still serving the uploads in flight

    stop.set()
    for thread in clients:
        thread.join(timeout=120)
    assert set(outcomes) <= {"200", "503 shutting_down"}, outcomes

    for upload, name in zip(slow, images, strict=False):
        status, body = upload.finish(http_response_reader)
        assert status == 200, body
        assert httpx.Response(200, content=body).json()["results"][0]["top_k"] == expected[name]

    assert server.wait_exit() == 0
    log = server.log()
    assert "SIGTERM received: draining" in log
    assert "drained: no request in flight; stopping" in log
