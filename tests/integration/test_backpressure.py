"""Admission control and deadlines on a real uvicorn server whose real ONNX runtime the test holds at will
(`GatedRuntime`), so "the model is busy" is a fact the test arranges, not a timing it hopes for."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.config import Settings
from tests.images import random_png


@pytest.fixture
def single_model_dir(tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "gray.onnx", gray_spec, seed=5)
    return tmp_path


def post(url: str, seed: int, count: int = 1) -> httpx.Response:
    files = [("file", (f"{seed}-{i}.png", random_png(seed + i), "image/png")) for i in range(count)]
    return httpx.post(f"{url}/v1/models/gray/classify", files=files, timeout=120)


def queue_depth(url: str) -> int:
    return httpx.get(f"{url}/v1/models/gray", timeout=30).json()["batching"]["queue_depth"]


def test_full_queue_answers_503_with_retry_after_at_once(in_thread_server, single_model_dir, metrics_of, wait_until):
    server = in_thread_server(
        Settings(
            model_dir=single_model_dir,
            max_batch_size=1,
            max_queue_size=2,
            max_files_per_request=2,
        )
    ).start()
    runtime = server.runtimes["gray"]
    wait_until(lambda: httpx.get(server.url + "/readyz", timeout=30).status_code == 200, "readiness")
    runtime.run_gate.clear()  # the model is now "busy" until the test says otherwise
    with ThreadPoolExecutor(max_workers=4) as clients:
        running = clients.submit(post, server.url, 100)
        runtime.wait_for_batch()
        queued = [clients.submit(post, server.url, 200), clients.submit(post, server.url, 300)]
        wait_until(lambda: queue_depth(server.url) == 2, "two images queued")

        refused = post(server.url, 400)
        too_many_for_the_room = post(server.url, 500, count=2)

        runtime.run_gate.set()
        results = [running.result(), *(f.result() for f in queued)]

    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert "queued" in refused.json()["error"]["message"]
    assert too_many_for_the_room.status_code == 503
    assert [r.status_code for r in results] == [200, 200, 200]
    assert runtime.batch_sizes == [1, 1, 1]  # the refused images never reached the model
    rejections = metrics_of(server.url)[("resnet_serve_rejections_total", (("reason", "overloaded"),))]
    assert rejections == 2


def test_deadline_passed_while_queued_answers_504_and_the_image_never_runs(
    in_thread_server, single_model_dir, wait_until
):
    server = in_thread_server(Settings(model_dir=single_model_dir, max_batch_size=4, request_timeout_s=3.0)).start()
    runtime = server.runtimes["gray"]
    wait_until(lambda: httpx.get(server.url + "/readyz", timeout=30).status_code == 200, "readiness")
    runtime.run_gate.clear()
    with ThreadPoolExecutor(max_workers=2) as clients:
        stuck = clients.submit(post, server.url, 1)
        runtime.wait_for_batch()
        waiting = post(server.url, 2)  # queued behind a batch that does not finish before its deadline
        first = stuck.result()
    assert waiting.status_code == 504
    assert waiting.json()["error"]["code"] == "timeout"
    assert "request timeout of 3 s" in waiting.json()["error"]["message"]
    assert first.status_code == 504  # the running request had the same deadline

    runtime.run_gate.set()
    after = post(server.url, 3)
    assert after.status_code == 200
    assert runtime.batch_sizes == [1, 1]  # the held batch and the one after: the timed-out image was dropped


def test_client_that_disconnects_while_queued_is_dropped_before_inference(
    in_thread_server, single_model_dir, wait_until, metrics_of
):
    server = in_thread_server(Settings(model_dir=single_model_dir, max_batch_size=4)).start()
    runtime = server.runtimes["gray"]
    wait_until(lambda: httpx.get(server.url + "/readyz", timeout=30).status_code == 200, "readiness")
    runtime.run_gate.clear()
    with ThreadPoolExecutor(max_workers=1) as clients:
        running = clients.submit(post, server.url, 1)
        runtime.wait_for_batch()

        image = random_png(2)
        body = (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="gone.png"\r\n\r\n'
            + image
            + b"\r\n--b--\r\n"
        )
        head = (
            f"POST /v1/models/gray/classify HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; "
            f"boundary=b\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as leaving:
            leaving.sendall(head + body)
            wait_until(lambda: queue_depth(server.url) == 1, "the image to be queued")
        # The client has closed its connection while its image waits.
        gone = ("resnet_serve_rejections_total", (("reason", "client_disconnected"),))
        wait_until(lambda: metrics_of(server.url)[gone] == 1, "the server to notice the client left")
        assert queue_depth(server.url) in (0, 1)  # dropped lazily: at the latest when the next batch forms

        runtime.run_gate.set()
        assert running.result().status_code == 200
    assert post(server.url, 3).status_code == 200
    assert runtime.batch_sizes == [1, 1]  # the held batch and the last request; the abandoned image never ran
    dropped = ("resnet_serve_dropped_images_total", (("model", "gray"), ("reason", "client_disconnected")))
    assert metrics_of(server.url)[dropped] == 1
