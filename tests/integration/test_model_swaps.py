"""Models that change without a restart: version 1 swapped for version 2, then 3, then 4, under traffic, in poll
mode and through the repository API, with one worker and with several, while Triton's own clients (HTTP and gRPC)
and /v1 clients keep sending requests at about 70% of what the server can answer. Versions have different labels,
so every answer says which version gave it.

What must hold: no request fails; every answer is one version's, whole; once a swap is over (the API call answered,
or the index says so in poll mode) no worker answers with an older version; the p99 latency during a swap is within
twice the steady p99 (windows of the same length in the same run, so that the machine's speed cancels out: the
swaps' median against the worst steady window); the older versions' memory is returned. And a corrupt version 5
leaves version 4 serving, with its reason in the index, /readyz at 200."""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
import tritonclient.http as tritonhttp

from tests.images import random_png
from tests.integration.conftest import poll
from tests.integration.repository_files import free_port, publish, stage_version, tree_rss_bytes, write_version

MODEL = "m"
LOAD_CLIENTS = 6
"""Two of each kind: tritonclient.http, tritonclient.grpc, /v1 over httpx."""
SWAPPED_IN = (2, 3, 4)
"""The versions published one after the other while version 1 serves: three swaps, so that the latency they cost is
a median, not one draw."""


@dataclass(frozen=True)
class Swap:
    version: str
    """The version swapped in."""
    started: float
    over: float
    """When the API answered, or (poll mode) every worker had it and no other."""


@dataclass
class Answer:
    started: float
    latency_s: float
    version: str | None
    """The version the answer's labels (and its version field) say; None for a failure."""
    error: str | None = None


@dataclass
class Traffic:
    """Clients sending at a fixed pace each, recording every answer."""

    url: str
    grpc_url: str
    interval_s: float
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._run, args=(index,), daemon=True) for index in range(LOAD_CLIENTS)]
        for thread in threads:
            thread.start()
        return threads

    def _run(self, index: int) -> None:
        send, close = self._sender(index % 3)
        try:
            self._send_until_stopped(index, send)
        finally:
            close()

    def _send_until_stopped(self, index: int, send: Callable[[bytes], str]) -> None:
        image = random_png(index)
        next_at = time.monotonic() + index * self.interval_s / LOAD_CLIENTS
        while not self.stop.is_set():
            next_at += self.interval_s
            started = time.monotonic()
            try:
                version = send(image)
                answer = Answer(started, time.monotonic() - started, version)
            except Exception as exc:  # every failure counts, whatever its kind
                answer = Answer(started, time.monotonic() - started, None, f"{type(exc).__name__}: {exc}")
            with self.lock:
                self.answers.append(answer)
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _sender(self, kind: int) -> tuple[Callable[[bytes], str], Callable[[], None]]:
        if kind == 0:
            client = tritonhttp.InferenceServerClient(self.url.removeprefix("http://"), network_timeout=60.0)

            def over_http(image: bytes) -> str:
                given = tritonhttp.InferInput("input", [1], "BYTES")
                given.set_data_from_numpy(np.array([image], dtype=object), binary_data=True)
                wanted = tritonhttp.InferRequestedOutput("logits", binary_data=True, class_count=3)
                result = client.infer(MODEL, [given], outputs=[wanted])
                return _one_version(result.as_numpy("logits"), result.get_response()["model_version"])

            return over_http, client.close
        if kind == 1:
            grpc_client = tritongrpc.InferenceServerClient(self.grpc_url)

            def over_grpc(image: bytes) -> str:
                given = tritongrpc.InferInput("input", [1], "BYTES")
                given.set_data_from_numpy(np.array([image], dtype=object))
                wanted = tritongrpc.InferRequestedOutput("logits", class_count=3)
                result = grpc_client.infer(MODEL, [given], outputs=[wanted], client_timeout=60.0)
                return _one_version(result.as_numpy("logits"), result.get_response().model_version)

            return over_grpc, grpc_client.close
        session = httpx.Client(timeout=60.0)

        def over_v1(image: bytes) -> str:
            response = session.post(f"{self.url}/v1/models/{MODEL}/classify", files={"file": ("x.png", image)})
            response.raise_for_status()
            body = response.json()
            labels = [entry["label"] for result in body["results"] for entry in result["top_k"]]
            return _same(labels, body["version"])

        return over_v1, session.close


def _one_version(table: np.ndarray, version: str) -> str:
    labels = [entry.decode().split(":", 2)[2] for entry in table.reshape(-1)]
    return _same(labels, version)


def _same(labels: list[str], version: str) -> str:
    """The version every label names (each label is `v<version>-class-<i>`), which the answer itself must state."""
    said = {label.split("-", 1)[0].removeprefix("v") for label in labels}
    if said != {version}:
        raise AssertionError(f"an answer mixes versions or misstates its own: labels {labels}, version {version!r}")
    return version


def p99(answers: list[Answer]) -> float:
    latencies = sorted(answer.latency_s for answer in answers)
    return latencies[max(0, int(np.ceil(0.99 * len(latencies))) - 1)]


def window_p99s(answers: list[Answer], start: float, end: float, window_s: float) -> list[float]:
    """The p99 of each window `window_s` long that fits between `start` and `end` (a p99 of a hundred answers is not
    that of a thousand)."""
    windows = []
    at = start
    while at + window_s <= end:
        window = [a for a in answers if at <= a.started < at + window_s]
        if window:
            windows.append(p99(window))
        at += window_s
    return windows


def index(url: str, client: httpx.Client | None = None) -> dict[str, tuple[str, str]]:
    return {
        entry["version"]: (entry["state"], entry["reason"])
        for entry in (client.post if client is not None else httpx.post)(
            f"{url}/v2/repository/index", timeout=30
        ).json()
        if entry["name"] == MODEL
    }


def saturation_interval_s(url: str, grpc_url: str) -> float:
    """Each client's pace for about 70% of what the server answers closed-loop (measured here, now)."""
    traffic = Traffic(url, grpc_url, interval_s=0.0)
    threads = traffic.start()
    time.sleep(3.0)
    traffic.stop.set()
    for thread in threads:
        thread.join(timeout=60)
    window = [a for a in traffic.answers if a.started > traffic.answers[0].started + 1.0]
    per_second = len(window) / 2.0
    return LOAD_CLIENTS / (0.7 * per_second)


@pytest.mark.parametrize("mode", ["poll", "explicit"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_swap_under_load_loses_nothing(start_server, tmp_path, make_classifier, gray_spec, mode, workers):
    repository = tmp_path / "repository"
    write_version(repository / MODEL, make_classifier, gray_spec, 1)
    grpc_port = free_port()
    server = start_server(
        "--model-dir",
        str(repository),
        "--model-control-mode",
        mode,
        "--repository-poll-s",
        "0.5",
        "--allow-model-control-without-keys",
        "--workers",
        workers,
        "--grpc-port",
        str(grpc_port),
        "--max-batch-size",
        "4",
        "--no-access-log",
    ).wait_ready()
    grpc_url = f"127.0.0.1:{grpc_port}"
    poll(lambda: _grpc_ready(grpc_url), "gRPC to answer")
    # Made before the traffic starts: building a model in this process would slow its own clients down.
    staged = [stage_version(repository / MODEL, make_classifier, gray_spec, version) for version in SWAPPED_IN]
    control = httpx.Client(timeout=300)
    traffic = Traffic(server.url, grpc_url, saturation_interval_s(server.url, grpc_url))
    swaps: list[Swap] = []
    threads = traffic.start()
    try:
        # Read before the steady stretch (it starts a second into the traffic): reading a process's memory map stalls
        # its allocations for a moment, which is the test's doing, not a swap's.
        time.sleep(0.5)
        rss_before = tree_rss_bytes(server.process.pid)
        time.sleep(7.5)
        for version, staging in zip(SWAPPED_IN, staged, strict=True):
            swap_started = time.monotonic()
            publish(staging)
            # The test's own calls go over a client made before the traffic, and poll twice a second: making a client
            # (its TLS context) or polling hard in this process would slow its own load clients and show as a swap's
            # cost.
            if mode == "explicit":
                response = control.post(f"{server.url}/v2/repository/models/{MODEL}/load")
                assert response.status_code == 200, response.text
            else:
                give_up = time.monotonic() + 120
                while not (
                    index(server.url, control).get(str(version), ("",))[0] == "READY"
                    and _loaded(server.url, control) == {str(version)}
                ):
                    assert time.monotonic() < give_up, f"version {version} did not replace the one before"
                    time.sleep(0.5)
                time.sleep(2 * 0.5)  # the other worker's scan: within two intervals of this one's (docs/SERVICE.md)
            swaps.append(Swap(str(version), swap_started, time.monotonic()))
            # A steady stretch follows, long enough for two windows as long as this swap's.
            time.sleep(1.0 + 2 * (swaps[-1].over + 1.0 - swap_started) + 0.5)
    finally:  # the clients stop and close whatever failed, so that no socket outlives the test
        traffic.stop.set()
        for thread in threads:
            thread.join(timeout=120)
        control.close()

    failures = [a.error for a in traffic.answers if a.error is not None]
    assert not failures, f"{len(failures)} of {len(traffic.answers)} requests failed: {failures[:3]}"
    assert {a.version for a in traffic.answers} == {"1", *(swap.version for swap in swaps)}
    for swap, following in zip(swaps, [*swaps[1:], None], strict=True):
        late = [a for a in traffic.answers if swap.over < a.started < (following.started if following else math.inf)]
        assert late and all(a.version == swap.version for a in late), (
            f"an answer from an older version after the swap to version {swap.version} was over"
        )
    # Like for like: p99s of windows as long as a swap's (the swap and the second after it). The steady p99 is the
    # worst of the windows that fit in the stretches between swaps (before the first, and from a second after each
    # until the next), what this shared machine's own stalls do to a p99 without any swap; the swaps' p99 is the
    # median of the three, so that one such stall during a swap does not decide.
    window_s = float(np.median([swap.over + 1.0 - swap.started for swap in swaps]))
    during = [[a for a in traffic.answers if swap.started <= a.started <= swap.over + 1.0] for swap in swaps]
    swap_p99 = float(np.median([p99(answers) for answers in during]))
    stretches = [(traffic.answers[0].started + 1.0, swaps[0].started)]
    stretches += [(swap.over + 1.0, following.started) for swap, following in itertools.pairwise(swaps)]
    stretches.append((swaps[-1].over + 1.0, max(a.started for a in traffic.answers)))
    steady = [p for start, end in stretches for p in window_p99s(traffic.answers, start, end, window_s)]
    assert len(steady) >= 3, f"only {len(steady)} steady windows of {window_s:.2f} s"
    slowest = sorted(
        ((a, swap) for swap, answers in zip(swaps, during, strict=True) for a in answers),
        key=lambda pair: -pair[0].latency_s,
    )[:5]
    assert swap_p99 <= 2 * max(steady), (
        f"median p99 during the swaps {swap_p99 * 1000:.1f} ms (each: "
        + ", ".join(f"{p99(answers) * 1000:.1f} ms over {len(answers)}" for answers in during)
        + "; the swaps took "
        + ", ".join(f"{(swap.over - swap.started) * 1000:.0f}" for swap in swaps)
        + f" ms), steady {max(steady) * 1000:.1f} ms (the worst of {len(steady)} windows: "
        + ", ".join(f"{value * 1000:.1f}" for value in steady)
        + "); slowest: "
        + ", ".join(
            f"{a.latency_s * 1000:.1f} ms at {(a.started - swap.started) * 1000:+.0f} ms into the swap to {swap.version}"
            for a, swap in slowest
        )
    )
    last = swaps[-1].version
    poll(lambda: _loaded(server.url) == {last}, "the versions before to be unloaded after their last request")
    rss_after = tree_rss_bytes(server.process.pid)
    assert rss_after <= max(rss_before * 1.10, rss_before + 50 * 2**20), (rss_before, rss_after)

    # A corrupt version after it leaves the last one serving, says why, and the server stays ready.
    broken = str(int(last) + 1)
    corrupt = repository / MODEL / broken
    corrupt.mkdir()
    (corrupt / "model.onnx").write_bytes(b"not an onnx file")
    if mode == "explicit":
        refused = httpx.post(f"{server.url}/v2/repository/models/{MODEL}/load", timeout=300)
        assert refused.status_code == 400 and "cannot load the model" in refused.json()["error"]
    reason = "ONNX Runtime cannot load the model"
    if mode == "explicit":  # answered once every worker tried: whichever answers the index says why
        assert all(reason in index(server.url)[broken][1] for _ in range(4))
    else:  # each worker finds it on its own scan
        poll(
            lambda: all(reason in index(server.url).get(broken, ("", ""))[1] for _ in range(4)),
            "the broken version's failure",
        )
    assert index(server.url)[last][0] == "READY"
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
    answer = httpx.post(
        f"{server.url}/v1/models/{MODEL}/classify", files={"file": ("x.png", random_png(1))}, timeout=60
    ).json()
    assert answer["version"] == last


def _loaded(url: str, client: httpx.Client | None = None) -> set[str]:
    loaded = ("READY", "LOADING", "UNLOADING")
    return {version for version, (state, _) in index(url, client).items() if state in loaded}


def _grpc_ready(grpc_url: str) -> bool:
    try:
        return tritongrpc.InferenceServerClient(grpc_url).is_server_ready()
    except Exception:
        return False


def test_model_control_is_refused_unless_allowed(start_server, tmp_path, make_classifier, gray_spec):
    write_version(tmp_path / MODEL, make_classifier, gray_spec, 1)
    explicit = start_server("--model-dir", str(tmp_path), "--model-control-mode", "explicit", "--workers", "1")
    explicit.wait_ready()
    refused = httpx.post(f"{explicit.url}/v2/repository/models/{MODEL}/unload", timeout=30)
    assert refused.status_code == 403 and "--allow-model-control-without-keys" in refused.json()["error"]
    assert httpx.post(f"{explicit.url}/v2/repository/index", timeout=30).status_code == 200  # read-only and open
    assert httpx.get(f"{explicit.url}/readyz", timeout=30).status_code == 200
    off = start_server("--model-dir", str(tmp_path), "--workers", "1", "--allow-model-control-without-keys")
    off.wait_ready()
    refused = httpx.post(f"{off.url}/v2/repository/models/{MODEL}/load", timeout=30)
    assert refused.status_code == 400 and "--model-control-mode explicit" in refused.json()["error"]
    for parameters in ({"file:1/model.onnx": "AAAA"}, {"config": "{}"}):
        outside = httpx.post(
            f"{off.url}/v2/repository/models/{MODEL}/load", json={"parameters": parameters}, timeout=30
        )
        assert outside.status_code == 422 and "repository folder only" in outside.json()["error"]


def test_a_load_past_the_memory_budget_is_refused_with_507_and_the_numbers(
    start_server, tmp_path, make_classifier, gray_spec
):
    write_version(tmp_path / MODEL, make_classifier, gray_spec, 1)
    server = start_server(
        "--model-dir",
        str(tmp_path),
        "--model-control-mode",
        "explicit",
        "--allow-model-control-without-keys",
        "--workers",
        "1",
        "--memory-budget-mb",
        "1",  # below what any Python process holds: start-up loads regardless, later loads are checked
    )
    server.wait_ready()
    write_version(tmp_path / MODEL, make_classifier, gray_spec, 2)
    refused = httpx.post(f"{server.url}/v2/repository/models/{MODEL}/load", timeout=120)
    assert refused.status_code == 507, refused.text
    assert re.search(r"needs about \d+ MiB beside the \d+ MiB .* memory budget of 1 MiB", refused.json()["error"])
    state, reason = index(server.url)["2"]
    assert state == "UNAVAILABLE" and "memory budget" in reason
    assert index(server.url)["1"][0] == "READY"
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200


def test_explicit_unload_then_load_and_a_pinned_rollback(start_server, tmp_path, make_classifier, gray_spec):
    for version in (1, 2):
        write_version(tmp_path / MODEL, make_classifier, gray_spec, version)
    (tmp_path / MODEL / "config.json").write_text(json.dumps({"version_policy": {"all": {}}}))
    grpc_port = free_port()
    server = start_server(
        "--model-dir",
        str(tmp_path),
        "--model-control-mode",
        "explicit",
        "--workers",
        "1",
        "--allow-model-control-without-keys",
        "--grpc-port",
        str(grpc_port),
    ).wait_ready()
    triton = tritonhttp.InferenceServerClient(server.url.removeprefix("http://"))
    over_grpc = tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")

    def answering() -> str:
        return httpx.post(
            f"{server.url}/v1/models/{MODEL}/classify", files={"file": ("x.png", random_png(2))}, timeout=60
        ).json()["version"]

    assert answering() == "2"
    assert triton.get_model_metadata(MODEL)["versions"] == ["1", "2"]
    pin = httpx.post(
        f"{server.url}/v2/repository/models/{MODEL}/load", json={"parameters": {"default_version": 1}}, timeout=60
    )
    assert pin.status_code == 200, pin.text
    assert answering() == "1"  # the rollback
    assert (
        httpx.post(
            f"{server.url}/v1/models/{MODEL}/versions/2/classify", files={"file": ("x.png", random_png(2))}, timeout=60
        ).json()["version"]
        == "2"
    )
    listed = httpx.get(f"{server.url}/v1/models", timeout=30).json()["models"][0]
    assert listed["version"] == "1" and [v["version"] for v in listed["versions"]] == ["1", "2"]
    over_grpc.unload_model(MODEL)
    gone = httpx.post(f"{server.url}/v1/models/{MODEL}/classify", files={"file": ("x.png", random_png(2))}, timeout=60)
    assert gone.status_code == 404
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 503  # no model has a ready version
    assert [(m.name, m.version, m.state) for m in over_grpc.get_model_repository_index().models] == [
        (MODEL, "1", "UNAVAILABLE"),
        (MODEL, "2", "UNAVAILABLE"),
    ]
    triton.load_model(MODEL)
    assert triton.is_model_ready(MODEL) and over_grpc.is_model_ready(MODEL, "1")
    assert {(m["name"], m["version"], m["state"]) for m in triton.get_model_repository_index()} == {
        (MODEL, "1", "READY"),
        (MODEL, "2", "READY"),
    }
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
