"""Autoscaling on queue pressure against a real Prometheus (Debian's `prometheus` package) scraping a real server
under load: the queries of the Prometheus adapter's rule (deploy/k8s/components/queue-autoscaling) and of KEDA's
ScaledObject (deploy/k8s/components/keda), read from those files, give the pod's drain time, as the server reports
it, while a queue stands; and an overloaded request is told to retry after that drain time."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from service.config import Settings
from tests.images import random_png
from tests.integration.conftest import poll, scrape
from tests.integration.test_v2_grpc import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = REPO_ROOT / "deploy" / "k8s" / "components"
MODEL = "fashion-mnist-resnet20"
NAMESPACE, POD = "default", "resnet-serve-7d9f-abcde"
"""What the cluster's scrape configuration would label the pod's series with."""


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """`prometheus(target)` starts Debian's Prometheus scraping `target` (host:port) every second with the pod's
    labels, and returns its URL once the target is up."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: apt-get install prometheus (Debian's package; .ci/run installs it)")
    started: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> str:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "resnet-serve",
                    "static_configs": [{"targets": [target], "labels": {"namespace": NAMESPACE, "pod": POD}}],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        url = f"http://127.0.0.1:{free_port()}"
        with (tmp_path / "prometheus.log").open("wb") as log:
            started.append(
                subprocess.Popen(
                    [
                        binary,
                        f"--config.file={tmp_path / 'prometheus.yml'}",
                        f"--storage.tsdb.path={tmp_path / 'data'}",
                        f"--web.listen-address={url.removeprefix('http://')}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

        def target_up() -> bool:
            try:
                targets = httpx.get(url + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            except (httpx.TransportError, ValueError):
                return False
            return any(t["health"] == "up" for t in targets)

        poll(target_up, "Prometheus to scrape the server")
        return url

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=60)


def query(prometheus_url: str, promql: str) -> list[dict]:
    answer = httpx.get(prometheus_url + "/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def adapter_query() -> tuple[str, str]:
    """The adapter rule's series query and its metrics query, filled in as the adapter does for the HPA's request
    (this pod, in this namespace, grouped by pod)."""
    values = yaml.safe_load((COMPONENTS / "queue-autoscaling" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    metric = rule["name"]["as"]
    filled = (
        rule["metricsQuery"]
        .replace("<<.Series>>", metric)
        .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{POD}"')
        .replace("<<.GroupBy>>", "pod")
    )
    return rule["seriesQuery"], filled


def keda_query() -> tuple[str, float]:
    scaled = yaml.safe_load((COMPONENTS / "keda" / "scaledobject.yaml").read_text())
    (trigger,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    return trigger["metadata"]["query"], float(trigger["metadata"]["threshold"])


def drain_seconds(url: str) -> float:
    return scrape(url)[("resnet_serve_queue_drain_seconds", (("model", MODEL),))]


def test_the_adapter_and_keda_queries_read_a_loaded_server_s_drain_time(in_thread_server, prometheus):
    server = in_thread_server(Settings(max_batch_size=1, max_queue_size=16, access_log=False)).start()
    poll(lambda: httpx.get(server.url + "/readyz").status_code == 200, "the server to be ready")
    runtime = server.runtimes[MODEL]
    prometheus_url = prometheus(f"127.0.0.1:{server.port}")
    series_query, metrics_query = adapter_query()
    keda, threshold = keda_query()

    def classify(seed: int) -> httpx.Response:
        return httpx.post(
            server.url + "/v1/classify", files={"file": ("x.png", random_png(seed), "image/png")}, timeout=120
        )

    assert classify(0).status_code == 200  # the drain rate is measured from here on
    runtime.run_gate.clear()
    with ThreadPoolExecutor(max_workers=20) as pool:
        try:
            held = pool.submit(classify, 1)
            runtime.wait_for_batch()
            queued = [pool.submit(classify, seed) for seed in range(2, 18)]  # 16: the queue is full
            poll(lambda: scrape(server.url)[("resnet_serve_queue_depth", (("model", MODEL),))] == 16, "a full queue")
            reported = drain_seconds(server.url)
            assert reported > 0

            # Over it, a request is refused with the drain time, rounded up, as Retry-After.
            refused = classify(99)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
            assert int(refused.headers["retry-after"]) == max(1, math.ceil(drain_seconds(server.url)))

            assert query(prometheus_url, series_query), "the adapter's series query finds no series"

            def scraped_while_held() -> list[dict]:
                result = query(prometheus_url, f"max_over_time({series_query}[1m])")
                return result if result and float(result[0]["value"][1]) >= reported else []

            poll(scraped_while_held, "Prometheus to scrape the standing queue")
            (for_the_hpa,) = query(prometheus_url, metrics_query)
            assert for_the_hpa["metric"] == {"pod": POD}
            assert 0 < float(for_the_hpa["value"][1]) <= reported  # a minute's average, the standing queue in it
            (for_keda,) = query(prometheus_url, keda)
            assert float(for_keda["value"][1]) == pytest.approx(float(for_the_hpa["value"][1]))
            assert threshold > 0
        finally:
            runtime.run_gate.set()
        assert held.result().status_code == 200
        assert all(future.result().status_code == 200 for future in queued)
    poll(lambda: drain_seconds(server.url) == 0, "the drain time to fall to 0 once the queue is served")
