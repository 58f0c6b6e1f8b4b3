"""API keys, request IDs and JSON logs on a real server: every protected route, both header forms, rotation of
the keys file while the server runs, open probes, the metrics flag, and a request traced from the client's
X-Request-ID header to its log lines."""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest

from tests.images import random_png

GOOD = "good-key-0123456789abcdef"
OTHER = "second-key-fedcba9876543210"


@pytest.fixture
def keyed_server(start_server, tiny_model_dir, tmp_path):
    keys = tmp_path / "api-keys"
    keys.write_text(f"# the CI's key\nci:{GOOD}\n")
    server = start_server("--model-dir", str(tiny_model_dir), "--api-keys-file", str(keys), "--log-format", "json")
    server.keys_file = keys
    return server.wait_ready()


def log_entries(server) -> list[dict]:
    entries = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


PROTECTED = [
    ("POST", "/v1/classify"),
    ("POST", "/v1/models/tiny-gray/classify"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/tiny-gray"),
    ("GET", "/v2"),
    ("GET", "/v2/models/tiny-gray"),
    ("GET", "/v2/models/tiny-gray/ready"),
    ("POST", "/v2/models/tiny-gray/infer"),
]


@pytest.mark.parametrize("method,path", PROTECTED)
def test_every_protected_route_refuses_a_missing_or_wrong_key(keyed_server, method, path, metrics_of):
    before = metrics_of(keyed_server.url)[("resnet_serve_images_decoded_total", (("model", "tiny-gray"),))]
    files = {"file": ("x.png", random_png(1), "image/png")} if path.endswith("classify") else None
    for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": GOOD[:-1]}, {"Authorization": GOOD}):
        response = httpx.request(method, keyed_server.url + path, headers=headers, files=files, timeout=30)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == 'Bearer realm="resnet-serve"'
        body = response.json()
        message = body["error"] if path.startswith("/v2") else body["error"]["message"]
        assert "requires an API key" in message
        assert GOOD not in response.text and "nope" not in response.text
    # Refused before any of the body is read: nothing was decoded.
    after = metrics_of(keyed_server.url)[("resnet_serve_images_decoded_total", (("model", "tiny-gray"),))]
    assert after == before


def test_both_header_forms_are_accepted_and_counted_by_name(keyed_server, metrics_of):
    for headers in ({"Authorization": f"Bearer {GOOD}"}, {"authorization": f"bearer {GOOD}"}, {"X-API-Key": GOOD}):
        response = httpx.post(
            f"{keyed_server.url}/v1/classify",
            headers=headers,
            timeout=30,
            files={"file": ("x.png", random_png(2), "image/png")},
        )
        assert response.status_code == 200, response.text
    metrics = metrics_of(keyed_server.url)  # /metrics is open by default, keys or not
    assert metrics[("resnet_serve_api_key_requests_total", (("key", "ci"),))] >= 3
    assert GOOD not in httpx.get(keyed_server.url + "/metrics", timeout=30).text
    assert metrics[("resnet_serve_rejections_total", (("reason", "unauthorized"),))] >= 0


def test_probes_page_and_docs_stay_open(keyed_server):
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json"):
        assert httpx.get(keyed_server.url + path, timeout=30).status_code == 200, path


def test_the_keys_file_rotates_without_a_restart(keyed_server, wait_until):
    keyed_server.keys_file.write_text(f"ci-next:{OTHER}\n")
    os.utime(keyed_server.keys_file, ns=(10**18, 10**18))

    def rotated() -> bool:
        return httpx.get(keyed_server.url + "/v1/models", headers={"X-API-Key": OTHER}, timeout=30).status_code == 200

    wait_until(rotated, "the new key to be accepted")
    assert httpx.get(keyed_server.url + "/v1/models", headers={"X-API-Key": GOOD}, timeout=30).status_code == 401
    assert "API keys file" in keyed_server.log() and OTHER not in keyed_server.log()


def test_metrics_can_require_a_key(start_server, tiny_model_dir, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"ci:{GOOD}\n")
    server = start_server(
        "--model-dir", str(tiny_model_dir), "--api-keys-file", str(keys), "--metrics-require-key"
    ).wait_ready()
    assert httpx.get(server.url + "/metrics", timeout=30).status_code == 401
    assert httpx.get(server.url + "/metrics", headers={"X-API-Key": GOOD}, timeout=30).status_code == 200
    assert httpx.get(server.url + "/readyz", timeout=30).status_code == 200


def test_a_request_is_traced_from_its_header_to_its_json_log_line(keyed_server, wait_until):
    rid = "trace-me-42"
    response = httpx.post(
        f"{keyed_server.url}/v1/models/tiny-gray/classify?top_k=2",
        timeout=30,
        headers={"X-API-Key": GOOD, "X-Request-ID": rid},
        files={"file": ("x.png", random_png(3), "image/png")},
    )
    assert response.status_code == 200 and response.headers["x-request-id"] == rid

    def access_line() -> dict | None:
        return next(
            (e for e in log_entries(keyed_server) if e.get("request_id") == rid and e["logger"] == "service.access"),
            None,
        )

    line = wait_until(access_line, "the access line")
    assert line["level"] == "info" and line["time"].endswith("Z")
    assert line["method"] == "POST" and line["path"] == "/v1/models/tiny-gray/classify?top_k=2"
    assert line["status"] == 200 and line["model"] == "tiny-gray" and line["images"] == 1
    assert line["api_key"] == "ci" and line["protocol"] == "v1"
    assert line["bytes"]["received"] > 0 and line["bytes"]["sent"] == len(response.content)
    assert line["latency_ms"] > 0 and set(line["timings_ms"]) == {"preprocess", "queue_wait", "inference", "total"}
    assert line["client"].startswith("127.0.0.1:")
    assert GOOD not in keyed_server.log()


def test_request_ids_are_made_when_missing_or_invalid_and_appear_in_errors(keyed_server):
    made = [
        httpx.get(keyed_server.url + "/v1/models", headers={"X-API-Key": GOOD}, timeout=30).headers["x-request-id"]
        for _ in range(3)
    ]
    assert len(set(made)) == 3 and all(re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]+", rid) for rid in made)
    for bad in ("has spaces", "x" * 129, "semi;colon"):
        response = httpx.get(
            keyed_server.url + "/v1/models/nope", headers={"X-API-Key": GOOD, "X-Request-ID": bad}, timeout=30
        )
        assert response.status_code == 404
        rid = response.headers["x-request-id"]
        assert rid != bad and response.json()["error"]["request_id"] == rid
    v2 = httpx.post(
        f"{keyed_server.url}/v2/models/tiny-gray/infer",
        timeout=30,
        headers={"X-API-Key": GOOD, "X-Request-ID": "v2-trace"},
        json={"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]},
    )
    assert v2.status_code == 200 and v2.json()["id"] == "v2-trace"  # the V2 id, when the request gave none
