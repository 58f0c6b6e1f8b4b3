"""A burst against a tiny queue: the requests that do not fit must be refused before any of their images is
decoded, each with 503 and Retry-After.

Server: --max-queue-size 2 --max-files-per-request 2 --max-batch-size 1, and every request carries 2 images, so
one request in progress fills the model's room. The decode counter then tells exactly whose images were decoded.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

from tests.reliability.harness import (
    MODEL,
    MULTIPART,
    classify_request,
    connect,
    delta,
    exchange,
    metrics,
    multipart_body,
    poll,
    read_one_response,
    request_bytes,
)

IMAGES_PER_REQUEST = 2
HELD_BURST = 16
FREE_BURST = 24


def test_refusals_in_a_burst_happen_before_decoding_and_say_when_to_retry(ready_server, example_pngs):
    """Attack: while one request holds the model's whole room (its upload is half sent, both of its image parts
    already counted), 16 requests of 2 images arrive at once; then, with nothing held, 24 more at once. Every
    answer must be 200 or 503 overloaded with Retry-After; the 16 must all be refused; and the images decoded must
    be exactly those of the requests answered 200 (none of a refused request), all of them run through the model."""
    server = ready_server(
        "--max-queue-size", "2", "--max-files-per-request", str(IMAGES_PER_REQUEST), "--max-batch-size", "1"
    )
    files = [("sneaker.png", example_pngs["sneaker"]), ("bag.png", example_pngs["bag"])]
    request = classify_request(files)
    before = metrics(server.port)
    answers = []

    with contextlib.ExitStack() as stack:
        # The holder sends its body chunked, so that the server counts the bytes it has read: once the count
        # reaches what was sent, both image parts have been parsed and both are counted against the room.
        body = multipart_body(files)
        held = body.index(files[1][1]) + 10
        holder = stack.enter_context(connect(server.port))
        holder.sendall(
            request_bytes("POST", "/v1/classify", content_type=MULTIPART, headers={"Transfer-Encoding": "chunked"})
            + b"%x\r\n" % held
            + body[:held]
            + b"\r\n"
        )
        poll(
            lambda: metrics(server.port)[("resnet_serve_inflight_upload_bytes", ())] == held,
            "the holder's first bytes to be read",
        )

        with ThreadPoolExecutor(max_workers=HELD_BURST) as pool:
            held_burst = list(pool.map(lambda _: exchange(server.port, request), range(HELD_BURST)))
        assert [r.status for r in held_burst] == [503] * HELD_BURST, held_burst
        answers += held_burst

        rest = body[held:]
        holder.sendall(b"%x\r\n" % len(rest) + rest + b"\r\n0\r\n\r\n")
        answers.append(read_one_response(holder))
        assert answers[-1].status == 200, answers[-1]

    with ThreadPoolExecutor(max_workers=FREE_BURST) as pool:
        answers += pool.map(lambda _: exchange(server.port, request), range(FREE_BURST))

    succeeded = [r for r in answers if r.status == 200]
    refused = [r for r in answers if r.status == 503]
    assert len(succeeded) + len(refused) == len(answers), [r for r in answers if r.status not in (200, 503)]
    for response in refused:
        assert response.error_code == "overloaded", response
        assert int(response.headers["retry-after"]) >= 1
    after = metrics(server.port)
    decoded = delta(before, after, "resnet_serve_images_decoded_total", model=MODEL)
    assert decoded == IMAGES_PER_REQUEST * len(succeeded), (
        f"{decoded} images decoded for {len(succeeded)} requests answered 200 and {len(refused)} refused"
    )
    assert delta(before, after, "resnet_serve_images_inferred_total", model=MODEL) == decoded
    assert delta(before, after, "resnet_serve_rejections_total", reason="overloaded") == len(refused)
