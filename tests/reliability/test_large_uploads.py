"""Many large uploads at once: each allowed alone, together far more than the server should hold.

The upload byte budget (--max-inflight-bytes, 128 MiB by default) admits what fits and refuses the rest at once
with 503 and Retry-After, from their Content-Length, before reading their bodies; memory stays bounded under the
load and returns to idle after it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.reliability import hostile_images
from tests.reliability.harness import (
    CLOSED_BY_PEER,
    HANG_LIMIT_S,
    MB,
    MiB,
    Response,
    classify_request,
    connect,
    delta,
    exchange,
    metrics,
    poll,
    probe,
    read_one_response,
    request_bytes,
)

CLIENTS = 32
DEFAULT_MAX_UPLOAD_BYTES = 32 * MiB
PEAK_LIMIT = 400 * MB
SETTLED_LIMIT = 100 * MB


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """A real ~30 MB PNG: 3150 x 3150 RGB noise, which does not compress."""
    png = hostile_images.noise_rgb(3150, 3150)
    assert 28 * MB < len(png) < DEFAULT_MAX_UPLOAD_BYTES
    return png


def upload(port: int, png: bytes, barrier: threading.Barrier) -> Response:
    """Send the head, wait until every client has sent theirs, then send the body (a refused client's writes end
    when the server closes the connection) and read the answer."""
    with connect(port) as connection:
        connection.sendall(request_bytes("POST", "/v1/classify", content_type="image/png", content_length=len(png)))
        barrier.wait(timeout=HANG_LIMIT_S)
        try:
            connection.sendall(png)
        except OSError as exc:
            if exc.errno not in CLOSED_BY_PEER:
                raise
        return read_one_response(connection)


def test_32_concurrent_30_mb_uploads_are_admitted_within_the_byte_budget_and_memory_stays_bounded(
    ready_server, big_png
):
    """Attack: 32 clients upload the same real 30 MB PNG at once (each under the default 32 MiB upload limit;
    together ~950 MB). Some must be admitted and answered 200 with the image's label; the rest refused with 503
    overloaded and Retry-After (the upload byte budget, 128 MiB by default); nothing else, no other 5xx. The
    server's peak RSS must stay within 400 MB of idle, and return within 100 MB of idle afterwards."""
    server = ready_server()
    reference = exchange(server.port, classify_request([("noise.png", big_png)]))
    assert reference.status == 200, reference
    label = reference.json()["results"][0]["top_k"][0]["label"]
    process = probe(server)
    idle = process.rss_bytes()
    before = metrics(server.port)

    barrier = threading.Barrier(CLIENTS)
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        outcomes = list(pool.map(lambda _: upload(server.port, big_png, barrier), range(CLIENTS)))
    peak = process.peak_rss_bytes() - idle

    admitted = [response for response in outcomes if response.status == 200]
    refused = [response for response in outcomes if response.status == 503]
    assert len(admitted) + len(refused) == CLIENTS, [r for r in outcomes if r.status not in (200, 503)]
    assert admitted and refused, f"{len(admitted)} admitted, {len(refused)} refused"
    for response in admitted:
        assert response.json()["results"][0]["top_k"][0]["label"] == label
    for response in refused:
        assert response.error_code == "overloaded", response
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers.get("connection") == "close"
    after = metrics(server.port)
    assert delta(before, after, "resnet_serve_http_requests_total", route="/v1/classify", status="503") == len(refused)
    assert delta(before, after, "resnet_serve_rejections_total", reason="overloaded") == len(refused)
    assert after[("resnet_serve_inflight_upload_bytes", ())] == 0
    assert peak <= PEAK_LIMIT, f"peak RSS {peak / MB:.0f} MB above idle under the upload storm"
    poll(lambda: process.rss_bytes() - idle <= SETTLED_LIMIT, "the server's RSS to return near idle")
