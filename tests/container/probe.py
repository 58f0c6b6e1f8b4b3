"""HTTP checks that tests/container/run.sh runs against the container and the compose stack.

Each subcommand checks one thing, prints what it measured as one JSON line on stdout and exits non-zero with
a message on stderr when the check fails. Every wait polls with a deadline; nothing relies on a fixed sleep.

    probe.py wait-ready     URL --since-ns NS               /readyz 200; prints seconds since NS (cold start)
    probe.py classify       URL                             real Fashion-MNIST PNGs, multipart and raw body, bad input
    probe.py metrics        URL                             /metrics shows the classified images and a ready model
    probe.py grpc           URL --target HOST:PORT          gRPC: the health service says SERVING; ModelInfer with
                                                            PNGs gives the labels /v1/classify gives
    probe.py drain          URL --container NAME            SIGTERM during a request: it completes, exit status 0
    probe.py prom-target    PROM_URL --target HOST:PORT     Prometheus reports the target up
    probe.py dashboard      PROM_URL --service-url URL --dashboard JSON
                                                            every dashboard query is valid and returns data

Needs the project's environment (numpy, Pillow, grpcio and the service's generated gRPC modules) and the Debian
package dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import io
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
POLL_INTERVAL_S = 0.05
HTTP_TIMEOUT_S = 30.0


class CheckFailed(Exception):
    """A check did not hold; the message says what was expected and what came instead."""


# --- small HTTP helpers -------------------------------------------------------------------------------------------


def http_get(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def poll(what: str, deadline_s: float, attempt: Any) -> Any:
    """Call `attempt` until it returns something other than None; fail after `deadline_s` seconds."""
    deadline = time.monotonic() + deadline_s
    last_error = "no attempt finished"
    while time.monotonic() < deadline:
        try:
            result = attempt()
        except (OSError, http.client.HTTPException) as exc:
            result, last_error = None, f"{type(exc).__name__}: {exc}"
        if result is not None:
            return result
        time.sleep(POLL_INTERVAL_S)
    raise CheckFailed(f"{what}: not within {deadline_s:.0f} s (last: {last_error})")


def multipart_body(files: list[tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """Encode (filename, content, content type) parts under the field name `file`."""
    boundary = f"----resnet-serve-{uuid.uuid4().hex}"
    chunks = []
    for filename, content, content_type in files:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
        )
        chunks.append(content)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


# --- data ---------------------------------------------------------------------------------------------------------


def fashion_mnist_test_pngs(count: int) -> list[tuple[bytes, int]]:
    """The first `count` Fashion-MNIST test images as PNG bytes, with their true class index."""
    images_path = FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    labels_path = FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    if not images_path.exists():
        raise CheckFailed(f"{images_path} is missing: apt-get install dataset-fashion-mnist")
    with gzip.open(images_path) as f:
        magic, _n, rows, cols = np.frombuffer(f.read(16), dtype=">u4")
        if magic != 2051:
            raise CheckFailed(f"{images_path}: not an IDX image file")
        pixels = np.frombuffer(f.read(int(count * rows * cols)), dtype=np.uint8).reshape(count, rows, cols)
    with gzip.open(labels_path) as f:
        f.read(8)
        labels = np.frombuffer(f.read(count), dtype=np.uint8)
    pngs = []
    for image, label in zip(pixels, labels, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG")
        pngs.append((buffer.getvalue(), int(label)))
    return pngs


# --- checks -------------------------------------------------------------------------------------------------------


def wait_ready(url: str, since_ns: int, deadline_s: float) -> dict[str, Any]:
    def attempt() -> int | None:
        status, _ = http_get(f"{url}/readyz", timeout_s=2.0)
        return time.time_ns() if status == 200 else None

    ready_ns = poll(f"{url}/readyz answering 200", deadline_s, attempt)
    return {"ready_after_s": round((ready_ns - since_ns) / 1e9, 2), "ready_at_ns": ready_ns}


def classify(url: str, count: int, min_correct: int) -> dict[str, Any]:
    status, body = http_get(f"{url}/v1/models")
    if status != 200:
        raise CheckFailed(f"GET /v1/models: {status} {body[:300]!r}")
    models = json.loads(body)
    default = next(m for m in models["models"] if m["name"] == models["default_model"])
    if default["dataset"].lower().replace("-", "").replace("_", "") != "fashionmnist" or len(default["labels"]) != 10:
        raise CheckFailed(f"the bundled model should be a 10-class Fashion-MNIST classifier, got {default}")

    samples = fashion_mnist_test_pngs(count)
    body, content_type = multipart_body([(f"t10k-{i}.png", png, "image/png") for i, (png, _) in enumerate(samples)])
    status, answer = http_post(f"{url}/v1/classify", body, content_type)
    if status != 200:
        raise CheckFailed(f"POST /v1/classify with {count} PNGs: {status} {answer[:300]!r}")
    response = json.loads(answer)
    results = response["results"]
    if [r["filename"] for r in results] != [f"t10k-{i}.png" for i in range(count)]:
        raise CheckFailed(f"results are not one per upload in upload order: {[r['filename'] for r in results]}")
    predicted = [r["top_k"][0]["index"] for r in results]
    truth = [label for _, label in samples]
    correct = sum(p == t for p, t in zip(predicted, truth, strict=True))
    if correct < min_correct:
        raise CheckFailed(f"only {correct} of {count} test images classified correctly: {predicted} vs {truth}")
    for r in results:
        if (r["width"], r["height"]) != (28, 28) or r["top_k"][0]["label"] != default["labels"][r["top_k"][0]["index"]]:
            raise CheckFailed(f"inconsistent result {r}")

    # A raw image body (no multipart) gives the same answer as its multipart twin.
    status, raw_answer = http_post(f"{url}/v1/classify", samples[0][0], "image/png")
    if status != 200 or json.loads(raw_answer)["results"][0]["top_k"][0]["index"] != predicted[0]:
        raise CheckFailed(f"raw-body classify: {status} {raw_answer[:300]!r}")

    # Bad input is refused with a client error that says why, and the server keeps serving.
    bad_body, bad_type = multipart_body([("notes.png", b"this is not an image", "image/png")])
    status, bad_answer = http_post(f"{url}/v1/classify", bad_body, bad_type)
    if not 400 <= status < 500 or "error" not in json.loads(bad_answer):
        raise CheckFailed(f"a non-image upload should get a 4xx error body, got {status} {bad_answer[:300]!r}")
    return {
        "model": response["model"],
        "correct": f"{correct}/{count}",
        "first": results[0]["top_k"][0],
        "server_total_ms": round(response["timings_ms"]["total"], 2),
        "bad_input_status": status,
    }


def parse_metrics(text: str) -> dict[str, float]:
    """Samples of the Prometheus text format as {'name{labels}': value}; comments skipped."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def metrics(url: str) -> dict[str, Any]:
    status, body = http_get(f"{url}/metrics")
    if status != 200:
        raise CheckFailed(f"GET /metrics: {status}")
    samples = parse_metrics(body.decode())
    classified = sum(v for k, v in samples.items() if k.startswith("resnet_serve_images_classified_total"))
    ready = [v for k, v in samples.items() if k.startswith("resnet_serve_model_ready")]
    if classified < 1 or not ready or min(ready) != 1:
        raise CheckFailed(f"/metrics should show classified images and a ready model: {classified=}, {ready=}")
    return {"images_classified": classified, "series": len(samples)}


def grpc_v2(url: str, target: str, count: int, deadline_s: float) -> dict[str, Any]:
    """The gRPC listener (Open Inference Protocol): grpc.health.v1 answers SERVING, and ModelInfer with encoded
    PNGs and the classification extension gives the top labels /v1/classify gives for the same images."""
    import struct

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from service.grpc.proto import grpc_predict_v2_pb2 as pb
    from service.grpc.proto import grpc_predict_v2_pb2_grpc as pb_grpc

    status, body = http_get(f"{url}/v1/models")
    if status != 200:
        raise CheckFailed(f"GET /v1/models: {status} {body[:300]!r}")
    models = json.loads(body)
    default = next(m for m in models["models"] if m["name"] == models["default_model"])
    samples = fashion_mnist_test_pngs(count)
    form, content_type = multipart_body([(f"t10k-{i}.png", png, "image/png") for i, (png, _) in enumerate(samples)])
    status, answer = http_post(f"{url}/v1/classify", form, content_type)
    if status != 200:
        raise CheckFailed(f"POST /v1/classify: {status} {answer[:300]!r}")
    expected = [result["top_k"][0]["label"] for result in json.loads(answer)["results"]]

    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool | None:
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
            except grpc.RpcError:
                return None
            return True if answer.status == health_pb2.HealthCheckResponse.SERVING else None

        poll(f"grpc.health.v1 on {target} answering SERVING", deadline_s, serving)
        request = pb.ModelInferRequest(model_name=default["name"], id="container-test")
        request.inputs.add(name=default["input"]["name"], datatype="BYTES", shape=[count])
        request.raw_input_contents.append(b"".join(struct.pack("<I", len(png)) + png for png, _ in samples))
        request.outputs.add(name=default["output_name"]).parameters["classification"].int64_param = 1
        try:
            response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=HTTP_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise CheckFailed(f"ModelInfer: {exc.code().name} {exc.details()}") from None
    raw, labels, offset = response.raw_output_contents[0], [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        labels.append(raw[offset + 4 : offset + 4 + length].decode().split(":", 2)[2])
        offset += 4 + length
    if response.id != "container-test" or labels != expected:
        raise CheckFailed(f"ModelInfer answered {response.id!r} {labels}, /v1/classify {expected}")
    return {"health": "SERVING", "model": response.model_name, "images": count, "labels_as_v1": True}


def _in_flight(url: str) -> float:
    _, body = http_get(f"{url}/metrics", timeout_s=2.0)
    return parse_metrics(body.decode()).get("resnet_serve_http_requests_in_flight", 0.0)


def _logs(docker: str, container: str) -> str:
    """The container's stdout and stderr, interleaved as written."""
    return subprocess.run(
        [docker, "logs", container], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=True
    ).stdout


def drain(url: str, container: str, docker: str, deadline_s: float) -> dict[str, Any]:
    """SIGTERM while a classify request is half uploaded: the request still completes and the server exits 0.

    The request body is sent in two halves. Only once /metrics counts the request in flight does the container get
    SIGTERM; only once the server logs that it is shutting down does the second half go out. So the signal lands
    inside the request, every time.
    """
    png, _ = fashion_mnist_test_pngs(1)[0]
    body, content_type = multipart_body([("in-flight.png", png, "image/png")])
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=deadline_s)
    connection.putrequest("POST", "/v1/classify")
    connection.putheader("Content-Type", content_type)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders()
    half = len(body) // 2
    connection.send(body[:half])

    poll("the half-sent request counted in flight", deadline_s, lambda: True if _in_flight(url) >= 1 else None)
    logged_before = len(_logs(docker, container))
    subprocess.run([docker, "kill", "--signal", "TERM", container], check=True, capture_output=True)
    signalled = time.monotonic()

    def shutting_down() -> bool | None:
        new_lines = _logs(docker, container)[logged_before:]
        return True if re.search(r"shutting down|draining|SIGTERM", new_lines, re.IGNORECASE) else None

    poll("the server logging its shutdown", deadline_s, shutting_down)
    connection.send(body[half:])
    response = connection.getresponse()
    answer = response.read()
    if response.status != 200:
        raise CheckFailed(f"the in-flight request got {response.status} {answer[:300]!r} after SIGTERM, not 200")
    label = json.loads(answer)["results"][0]["top_k"][0]["label"]

    waited = subprocess.run([docker, "wait", container], capture_output=True, text=True, check=True, timeout=deadline_s)
    exit_code = int(waited.stdout.strip())
    stopped_after_s = time.monotonic() - signalled
    logs = _logs(docker, container)
    if exit_code != 0:
        raise CheckFailed(f"the server exited {exit_code} after SIGTERM; logs:\n{logs}")
    if "Traceback" in logs:
        raise CheckFailed(f"a traceback in the logs of a clean shutdown:\n{logs}")
    return {
        "in_flight_status": response.status,
        "label": label,
        "exit_code": exit_code,
        "sigterm_to_exit_s": round(stopped_after_s, 2),
    }


def prom_target(prom_url: str, target: str, deadline_s: float) -> dict[str, Any]:
    def attempt() -> dict[str, Any] | None:
        status, body = http_get(f"{prom_url}/api/v1/targets?state=active", timeout_s=2.0)
        if status != 200:
            return None
        for active in json.loads(body)["data"]["activeTargets"]:
            if active["labels"].get("instance") == target and active["health"] == "up":
                return {
                    "job": active["labels"]["job"],
                    "instance": target,
                    "health": "up",
                    "last_scrape_duration_s": active.get("lastScrapeDuration"),
                }
        return None

    return poll(f"Prometheus reporting {target} up", deadline_s, attempt)


def _grafana_to_promql(expr: str) -> str:
    """Replace the Grafana variables the dashboard uses with what 'All' would select."""
    expr = expr.replace("$__rate_interval", "1m")
    return re.sub(r"\$\{?(instance|model)\}?", ".*", expr)


def _exported_families(service_url: str) -> set[str]:
    _, body = http_get(f"{service_url}/metrics")
    families = set()
    for line in body.decode().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            families.add(name)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [])
            families.update(f"{name.removesuffix('_total')}{s}" for s in suffixes)
    return families


def dashboard(prom_url: str, service_url: str, dashboard_path: Path, deadline_s: float) -> dict[str, Any]:
    """Every query of the Grafana dashboard names metrics the service exports, is valid PromQL for the Prometheus
    the stack runs, and returns data once traffic went through; the drop counter, which has no series until an
    image is dropped, is only required to be valid."""
    board = json.loads(dashboard_path.read_text())
    panels = [p for top in board["panels"] for p in [top, *top.get("panels", [])]]
    exprs = [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]
    exprs += [(f"variable {v['name']}", v["definition"]) for v in board["templating"]["list"]]

    exported = _exported_families(service_url)
    for title, expr in exprs:
        for name in re.findall(r"\bresnet_serve_[a-z0-9_]+", expr):
            if name not in exported:
                raise CheckFailed(f"panel {title!r} queries {name}, which the service does not export")

    def run_query(expr: str) -> tuple[str, list[Any]]:
        if expr.startswith("label_values("):
            expr = re.match(r"label_values\((.*),\s*\w+\)$", expr).group(1)  # the series the values come from
        query = urllib.parse.urlencode({"query": _grafana_to_promql(expr)})
        status, body = http_get(f"{prom_url}/api/v1/query?{query}", timeout_s=5.0)
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            return "error", [answer.get("error", status)]
        return "success", answer["data"]["result"]

    pending = dict(exprs)
    optional = {title for title, expr in exprs if "resnet_serve_dropped_images" in expr}
    deadline = time.monotonic() + deadline_s
    while True:
        for title, expr in list(pending.items()):
            outcome, result = run_query(expr)
            if outcome == "error":
                raise CheckFailed(f"panel {title!r}: Prometheus rejects {expr!r}: {result}")
            if result or title in optional:
                del pending[title]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise CheckFailed(f"no data within {deadline_s:.0f} s for: {sorted(pending)}")
        time.sleep(0.5)
    return {"queries": len(exprs), "metric_families_checked": len(exported)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="check", required=True)
    p = sub.add_parser("wait-ready")
    p.add_argument("url")
    p.add_argument("--since-ns", type=int, required=True)
    p.add_argument("--deadline-s", type=float, default=180.0)
    p = sub.add_parser("classify")
    p.add_argument("url")
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--min-correct", type=int, default=12)
    p = sub.add_parser("metrics")
    p.add_argument("url")
    p = sub.add_parser("grpc")
    p.add_argument("url")
    p.add_argument("--target", required=True)
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--deadline-s", type=float, default=60.0)
    p = sub.add_parser("drain")
    p.add_argument("url")
    p.add_argument("--container", required=True)
    p.add_argument("--docker", default="docker")
    p.add_argument("--deadline-s", type=float, default=60.0)
    p = sub.add_parser("prom-target")
    p.add_argument("url")
    p.add_argument("--target", required=True)
    p.add_argument("--deadline-s", type=float, default=120.0)
    p = sub.add_parser("dashboard")
    p.add_argument("url")
    p.add_argument("--service-url", required=True)
    p.add_argument("--dashboard", type=Path, required=True)
    p.add_argument("--deadline-s", type=float, default=120.0)
    args = parser.parse_args(argv)

    try:
        if args.check == "wait-ready":
            outcome = wait_ready(args.url, args.since_ns, args.deadline_s)
        elif args.check == "classify":
            outcome = classify(args.url, args.count, args.min_correct)
        elif args.check == "metrics":
            outcome = metrics(args.url)
        elif args.check == "grpc":
            outcome = grpc_v2(args.url, args.target, args.count, args.deadline_s)
        elif args.check == "drain":
            outcome = drain(args.url, args.container, args.docker, args.deadline_s)
        elif args.check == "prom-target":
            outcome = prom_target(args.url, args.target, args.deadline_s)
        else:
            outcome = dashboard(args.url, args.service_url, args.dashboard, args.deadline_s)
    except CheckFailed as exc:
        print(f"FAIL {args.check}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"check": args.check, **outcome}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
