"""A model gives back the memory its batches held once it idles (`batch_memory_release_s`), on a real server whose
real ONNX runtime the test holds at will, so that a batch of several images is a fact the test arranges."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.config import Settings
from tests.images import random_png


@pytest.fixture
def single_model_dir(tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "gray.onnx", gray_spec, seed=5)
    return tmp_path


def post(url: str, seed: int) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/gray/classify", files={"file": ("x.png", random_png(seed), "image/png")}, timeout=120
    )


def top_labels(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [entry["label"] for entry in response.json()["results"][0]["top_k"]]


def tuned(url: str) -> bool:
    return httpx.get(f"{url}/v1/models/gray", timeout=30).json()["batching"]["max_batch_size_source"] == "auto"


def test_after_a_batch_of_several_images_the_idle_model_gives_their_memory_back_once(
    in_thread_server, single_model_dir, wait_until
):
    server = in_thread_server(
        Settings(model_dir=single_model_dir, max_batch_size=4, batch_memory_release_s=0.2)
    ).start()
    runtime = server.runtimes["gray"]
    wait_until(lambda: httpx.get(server.url + "/readyz", timeout=30).status_code == 200, "readiness")
    expected = {seed: top_labels(post(server.url, seed)) for seed in range(4)}  # lone requests: batches of one
    time.sleep(1.0)
    assert runtime.memory_releases == 0  # a batch of one holds no more than warm-up left

    runtime.run_gate.clear()
    with ThreadPoolExecutor(max_workers=4) as clients:
        first = clients.submit(post, server.url, 0)
        runtime.wait_for_batch()
        queued = [clients.submit(post, server.url, seed) for seed in (1, 2, 3)]
        wait_until(
            lambda: httpx.get(f"{server.url}/v1/models/gray", timeout=30).json()["batching"]["queue_depth"] == 3,
            "three images queued",
        )
        runtime.run_gate.set()
        answers = [first.result(), *(future.result() for future in queued)]
    assert runtime.batch_sizes[-2:] == [1, 3]
    assert [top_labels(answer) for answer in answers] == [expected[seed] for seed in range(4)]

    wait_until(lambda: runtime.memory_releases == 1, "the idle model to give its batch memory back")
    time.sleep(1.0)
    assert runtime.memory_releases == 1  # once per idle period, not again while nothing runs
    assert top_labels(post(server.url, 2)) == expected[2]  # the model serves as before


def test_auto_batch_tuning_gives_back_what_the_sizes_it_tried_held(in_thread_server, single_model_dir, wait_until):
    server = in_thread_server(Settings(model_dir=single_model_dir)).start()
    runtime = server.runtimes["gray"]

    wait_until(lambda: tuned(server.url), "batch-size tuning to finish")
    wait_until(lambda: runtime.memory_releases == 1, "the memory of the sizes tried to be given back")
    assert runtime.batch_sizes == []  # no served batch: tuning's own runs held it


def test_zero_keeps_the_memory(in_thread_server, single_model_dir, wait_until):
    server = in_thread_server(Settings(model_dir=single_model_dir, batch_memory_release_s=0)).start()
    runtime = server.runtimes["gray"]

    wait_until(lambda: tuned(server.url), "batch-size tuning to finish")
    with ThreadPoolExecutor(max_workers=8) as clients:
        answers = list(clients.map(lambda seed: post(server.url, seed), range(16)))
    assert {answer.status_code for answer in answers} == {200}
    time.sleep(1.0)
    assert runtime.memory_releases == 0
