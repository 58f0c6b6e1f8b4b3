"""32 concurrent clients with distinct images each get their own answer (the bundled model, dynamic batching)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from tests.images import encode_png

CLIENTS = 32
TOLERANCE = 1e-4


def distinct_images(images: np.ndarray, probabilities, count: int) -> tuple[list[int], np.ndarray]:
    """Indices of `count` test images whose expected score vectors all differ by far more than the tolerance,
    so that any mix-up between clients shows."""
    chosen: list[int] = []
    vectors: list[np.ndarray] = []
    candidates = list(range(1000, 1400))
    expected = probabilities(images[candidates])
    for index, vector in zip(candidates, expected, strict=False):
        if all(np.max(np.abs(vector - other)) > 100 * TOLERANCE for other in vectors):
            chosen.append(index)
            vectors.append(vector)
        if len(chosen) == count:
            return chosen, np.stack(vectors)
    raise AssertionError("not enough distinct test images")


def test_32_concurrent_clients_each_get_their_own_answer(
    bundled_server, fashion_mnist_test, bundled_offline_probabilities, metrics_of
):
    images, _ = fashion_mnist_test
    indices, expected = distinct_images(images, bundled_offline_probabilities, CLIENTS)
    before = metrics_of(bundled_server.url)
    start_together = threading.Barrier(CLIENTS)

    def client(slot: int) -> dict:
        data = encode_png(images[indices[slot]])
        with httpx.Client(timeout=120) as http:
            start_together.wait()
            response = http.post(
                f"{bundled_server.url}/v1/classify",
                params={"top_k": 10},
                files={"file": (f"client-{slot}.png", data, "image/png")},
            )
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        answers = list(pool.map(client, range(CLIENTS)))

    for slot, (answer, own) in enumerate(zip(answers, expected, strict=False)):
        (result,) = answer["results"]
        assert result["filename"] == f"client-{slot}.png"
        served = np.full(10, np.nan)
        for entry in result["top_k"]:
            served[entry["index"]] = entry["score"]
        np.testing.assert_allclose(served, own, atol=TOLERANCE, err_msg=f"client {slot} got someone else's answer")

    after = metrics_of(bundled_server.url)
    key = ("resnet_serve_images_classified_total", (("model", "fashion-mnist-resnet20"),))
    assert after[key] - before.get(key, 0) == CLIENTS
