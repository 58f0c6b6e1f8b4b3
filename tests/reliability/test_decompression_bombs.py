"""Decompression bombs beside ordinary traffic: images that are small on the wire and huge in memory.

The server must refuse the hostile ones with 413 or 400 (never 500), decode the big-but-legal ones without
holding more memory than its decode budget (--max-decode-bytes) allows, and answer every ordinary request right
while they run. Each test gets a fresh server, so that the peak RSS it reads (VmHWM) is its own.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.reliability import hostile_images
from tests.reliability.harness import MB, MiB, classify_request, delta, exchange, metrics, poll, probe

SIDE = 7000
"""7000 x 7000 = 49 Mpx, just under the default pixel limit of 50 Mpx."""
MAX_DECODE_BYTES = 384 * MiB
"""The server's default, given explicitly: the memory bounds below are stated in its terms."""

HOSTILE = {
    # name: (how to build it, expected status, expected code)
    "declares-10-gigapixels": (lambda: hostile_images.declaring(100_000, 100_000), 413, "image_too_large"),
    "declares-56-megapixels": (lambda: hostile_images.declaring(8000, 7000), 413, "image_too_large"),
    "zip-bomb-in-a-text-chunk": (hostile_images.text_bomb, 400, "invalid_image"),
    "truncated-49-megapixels": (lambda: hostile_images.truncated_rgb(SIDE, SIDE), 400, "invalid_image"),
    # Decoded (4 bytes a pixel), converted to grey (1) and rotated (4): ~441 MB, over the decode budget alone.
    "rotated-49-megapixels": (lambda: hostile_images.rotated_rgb(SIDE, SIDE), 413, "image_too_large"),
}
HEAVY_BUT_LEGAL = {
    # name: (how to build it, copies sent at once)
    "black-rgb-49-megapixels": (lambda: hostile_images.zeros_rgb(SIDE, SIDE), 4),  # 196 MB decoded, ~140 KB sent
    "gray16-49-megapixels": (lambda: hostile_images.gray16(SIDE, SIDE), 2),  # 98 MB decoded, ~100 KB sent
}
STORM_PEAK_LIMIT = MAX_DECODE_BYTES + 192 * MiB
"""Decodes in flight may hold the decode budget together; uploads, tensors, failed decodes on their way out and
the allocator's slack get 192 MiB. Four black 49 Mpx images decoded at once outside the budget take ~800 MB."""
GRAY16_PEAK_LIMIT = 256 * MiB
"""The 16-bit image's decoded pixels take 98 MB; converting them to 8 or 32 bits at full size (what used to happen,
+1.3 GB) would pass this."""
REFUSED_PEAK_LIMIT = 32 * MiB
"""An image refused by the decode budget is never decoded: its 196 MB of pixels must not appear at all."""
SETTLED_LIMIT = 100 * MB


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """Every hostile and heavy image of this module, built once."""
    built = {name: build() for name, (build, _, _) in HOSTILE.items()}
    built.update({name: build() for name, (build, _) in HEAVY_BUT_LEGAL.items()})
    return built


def classify(server, filename: str, png: bytes):
    return exchange(server.port, classify_request([(filename, png)]))


def top_label(response) -> str:
    assert response.status == 200, response
    return response.json()["results"][0]["top_k"][0]["label"]


def assert_full_size(response) -> None:
    assert response.status == 200, response
    result = response.json()["results"][0]
    assert (result["width"], result["height"]) == (SIDE, SIDE)


def test_16_bit_grey_image_of_49_megapixels_decodes_in_bounded_memory(ready_server, bombs):
    """Attack: a 16-bit greyscale PNG of 7000x7000 (about 100 KB on the wire, 98 MB of pixels), sent alone. It is
    a legal image: the server must answer 200 with its size, and its peak RSS must grow by well under 400 MB (at
    most 256 MiB: the decoded pixels and small copies; converting them at full size cost +1.3 GB)."""
    png = bombs["gray16-49-megapixels"]
    assert len(png) < 200_000
    server = ready_server("--max-decode-bytes", str(MAX_DECODE_BYTES))
    process = probe(server)
    baseline = process.rss_bytes()
    assert_full_size(classify(server, "gray16.png", png))
    growth = process.peak_rss_bytes() - baseline
    assert growth <= GRAY16_PEAK_LIMIT, f"peak RSS grew by {growth / MB:.0f} MB decoding a 100 KB image"


def test_image_over_the_decode_budget_is_refused_before_it_is_decoded(ready_server, bombs):
    """Attack: one black RGB PNG of 7000x7000 (~140 KB on the wire; decoded, 196 MB of pixels plus a 49 MB grey
    copy) against a server whose --max-decode-bytes is 128 MiB. The server must refuse it with 413
    image_too_large from its header, before decoding: the server's peak RSS must not grow by the image's pixels
    (at most 32 MiB)."""
    server = ready_server("--max-decode-bytes", str(128 * MiB))
    process = probe(server)
    baseline = process.rss_bytes()
    response = classify(server, "black.png", bombs["black-rgb-49-megapixels"])
    assert (response.status, response.error_code) == (413, "image_too_large"), response
    growth = process.peak_rss_bytes() - baseline
    assert growth <= REFUSED_PEAK_LIMIT, (
        f"peak RSS grew by {growth / MB:.0f} MB for an image refused as over the decode budget: it was decoded"
    )


def test_bombs_are_refused_beside_valid_traffic_which_gets_the_right_answers_in_bounded_memory(
    ready_server, bombs, example_pngs
):
    """Attack: two of each hostile PNG (headers declaring 10 Gpx and 56 Mpx, a zTXt chunk inflating to 64 MiB, a
    truncated 49 Mpx image, a 49 Mpx image whose EXIF rotation would double its memory), four black RGB and two
    16-bit grey PNGs of 49 Mpx (legal, ~100-140 KB on the wire), all at once beside two of each example image, on
    a server with eight decode threads (so that its byte budget, not its thread count, must bound decode memory).
    Each hostile image must get its 413 or 400, each legal one 200; every example image must get the label it got
    alone first; no request may get a 5xx; peak RSS must stay within the decode budget plus 192 MiB of idle, and
    settle back within 100 MB of idle."""
    server = ready_server("--decode-threads", "8", "--max-decode-bytes", str(MAX_DECODE_BYTES))
    references = {name: top_label(classify(server, f"{name}.png", png)) for name, png in example_pngs.items()}
    process = probe(server)
    idle = process.rss_bytes()
    before = metrics(server.port)

    jobs = (
        [(name, png) for name, png in example_pngs.items()] * 2
        + [(name, bombs[name]) for name in HOSTILE] * 2
        + [(name, bombs[name]) for name, (_, copies) in HEAVY_BUT_LEGAL.items() for _ in range(copies)]
    )
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        responses = list(pool.map(lambda job: (job[0], classify(server, f"{job[0]}.png", job[1])), jobs))
    peak = process.peak_rss_bytes() - idle

    for name, response in responses:
        if name in references:
            assert top_label(response) == references[name], (name, response)
        elif name in HOSTILE:
            _, status, code = HOSTILE[name]
            assert (response.status, response.error_code) == (status, code), (name, response)
        else:
            assert_full_size(response)
    after = metrics(server.port)
    server_errors = {
        labels: v - before.get((name, labels), 0)
        for (name, labels), v in after.items()
        if name == "resnet_serve_http_requests_total" and dict(labels)["status"].startswith("5")
    }
    assert not any(server_errors.values()), server_errors
    assert delta(before, after, "resnet_serve_rejections_total", reason="too_large") == 6
    assert delta(before, after, "resnet_serve_rejections_total", reason="invalid_image") == 4
    assert after[("resnet_serve_decode_memory_bytes", ())] == 0
    assert peak <= STORM_PEAK_LIMIT, (
        f"peak RSS {peak / MB:.0f} MB above idle, over the decode budget + 192 MiB ({STORM_PEAK_LIMIT / MB:.0f} MB)"
    )
    poll(lambda: process.rss_bytes() - idle <= SETTLED_LIMIT, "the server's RSS to settle back near idle")
