"""/metrics counts what was sent (deltas around a known set of requests on the shared server)."""

from __future__ import annotations

import io

import httpx
import numpy as np
from PIL import Image


def png(seed: int, side: int = 28, channels: int = 1) -> bytes:
    shape = (side, side) if channels == 1 else (side, side, channels)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_count_what_was_sent(tiny_server, metrics_of):
    url = tiny_server.url
    before = metrics_of(url)

    two_rgb = httpx.post(
        f"{url}/v1/models/tiny-rgb/classify",
        timeout=60,
        files=[
            ("file", ("a.png", png(1, 40, 3), "image/png")),
            ("file", ("b.png", png(2, 40, 3), "image/png")),
        ],
    )
    one_gray = httpx.post(f"{url}/v1/classify", content=png(3), headers={"Content-Type": "image/png"}, timeout=60)
    invalid = httpx.post(
        f"{url}/v1/models/tiny-gray/classify", timeout=60, files={"file": ("bad.png", b"not a png", "image/png")}
    )
    unknown = httpx.post(f"{url}/v1/models/nope/classify", timeout=60, files={"file": ("a.png", png(4), "image/png")})
    unsupported = httpx.post(f"{url}/v1/classify", content=b"x", headers={"Content-Type": "text/plain"}, timeout=60)
    assert [r.status_code for r in (two_rgb, one_gray, invalid, unknown, unsupported)] == [200, 200, 400, 404, 415]

    after = metrics_of(url)
    assert delta(before, after, "resnet_serve_images_classified_total", model="tiny-rgb") == 2
    assert delta(before, after, "resnet_serve_images_classified_total", model="tiny-gray") == 1
    requests = "resnet_serve_http_requests_total"
    assert delta(before, after, requests, route="/v1/models/{name}/classify", method="POST", status="200") == 1
    assert delta(before, after, requests, route="/v1/classify", method="POST", status="200") == 1
    assert delta(before, after, requests, route="/v1/models/{name}/classify", method="POST", status="400") == 1
    assert delta(before, after, requests, route="/v1/models/{name}/classify", method="POST", status="404") == 1
    assert delta(before, after, requests, route="/v1/classify", method="POST", status="415") == 1
    assert delta(before, after, "resnet_serve_http_request_duration_seconds_count", route="/v1/classify") == 2
    rejections = "resnet_serve_rejections_total"
    assert delta(before, after, rejections, reason="invalid_image") == 1
    assert delta(before, after, rejections, reason="unknown_model") == 1
    assert delta(before, after, rejections, reason="unsupported_type") == 1
    assert delta(before, after, rejections, reason="overloaded") == 0
    # Per stage: two images of tiny-rgb, one of tiny-gray (the invalid image never got past decoding).
    for stage in ("preprocess", "queue_wait"):
        assert delta(before, after, f"resnet_serve_{stage}_seconds_count", model="tiny-rgb") == 2
        assert delta(before, after, f"resnet_serve_{stage}_seconds_count", model="tiny-gray") == 1
    batches = delta(before, after, "resnet_serve_inference_seconds_count", model="tiny-rgb")
    assert batches == 1  # the two images of one request are admitted together and run together
    assert delta(before, after, "resnet_serve_batch_size_sum", model="tiny-rgb") == 2
    assert delta(before, after, "resnet_serve_batch_size_count", model="tiny-rgb") == batches
    assert after[("resnet_serve_queue_depth", (("model", "tiny-rgb"),))] == 0
    assert after[("resnet_serve_model_ready", (("model", "tiny-rgb"),))] == 1
    assert after[("resnet_serve_http_requests_in_flight", ())] == 0
