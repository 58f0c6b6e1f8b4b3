"""The classify and model endpoints of a real server over real (tiny) ONNX models.

Expected scores are computed offline, independently of the service's code: torchvision's preprocessing and an
onnxruntime session opened here on the same file.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torchvision import transforms

from service.modelspec import ModelSpec

SCORE_TOLERANCE = 1e-3


def encode(image: Image.Image, format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def offline_probabilities(model_path, spec: ModelSpec, encoded: list[bytes]) -> np.ndarray:
    interpolation = {
        "bilinear": transforms.InterpolationMode.BILINEAR,
        "bicubic": transforms.InterpolationMode.BICUBIC,
        "nearest": transforms.InterpolationMode.NEAREST,
    }[spec.interpolation]
    pipeline = transforms.Compose(
        [
            transforms.Resize(spec.resize_size, interpolation=interpolation, antialias=True),
            transforms.CenterCrop(spec.crop_size),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )
    with torch.no_grad():
        batch = torch.stack([pipeline(Image.open(io.BytesIO(data)).convert(spec.color_mode)) for data in encoded])
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits = session.run([spec.output_name], {spec.input_name: batch.numpy()})[0].astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def probabilities_from(result: dict, num_classes: int) -> np.ndarray:
    vector = np.full(num_classes, np.nan)
    for entry in result["top_k"]:
        vector[entry["index"]] = entry["score"]
    return vector


def assert_ranked(result: dict, labels: list[str], k: int) -> None:
    ranked = result["top_k"]
    assert len(ranked) == k
    assert [e["score"] for e in ranked] == sorted((e["score"] for e in ranked), reverse=True)
    for entry in ranked:
        assert entry["label"] == labels[entry["index"]]


def test_multi_file_upload_answers_each_image_in_upload_order(tiny_server, serving_repository, rgb_spec, photos):
    small_cat = photos["chelsea"].resize((100, 66))  # small enough that JPEG draft decoding does not apply
    uploads = [
        ("astronaut.png", encode(photos["astronaut"], "PNG"), "image/png"),
        ("cat.jpg", encode(small_cat, "JPEG", quality=92), "image/jpeg"),
        ("coffee.webp", encode(photos["coffee"], "WEBP", lossless=True), "image/webp"),
        ("cat.gif", encode(small_cat, "GIF"), "image/gif"),
    ]
    response = httpx.post(
        f"{tiny_server.url}/v1/models/tiny-rgb/classify",
        params={"top_k": 5},
        files=[("file", upload) for upload in uploads],
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-rgb"
    assert [r["filename"] for r in body["results"]] == [u[0] for u in uploads]
    assert [(r["width"], r["height"]) for r in body["results"]] == [(512, 512), (100, 66), (600, 400), (100, 66)]
    expected = offline_probabilities(serving_repository / "tiny-rgb.onnx", rgb_spec, [u[1] for u in uploads])
    for result, probabilities in zip(body["results"], expected, strict=False):
        assert_ranked(result, rgb_spec.labels, 5)
        np.testing.assert_allclose(probabilities_from(result, 5), probabilities, atol=SCORE_TOLERANCE)
    timings = body["timings_ms"]
    assert set(timings) == {"preprocess", "queue_wait", "inference", "total"}
    assert all(value >= 0 for value in timings.values())
    assert timings["total"] >= timings["inference"]


@pytest.mark.parametrize("format,media_type", [("PNG", "image/png"), ("BMP", "image/bmp"), ("TIFF", "image/tiff")])
def test_raw_body_upload(tiny_server, serving_repository, gray_spec, photos, format, media_type):
    data = encode(photos["coffee"].resize((90, 60)), format)
    response = httpx.post(
        f"{tiny_server.url}/v1/models/tiny-gray/classify",
        params={"top_k": 10},
        content=data,
        headers={"Content-Type": media_type},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["filename"] is None
    assert (result["width"], result["height"]) == (90, 60)
    assert_ranked(result, gray_spec.labels, 10)
    expected = offline_probabilities(serving_repository / "tiny-gray.onnx", gray_spec, [data])[0]
    np.testing.assert_allclose(probabilities_from(result, 10), expected, atol=SCORE_TOLERANCE)


def test_default_model_is_the_first_by_name_and_top_k_defaults_to_five(tiny_server, to_png):
    pixels = np.random.default_rng(3).integers(0, 256, (28, 28), dtype=np.uint8)
    response = httpx.post(
        f"{tiny_server.url}/v1/classify", files={"file": ("x.png", to_png(pixels), "image/png")}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-gray"
    assert len(body["results"][0]["top_k"]) == 5


def test_sidecar_only_model_is_served_with_the_sidecar_labels(tiny_server, to_png):
    pixels = np.random.default_rng(4).integers(0, 256, (28, 28), dtype=np.uint8)
    response = httpx.post(
        f"{tiny_server.url}/v1/models/tiny-sidecar/classify",
        params={"top_k": 3},
        files={"file": ("x.png", to_png(pixels), "image/png")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert all(e["label"].startswith("sidecar-") for e in response.json()["results"][0]["top_k"])


def test_model_list_describes_every_model(tiny_server, rgb_spec):
    response = httpx.get(f"{tiny_server.url}/v1/models", timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["default_model"] == "tiny-gray"
    by_name = {m["name"]: m for m in body["models"]}
    assert list(by_name) == ["tiny-gray", "tiny-rgb", "tiny-sidecar"]
    for model in by_name.values():
        assert model["ready"] is True
        assert model["state"] == "ready"
        assert model["execution_provider"] == "CPUExecutionProvider"
        assert model["batching"]["max_batch_size"] == 8
        assert model["batching"]["max_queue_size"] == 256
    assert by_name["tiny-gray"]["default"] is True
    assert by_name["tiny-sidecar"]["dataset"] == "from sidecar"
    rgb = by_name["tiny-rgb"]
    assert rgb["labels"] == rgb_spec.labels
    assert rgb["input"] == {"name": "input", "shape": [None, 3, 32, 32], "dtype": "float32"}
    assert rgb["preprocessing"] == {
        "color_mode": "RGB",
        "resize_size": 36,
        "crop_size": 32,
        "interpolation": "bicubic",
        "mean": rgb_spec.mean,
        "std": rgb_spec.std,
    }


def test_one_model_by_name(tiny_server):
    response = httpx.get(f"{tiny_server.url}/v1/models/tiny-rgb", timeout=30)
    assert response.status_code == 200
    assert response.json()["name"] == "tiny-rgb"
    assert response.json()["default"] is False


def test_openapi_documents_the_api_with_its_response_models(tiny_server):
    schema = httpx.get(f"{tiny_server.url}/openapi.json", timeout=30).json()
    classify = schema["paths"]["/v1/models/{name}/classify"]["post"]
    assert set(classify["requestBody"]["content"]) == {"multipart/form-data", "image/*"}
    assert classify["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ClassifyResponse")
    for status in ("400", "404", "413", "415", "422", "503", "504"):
        assert classify["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
    for path in ("/v1/classify", "/v1/models", "/v1/models/{name}", "/healthz", "/readyz", "/metrics"):
        assert path in schema["paths"]
    docs = httpx.get(f"{tiny_server.url}/docs", timeout=30)
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
