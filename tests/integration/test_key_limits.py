"""Per-key settings of the keys file on real servers: a key's rate holds over HTTP and gRPC together and over every
worker process (429 / RESOURCE_EXHAUSTED with Retry-After, counted by the key's name), and under load the batcher
runs the queued images of a high-priority key before those of a low-priority one that came earlier."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import tritonclient.grpc as tritongrpc
from tritonclient.utils import InferenceServerException

from service.config import Settings
from tests.images import random_png
from tests.integration.conftest import poll, scrape
from tests.integration.repository_files import free_port, write_version
from tests.integration.test_v2_grpc import GrpcServerProcess

LIMITED = "limited-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"
FREE = "free-key-0123456789abcdef"


def request_id_prefix(response: httpx.Response) -> str:
    """The worker process that answered: new request IDs are a per-process prefix and a counter."""
    return response.headers["x-request-id"].rsplit("-", 1)[0]


def test_a_key_s_rate_holds_over_both_protocols_and_every_worker(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"limited:{LIMITED} rate=8/hour priority=low\nfree:{FREE}\n")
    server = GrpcServerProcess(["--api-keys-file", str(keys), "--workers", "2"], tmp_path / "server.log")
    # (GrpcServerProcess asks for one worker; the later flag wins.)
    server.start()
    try:
        server.wait_ready()
        while True:
            started = time.time()
            statuses, answered_by, refusals = _spend_the_rate(server)
            if int(time.time() // 3600) == int(started // 3600):
                break  # else the hour's window moved on mid-test: the rate allows more; once more (new hour)
        assert len(answered_by) == 2, "both workers answered: the rate is shared, not per process"
        assert statuses.count(200) == 8, statuses  # over 30 requests, HTTP and gRPC, from both workers
        refusal = refusals[0]
        assert refusal.status_code == 429 and 1 <= int(refusal.headers["retry-after"]) <= 3600
        error = refusal.json()["error"]
        assert error["code"] == "rate_limited" and "'limited' may make 8 requests per hour" in error["message"]
        assert LIMITED not in refusal.text

        with pytest.raises(InferenceServerException) as refused:
            tritongrpc.InferenceServerClient(server.grpc_url).get_model_metadata(
                "fashion-mnist-resnet20", headers={"x-api-key": LIMITED}
            )
        assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "may make 8 requests per hour" in refused.value.message()

        # Another key is not held back, and the refusals are counted by the key's name.
        assert httpx.get(server.url + "/v1/models", headers={"X-API-Key": FREE}).status_code == 200
        samples = scrape(server.url)
        assert samples[("resnet_serve_api_key_rate_limited_total", (("key", "limited"),))] >= 22
        assert samples[("resnet_serve_api_key_requests_total", (("key", "limited"),))] == 8
        assert samples[("resnet_serve_rejections_total", (("reason", "rate_limited"),))] >= 22
        assert LIMITED not in httpx.get(server.url + "/metrics").text
    finally:
        server.kill()


def _spend_the_rate(server: GrpcServerProcess) -> tuple[list[int], set[str], list[httpx.Response]]:
    """30 requests of the limited key: 25 over HTTP, each on a new connection (so that both workers take some),
    and 5 over gRPC. Returns every status, the workers that answered over HTTP, and the HTTP refusals."""
    statuses: list[int] = []
    answered_by: set[str] = set()
    refusals: list[httpx.Response] = []
    for _ in range(25):
        response = httpx.get(server.url + "/v1/models", headers={"X-API-Key": LIMITED}, timeout=30)
        statuses.append(response.status_code)
        answered_by.add(request_id_prefix(response))
        if response.status_code == 429:
            refusals.append(response)
    client = tritongrpc.InferenceServerClient(server.grpc_url)
    for _ in range(5):
        try:
            client.get_server_metadata(headers={"authorization": f"Bearer {LIMITED}"})
            statuses.append(200)
        except InferenceServerException as exc:
            statuses.append(429 if exc.status() == "StatusCode.RESOURCE_EXHAUSTED" else 0)
    return statuses, answered_by, refusals


def test_under_load_a_high_priority_key_is_served_before_a_low_priority_one(in_thread_server, serving_repository):
    settings = Settings(
        model_dir=serving_repository,
        max_batch_size=1,
        api_keys="low:low-priority-key priority=low, high:high-priority-key priority=high",
        access_log=False,
    )
    server = in_thread_server(settings).start()
    runtime = server.runtimes["tiny-gray"]
    url = server.url
    poll(lambda: httpx.get(url + "/readyz").status_code == 200, "the server to be ready")
    runtime.run_gate.clear()

    def classify(key: str, seed: int) -> dict:
        response = httpx.post(
            url + "/v1/models/tiny-gray/classify",
            headers={"X-API-Key": key},
            files={"file": (f"{seed}.png", random_png(seed), "image/png")},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def queued() -> int:
        description = httpx.get(url + "/v1/models/tiny-gray", headers={"X-API-Key": "high-priority-key"}).json()
        return description["batching"]["queue_depth"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        holding = pool.submit(classify, "low-priority-key", 0)
        runtime.wait_for_batch()  # the model is busy with it; what comes now queues
        low = [pool.submit(classify, "low-priority-key", seed) for seed in range(1, 4)]
        poll(lambda: queued() == 3, "the low-priority images to queue")
        high = [pool.submit(classify, "high-priority-key", seed) for seed in range(4, 7)]
        poll(lambda: queued() == 6, "the high-priority images to queue")
        runtime.run_gate.set()
        holding.result()
        low_waits = [future.result()["timings_ms"]["queue_wait"] for future in low]
        high_waits = [future.result()["timings_ms"]["queue_wait"] for future in high]
    # Queued later, run first: every high-priority image waited less than every low-priority one queued before it.
    assert max(high_waits) < min(low_waits), (high_waits, low_waits)
    assert runtime.batch_sizes == [1] * 7


def test_only_an_admin_key_loads_and_unloads_models_over_http_and_grpc(
    start_server, tmp_path, make_classifier, gray_spec
):
    write_version(tmp_path / "models" / "m", make_classifier, gray_spec, 1)
    keys = tmp_path / "keys"
    keys.write_text(f"ops:{ADMIN} role=admin\nci:{FREE}\n")
    grpc_port = free_port()
    server = start_server(
        "--workers",
        "1",
        "--model-dir",
        str(tmp_path / "models"),
        "--model-control-mode",
        "explicit",
        "--api-keys-file",
        str(keys),
        "--grpc-port",
        str(grpc_port),
    ).wait_ready()
    unload = f"{server.url}/v2/repository/models/m/unload"
    over_grpc = tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")

    assert httpx.post(unload, timeout=60).status_code == 401  # no key
    refused = httpx.post(unload, headers={"X-API-Key": FREE}, timeout=60)  # an infer key (the default role)
    assert refused.status_code == 403 and "that needs a key with role=admin" in refused.text
    with pytest.raises(InferenceServerException) as forbidden:
        over_grpc.unload_model("m", headers={"x-api-key": FREE})
    assert forbidden.value.status() == "StatusCode.PERMISSION_DENIED"
    assert (
        httpx.post(
            server.url + "/v1/classify",
            headers={"X-API-Key": FREE},
            files={"file": ("x.png", random_png(1), "image/png")},
        ).status_code
        == 200
    )  # and it classifies

    assert httpx.post(unload, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60).status_code == 200
    assert httpx.get(server.url + "/v1/models/m", headers={"X-API-Key": ADMIN}).status_code == 404
    over_grpc.load_model("m", headers={"authorization": f"Bearer {ADMIN}"})
    poll(lambda: over_grpc.is_model_ready("m", headers={"x-api-key": ADMIN}), "the model to be loaded again")

    keys.write_text(f"ops:{ADMIN} role=root\n")  # a broken rewrite is refused, naming the entry, never the key
    poll(
        lambda: (
            httpx.get(server.url + "/v1/models", headers={"X-API-Key": ADMIN}).status_code == 200
            and "role must be infer or admin, got 'root'" in server.log()
        ),
        "the broken rewrite to be logged",
    )
    assert ADMIN not in server.log() and FREE not in server.log()
