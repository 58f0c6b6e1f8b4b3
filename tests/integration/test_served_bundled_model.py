"""The bundled Fashion-MNIST model, served exactly as a newcomer starts it (`python -m service`, no flags).

Test images are sent as PNG files; the server must give the labels and scores the model gives offline.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image

from tests.images import encode_png

FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MODEL = "fashion-mnist-resnet20"
SAMPLE = 320
FILES_PER_REQUEST = 16
SCORE_TOLERANCE = 1e-4


def probabilities_from(result: dict) -> np.ndarray:
    vector = np.full(len(FASHION_MNIST_LABELS), np.nan)
    for entry in result["top_k"]:
        vector[entry["index"]] = entry["score"]
    return vector


def test_the_bundled_model_is_served_by_default(bundled_server):
    body = httpx.get(f"{bundled_server.url}/v1/models", timeout=30).json()
    assert body["default_model"] == MODEL
    (model,) = body["models"]
    assert model["name"] == MODEL
    assert model["labels"] == FASHION_MNIST_LABELS
    assert model["input"]["shape"] == [None, 1, 28, 28]
    assert model["preprocessing"]["color_mode"] == "L"
    assert model["ready"] is True


def test_fashion_mnist_pngs_get_the_labels_the_model_gives_offline(
    bundled_server, fashion_mnist_test, bundled_offline_probabilities
):
    images, truth = fashion_mnist_test
    images, truth = images[:SAMPLE], truth[:SAMPLE]
    expected = bundled_offline_probabilities(images)

    def classify(start: int) -> list[dict]:
        files = [
            ("file", (f"test-{i}.png", encode_png(images[i]), "image/png"))
            for i in range(start, start + FILES_PER_REQUEST)
        ]
        response = httpx.post(
            f"{bundled_server.url}/v1/models/{MODEL}/classify", params={"top_k": 10}, files=files, timeout=120
        )
        assert response.status_code == 200, response.text
        return response.json()["results"]

    with ThreadPoolExecutor(max_workers=4) as clients:
        results = [r for batch in clients.map(classify, range(0, SAMPLE, FILES_PER_REQUEST)) for r in batch]

    assert [r["filename"] for r in results] == [f"test-{i}.png" for i in range(SAMPLE)]
    served = np.stack([probabilities_from(r) for r in results])
    np.testing.assert_allclose(served, expected, atol=SCORE_TOLERANCE)
    served_labels = [r["top_k"][0]["label"] for r in results]
    assert served_labels == [FASHION_MNIST_LABELS[i] for i in expected.argmax(axis=1)]
    accuracy = float(np.mean(expected.argmax(axis=1) == truth))
    assert accuracy >= 0.85, f"the bundled model gets {accuracy:.1%} of these test images right"


def test_a_shoe_photo_sized_upload_gets_the_right_label(
    bundled_server, fashion_mnist_test, bundled_offline_probabilities
):
    images, truth = fashion_mnist_test
    sneaker = FASHION_MNIST_LABELS.index("Sneaker")
    candidates = list(np.flatnonzero(truth == sneaker)[:20])
    # Like `curl -F file=@shoe.png`: a bigger picture than the model's input, downscaled by the server.
    shoe = np.asarray(Image.fromarray(images[candidates[0]], "L").resize((280, 280), Image.Resampling.BICUBIC))
    offline_label = FASHION_MNIST_LABELS[int(bundled_offline_probabilities(shoe[None])[0].argmax())]
    response = httpx.post(
        f"{bundled_server.url}/v1/classify", files={"file": ("shoe.png", encode_png(shoe), "image/png")}, timeout=60
    )
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert (result["width"], result["height"]) == (280, 280)
    assert result["top_k"][0]["label"] == offline_label == "Sneaker"


def test_raw_body_upload_of_a_test_image(bundled_server, fashion_mnist_test, bundled_offline_probabilities):
    images, _ = fashion_mnist_test
    image = images[SAMPLE]
    response = httpx.post(
        f"{bundled_server.url}/v1/classify",
        params={"top_k": 10},
        content=encode_png(image),
        headers={"Content-Type": "image/png"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    np.testing.assert_allclose(
        probabilities_from(result), bundled_offline_probabilities(image[None])[0], atol=SCORE_TOLERANCE
    )
