"""Worker threads run at a lower priority than the event loop, so that admitting and refusing requests never waits
for CPU behind decoding and inference (--worker-nice, 10 by default; 0 runs every thread alike)."""

from __future__ import annotations

import os

import httpx

from tests.reliability.harness import classify_request, exchange, probe

WORKER_NICE = 10
DECODE_THREADS = 2


def serve_a_request(server, example_pngs) -> dict[int, int]:
    """Classify enough images at once that every decode thread starts; then {thread id: nice} of the server."""
    files = [(f"{name}.png", png) for name, png in example_pngs.items()][:DECODE_THREADS] * 2
    assert exchange(server.port, classify_request(files)).status == 200
    return probe(server).thread_nices()


def intra_op_threads(server) -> int:
    (model,) = httpx.get(server.url + "/v1/models", timeout=30).json()["models"]
    return model["intra_op_threads"]


def test_decode_and_inference_threads_run_at_worker_nice_and_the_event_loop_does_not(ready_server, example_pngs):
    """After a request has been served with the default --worker-nice 10, the server's main thread (its event
    loop) must be at the nice value it was started with, and at least as many threads as ONNX Runtime has
    intra-op threads (its pool, the batcher and the decode threads) at that value + 10, and no thread at any other
    value."""
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the server inherits the test's nice value
    lowered = min(19, base + WORKER_NICE)
    server = ready_server("--decode-threads", str(DECODE_THREADS))
    nices = serve_a_request(server, example_pngs)
    assert server.process is not None
    assert nices[server.process.pid] == base, nices
    niced = [tid for tid, nice in nices.items() if nice == lowered]
    assert len(niced) >= intra_op_threads(server), nices
    assert set(nices.values()) == {base, lowered}, nices


def test_worker_nice_0_lowers_no_thread(ready_server, example_pngs):
    """With --worker-nice 0, after a request has been served, every thread of the server must still be at the
    nice value the server was started with."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    server = ready_server("--worker-nice", "0", "--decode-threads", str(DECODE_THREADS))
    nices = serve_a_request(server, example_pngs)
    assert len(nices) > 1
    assert set(nices.values()) == {base}, nices
