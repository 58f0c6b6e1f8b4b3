"""Per-model serving settings: two models with different `serving` sections, side by side in one real server,
each batching by its own limits (seen through /v1/models, the runtime the test holds, and /metrics)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.config import Settings
from tests.images import random_png


@pytest.fixture
def two_model_dir(tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "small.onnx", gray_spec, seed=21)
    make_classifier(tmp_path / "large.onnx", gray_spec, seed=22)
    (tmp_path / "small.json").write_text(json.dumps({"serving": {"max_batch_size": 2, "max_queue_size": 40}}))
    (tmp_path / "large.json").write_text(json.dumps({"serving": {"max_batch_size": 5, "max_batch_delay_ms": 1.5}}))
    return tmp_path


def post(url: str, model: str, seed: int, count: int = 1) -> httpx.Response:
    files = [("file", (f"{seed}-{i}.png", random_png(seed + i), "image/png")) for i in range(count)]
    return httpx.post(f"{url}/v1/models/{model}/classify", files=files, timeout=120)


def batch_size_buckets(samples: dict, model: str) -> dict[str, float]:
    return {
        dict(labels)["le"]: value
        for (name, labels), value in samples.items()
        if name == "resnet_serve_batch_size_bucket" and dict(labels)["model"] == model
    }


def test_each_model_batches_by_its_own_serving_section(in_thread_server, two_model_dir, metrics_of, wait_until):
    server = in_thread_server(
        Settings(model_dir=two_model_dir, max_batch_size=16, max_queue_size=64, max_files_per_request=8)
    ).start()
    wait_until(lambda: httpx.get(server.url + "/readyz", timeout=30).status_code == 200, "readiness")

    described = {m["name"]: m["batching"] for m in httpx.get(server.url + "/v1/models", timeout=30).json()["models"]}
    assert described["small"]["max_batch_size"] == 2
    assert described["small"]["max_queue_size"] == 40
    assert described["small"]["max_batch_delay_ms"] == 0.0  # not set by the model: the flag's default
    assert sorted(described["small"]["overridden"]) == ["max_batch_size", "max_queue_size"]
    assert described["large"]["max_batch_size"] == 5
    assert described["large"]["max_queue_size"] == 64  # the flag
    assert described["large"]["max_batch_delay_ms"] == 1.5

    for name in ("small", "large"):
        runtime = server.runtimes[name]
        runtime.run_gate.clear()  # hold the model so that the next images pile up in its queue
        with ThreadPoolExecutor(max_workers=2) as clients:
            first = clients.submit(post, server.url, name, 1)
            runtime.wait_for_batch()
            pile = clients.submit(post, server.url, name, 100, count=8)
            wait_until(
                lambda name=name: (
                    httpx.get(f"{server.url}/v1/models/{name}", timeout=30).json()["batching"]["queue_depth"] == 8
                ),
                f"8 images queued for {name}",
            )
            runtime.run_gate.set()
            assert first.result().status_code == 200
            assert pile.result().status_code == 200

    assert server.runtimes["small"].batch_sizes == [1, 2, 2, 2, 2]
    assert server.runtimes["large"].batch_sizes == [1, 5, 3]
    samples = metrics_of(server.url)
    small, large = batch_size_buckets(samples, "small"), batch_size_buckets(samples, "large")
    assert small["2.0"] == small["+Inf"] == 5 and small["1.0"] == 1
    assert large["4.0"] == 2 and large["8.0"] == large["+Inf"] == 3


@pytest.mark.parametrize(
    "section,message",
    [
        ({"max_batch_size": 0}, "bad.json: serving.max_batch_size: Value error, must be between 1 and 1024, or 'auto'"),
        ({"max_batch_size": "many"}, "bad.json: serving.max_batch_size: Value error, must be a whole number"),
        ({"batch": 4}, "bad.json: serving.batch: Extra inputs are not permitted"),
        ({"max_queue_size": 2}, "bad.json: serving.max_queue_size (2) must be at least max_files_per_request (16)"),
    ],
)
def test_an_invalid_serving_section_stops_start_up_naming_the_file_and_field(
    start_server, tmp_path, make_classifier, gray_spec, section, message
):
    make_classifier(tmp_path / "bad.onnx", gray_spec)
    (tmp_path / "bad.json").write_text(json.dumps({"serving": section}))
    server = start_server("--model-dir", str(tmp_path))
    assert server.wait_exit() == 3
    assert message in server.log()
