"""Clients that leave: in the middle of their upload, and while their images wait in the queue.

Whatever a request held (its socket, its share of the upload byte budget, its queue room, its images) must be
given back when its client goes, and its queued images dropped before inference: afterwards the server's open
file descriptors and threads are back where they were and no upload bytes are held.
"""

from __future__ import annotations

import contextlib
import socket
import struct

from tests.reliability.harness import (
    MODEL,
    classify_request,
    connect,
    delta,
    exchange,
    metrics,
    poll,
    probe,
    request_bytes,
)

BATCH = 8
"""--max-batch-size; with a long --max-batch-delay-ms an image waits in the queue until a full batch is there."""
QUEUE_DEPTH = ("resnet_serve_queue_depth", (("model", MODEL),))
MID_UPLOAD = 5
QUEUED = 3


def reset_on_close(connection: socket.socket) -> None:
    """Make close() send a TCP reset instead of a FIN: the rudest way to leave."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_clients_leaving_mid_upload_and_while_queued_give_back_every_resource(ready_server, example_pngs):
    """Attack: five clients send half of a classify upload and vanish (some with FIN, some with a TCP reset);
    three send a whole image, wait until it is queued (a batch waits for 8 images, up to 10 s), and vanish. The
    server must give back everything: upload bytes in flight back to 0, the queued images of the gone clients
    dropped unrun (the next full batch runs 8 images, not 11), and its open file descriptors and threads back to
    their counts before the attack."""
    server = ready_server(
        "--max-batch-size",
        str(BATCH),
        "--max-batch-delay-ms",
        "10000",
        "--decode-threads",
        "2",
        "--request-timeout-s",
        "60",
    )
    png = example_pngs["sneaker"]
    full_batch = classify_request([(f"{i}.png", png) for i in range(BATCH)])
    # Warm up what is made on first use (both decode threads, the app's worker threads), then count.
    assert exchange(server.port, full_batch).status == 200
    process = probe(server)
    metrics(server.port)
    fds, threads = process.open_fds(), process.threads()
    before = metrics(server.port)

    with contextlib.ExitStack() as stack:
        upload = request_bytes("POST", "/v1/classify", content_type="image/png", body=png)
        half = len(upload) - len(png) // 2
        for leaver in range(MID_UPLOAD):
            connection = stack.enter_context(connect(server.port))
            if leaver % 2:
                reset_on_close(connection)
            connection.sendall(upload[:half])
            # One at a time: this upload holds its declared bytes once the server has admitted it.
            held = (leaver + 1) * len(png)
            poll(
                lambda held=held: metrics(server.port)[("resnet_serve_inflight_upload_bytes", ())] == held,
                "the half-sent upload to be admitted",
            )
    poll(
        lambda: metrics(server.port)[("resnet_serve_inflight_upload_bytes", ())] == 0,
        "the upload bytes of the clients that left to be given back",
    )

    with contextlib.ExitStack() as stack:
        for leaver in range(QUEUED):
            connection = stack.enter_context(connect(server.port))
            if leaver % 2:
                reset_on_close(connection)
            connection.sendall(classify_request([("queued.png", png)]))
            queued = leaver + 1
            poll(lambda queued=queued: metrics(server.port)[QUEUE_DEPTH] == queued, "the image to be queued")
    gone = MID_UPLOAD + QUEUED
    poll(
        lambda: (
            delta(before, metrics(server.port), "resnet_serve_rejections_total", reason="client_disconnected") == gone
        ),
        "the server to notice that every client left",
    )

    # A full batch runs at once; the queued images of the clients that left are dropped, not run with it.
    assert exchange(server.port, full_batch).status == 200
    after = metrics(server.port)
    assert delta(before, after, "resnet_serve_images_inferred_total", model=MODEL) == BATCH
    assert delta(before, after, "resnet_serve_images_decoded_total", model=MODEL) == QUEUED + BATCH
    assert (
        delta(before, after, "resnet_serve_dropped_images_total", model=MODEL, reason="client_disconnected") == QUEUED
    )
    assert after[("resnet_serve_inflight_upload_bytes", ())] == 0
    poll(lambda: process.open_fds() <= fds, f"the server's open file descriptors to return to {fds}")
    poll(lambda: process.threads() <= threads, f"the server's threads to return to {threads}")
