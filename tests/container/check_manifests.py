"""Static checks of the deployment files that schema validation alone does not catch.

kubernetes-validate --strict checks each rendered object against the Kubernetes schema; this script checks what
ties the objects together (selectors, probe paths, the thread count following the CPU limit, a grace period
long enough for the drain, TLS files from a mounted Secret with HTTPS probes, an autoscaler on the Deployment: the
HPA, whose queue-pressure metric the Prometheus adapter's rule must serve, or KEDA's ScaledObject; a model
repository on a mounted volume, shared by every pod when they poll it), the KServe example (a CRD that kubernetes-validate has no schema for: its pod part is
validated as a Pod) and the Grafana dashboard's structure.

    python tests/container/check_manifests.py k8s RENDERED.yaml [--adapter-values VALUES.yaml]
    python tests/container/check_manifests.py without-crds RENDERED.yaml OUT.yaml   # for kubernetes-validate
    python tests/container/check_manifests.py kserve deploy/k8s/kserve/inferenceservice.yaml
    python tests/container/check_manifests.py kserve-v2 deploy/k8s/kserve/v2.yaml
    python tests/container/check_manifests.py dashboard deploy/grafana/dashboards/resnet-serve.json \
        deploy/grafana/provisioning/datasources/prometheus.yml

Exit status 0 when every check passes; otherwise each failure is printed and the status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

SERVER_CONTAINER = "resnet-serve"
SERVER_COMPONENT = "server"
"""The app.kubernetes.io/component label of the server's pods (a Deployment such as the model publisher may sit
beside theirs)."""
KSERVE_CONTAINER = "kserve-container"
THREADS_ENV = "RESNET_SERVE_INTRA_OP_THREADS"
TIMEOUT_ENV = "RESNET_SERVE_REQUEST_TIMEOUT_S"
SHUTDOWN_GRACE_ENV = "RESNET_SERVE_SHUTDOWN_GRACE_S"
SERVER_DEFAULTS_S = {TIMEOUT_ENV: 30.0, SHUTDOWN_GRACE_ENV: 30.0}  # service/config.py's defaults
PORT_ENV = "RESNET_SERVE_PORT"

# Fields KServe adds beside the PodSpec in a component (ComponentExtensionSpec, serving.kserve.io/v1beta1), and
# the model-format implementations a predictor may name instead of containers.
KSERVE_COMPONENT_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "scaleMetricType",
    "autoScaling",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
    "workerSpec",
}
KSERVE_PREDICTOR_IMPLEMENTATIONS = {
    "model",
    "sklearn",
    "xgboost",
    "tensorflow",
    "pytorch",
    "triton",
    "onnx",
    "huggingface",
    "pmml",
    "lightgbm",
    "paddle",
}


class Failures:
    """Collects every failed check, so one run reports them all."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.messages.append(message)


def _env_value(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    for entry in container.get("env", []):
        if entry.get("name") == name:
            return entry
    return None


def _config_map_value(objects: Iterable[dict[str, Any]], container: dict[str, Any], name: str) -> str | None:
    """The value of `name` as the container sees it through envFrom config maps."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        if ref in maps and name in maps[ref]:
            return maps[ref][name]
    return None


def _probe_path(container: dict[str, Any], probe: str) -> str | None:
    return container.get(probe, {}).get("httpGet", {}).get("path")


def _pre_stop_seconds(container: dict[str, Any]) -> int:
    return int(container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0))


def _setting(objects: Iterable[dict[str, Any]], container: dict[str, Any], name: str) -> float:
    """A RESNET_SERVE_ setting as the server will see it: env, else envFrom config maps, else its default."""
    value = (_env_value(container, name) or {}).get("value")
    if value is None:
        value = _config_map_value(objects, container, name)
    return SERVER_DEFAULTS_S[name] if value is None else float(value)


def _check_server_container(
    failures: Failures, where: str, objects: list[dict[str, Any]], pod_spec: dict[str, Any], container: dict[str, Any]
) -> None:
    failures.check(_probe_path(container, "startupProbe") is not None, f"{where}: no startupProbe")
    failures.check(_probe_path(container, "livenessProbe") == "/healthz", f"{where}: liveness must probe /healthz")
    failures.check(_probe_path(container, "readinessProbe") == "/readyz", f"{where}: readiness must probe /readyz")

    threads = _env_value(container, THREADS_ENV)
    field_ref = (threads or {}).get("valueFrom", {}).get("resourceFieldRef", {})
    failures.check(
        field_ref.get("resource") == "limits.cpu" and field_ref.get("containerName") == container["name"],
        f"{where}: {THREADS_ENV} must come from this container's limits.cpu (one thread per core it may use)",
    )
    failures.check("cpu" in container.get("resources", {}).get("limits", {}), f"{where}: no CPU limit")
    failures.check("memory" in container.get("resources", {}).get("limits", {}), f"{where}: no memory limit")

    security = container.get("securityContext", {})
    failures.check(security.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem must be read-only")
    failures.check(security.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed")
    failures.check(pod_spec.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: runAsNonRoot unset")
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    failures.check("/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp (uploads spool there)")

    # Kubernetes sends SIGTERM after the preStop hook and SIGKILL at the end of the grace period; in between, the
    # server gives in-flight requests up to its shutdown grace, which must cover a request's own timeout.
    request_timeout_s = _setting(objects, container, TIMEOUT_ENV)
    shutdown_grace_s = _setting(objects, container, SHUTDOWN_GRACE_ENV)
    failures.check(
        shutdown_grace_s >= request_timeout_s,
        f"{where}: {SHUTDOWN_GRACE_ENV} {shutdown_grace_s} is shorter than {TIMEOUT_ENV} {request_timeout_s}: "
        "requests admitted just before SIGTERM could be cut off",
    )
    needed_s = _pre_stop_seconds(container) + shutdown_grace_s
    grace_s = pod_spec.get("terminationGracePeriodSeconds", 30)
    failures.check(
        grace_s > needed_s,
        f"{where}: terminationGracePeriodSeconds {grace_s} does not cover preStop + {SHUTDOWN_GRACE_ENV} = {needed_s}",
    )


QUEUE_METRIC = "resnet_serve_queue_drain_seconds"
SSL_CERTFILE_ENV = "RESNET_SERVE_SSL_CERTFILE"
SSL_KEYFILE_ENV = "RESNET_SERVE_SSL_KEYFILE"
CRD_API_GROUPS = ("keda.sh/",)
"""Custom resources kubernetes-validate has no schema for; checked here instead."""


def _check_tls(failures: Failures, deployment: dict[str, Any], container: dict[str, Any]) -> None:
    """With TLS on, the files come from a mounted Secret, and the probes and Prometheus speak HTTPS."""
    certfile = (_env_value(container, SSL_CERTFILE_ENV) or {}).get("value")
    if certfile is None:
        return
    keyfile = (_env_value(container, SSL_KEYFILE_ENV) or {}).get("value")
    failures.check(keyfile is not None, f"{SSL_CERTFILE_ENV} without {SSL_KEYFILE_ENV}")
    pod_spec = deployment["spec"]["template"]["spec"]
    secrets = {v["name"] for v in pod_spec.get("volumes", []) if "secret" in v}
    for path in filter(None, (certfile, keyfile)):
        mounted = [m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")]
        failures.check(
            any(m["name"] in secrets and m.get("readOnly") for m in mounted),
            f"{path} must come from a Secret volume mounted read-only",
        )
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        scheme = container.get(probe, {}).get("httpGet", {}).get("scheme", "HTTP")
        failures.check(scheme == "HTTPS", f"{probe} must use scheme HTTPS: the server speaks TLS only")
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") == "true":
        failures.check(annotations.get("prometheus.io/scheme") == "https", "Prometheus must scrape the pods over HTTPS")


MODEL_DIR_ENV = "RESNET_SERVE_MODEL_DIR"
MODEL_CONTROL_MODE_ENV = "RESNET_SERVE_MODEL_CONTROL_MODE"


def _pod_component(deployment: dict[str, Any]) -> str | None:
    return deployment["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def _text_setting(objects: Iterable[dict[str, Any]], container: dict[str, Any], name: str) -> str | None:
    """A RESNET_SERVE_ setting as the server will see it (env, else envFrom config maps); None when unset."""
    value = (_env_value(container, name) or {}).get("value")
    return _config_map_value(objects, container, name) if value is None else value


def _check_model_repository(
    failures: Failures, objects: list[dict[str, Any]], pod_spec: dict[str, Any], container: dict[str, Any]
) -> None:
    """A model repository is a mounted volume; in poll mode every pod must see the same files (a ReadWriteMany
    claim, or NFS), which the server mounts read-only; the pod's other containers run the server's image."""
    for init in pod_spec.get("initContainers", []):
        failures.check(
            init.get("image") == container.get("image"), f"init container {init['name']}: not the server's image"
        )
    model_dir = _text_setting(objects, container, MODEL_DIR_ENV)
    if model_dir is None:
        return  # the bundled model, inside the image
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if (model_dir.rstrip("/") + "/").startswith(m["mountPath"].rstrip("/") + "/")
    ]
    failures.check(bool(mounts), f"{MODEL_DIR_ENV}={model_dir} is not on a volume mounted in the server container")
    if not mounts or (_text_setting(objects, container, MODEL_CONTROL_MODE_ENV) or "none") != "poll":
        return
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    failures.check(mount.get("readOnly") is True, f"the server only reads {model_dir}: mount it read-only")
    volume = next((v for v in pod_spec.get("volumes", []) if v["name"] == mount["name"]), {})
    claims = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolumeClaim"}
    claim = claims.get(volume.get("persistentVolumeClaim", {}).get("claimName"))
    shared = "nfs" in volume or (claim is not None and "ReadWriteMany" in claim["spec"].get("accessModes", []))
    failures.check(
        shared,
        f"in poll mode every pod must see the same repository: {model_dir} must be an NFS volume or a "
        "PersistentVolumeClaim (in these manifests) with accessModes ReadWriteMany",
    )


def _adapter_metrics(values: Path) -> set[str]:
    """The custom metric names the Prometheus adapter's rules in a Helm values file serve."""
    rules = (yaml.safe_load(values.read_text()).get("rules") or {}).get("custom", [])
    return {rule.get("name", {}).get("as", "") for rule in rules}


def _check_autoscaler(
    failures: Failures, by_kind: dict[str, list[dict[str, Any]]], deployment: dict[str, Any], adapter: Path | None
) -> None:
    hpas, scaled = by_kind.get("HorizontalPodAutoscaler", []), by_kind.get("ScaledObject", [])
    failures.check(
        len(hpas) + len(scaled) == 1,
        f"expected exactly one autoscaler (an HPA, or KEDA's ScaledObject, which makes its own), found "
        f"{len(hpas)} HPA and {len(scaled)} ScaledObject",
    )
    name = deployment["metadata"]["name"]
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        failures.check((target["kind"], target["name"]) == ("Deployment", name), "HPA does not scale the Deployment")
        failures.check(hpa["spec"].get("minReplicas", 1) >= 2, "HPA minReplicas below 2 leaves the PDB nothing to keep")
        for metric in hpa["spec"].get("metrics", []):
            if metric["type"] != "Pods":
                continue
            metric_name = metric["pods"]["metric"]["name"]
            failures.check(metric_name == QUEUE_METRIC, f"HPA Pods metric {metric_name!r} is not {QUEUE_METRIC}")
            if adapter is not None:
                failures.check(
                    metric_name in _adapter_metrics(adapter),
                    f"no rule in {adapter} serves the HPA's metric {metric_name!r}",
                )
    for obj in scaled:
        spec = obj["spec"]
        target = spec["scaleTargetRef"]
        failures.check(
            (target.get("kind", "Deployment"), target["name"]) == ("Deployment", name),
            "ScaledObject does not scale the Deployment",
        )
        failures.check(spec.get("minReplicaCount", 0) >= 2, "ScaledObject minReplicaCount below 2 (or scale to zero)")
        failures.check(spec.get("maxReplicaCount", 100) >= spec.get("minReplicaCount", 0), "max below min replicas")
        prometheus = [t for t in spec.get("triggers", []) if t["type"] == "prometheus"]
        failures.check(len(prometheus) == 1, "ScaledObject needs one prometheus trigger")
        for trigger in prometheus:
            metadata = trigger["metadata"]
            failures.check(
                QUEUE_METRIC in metadata.get("query", ""), f"the prometheus trigger must query {QUEUE_METRIC}"
            )
            failures.check(float(metadata.get("threshold", "nan")) > 0, "the prometheus trigger needs a threshold > 0")
            failures.check(metadata.get("serverAddress", "").startswith("http"), "serverAddress must be a URL")


def without_crds(rendered: Path, out: Path) -> list[str]:
    objects = [o for o in yaml.safe_load_all(rendered.read_text()) if o]
    kept = [o for o in objects if not o["apiVersion"].startswith(CRD_API_GROUPS)]
    out.write_text(yaml.safe_dump_all(kept))
    return []


def check_k8s(rendered: Path, adapter: Path | None = None) -> list[str]:
    failures = Failures()
    objects = [o for o in yaml.safe_load_all(rendered.read_text()) if o]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    servers = [d for d in by_kind.get("Deployment", []) if _pod_component(d) == SERVER_COMPONENT]
    failures.check(len(servers) == 1, f"expected exactly one Deployment of the server's pods, found {len(servers)}")
    for kind in ("Service", "PodDisruptionBudget"):
        failures.check(
            len(by_kind.get(kind, [])) == 1, f"expected exactly one {kind}, found {len(by_kind.get(kind, []))}"
        )
    if failures.messages:
        return failures.messages

    deployment = servers[0]
    pod_spec = deployment["spec"]["template"]["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    failures.check(selector.items() <= pod_labels.items(), "Deployment selector does not match its pod labels")
    failures.check("replicas" not in deployment["spec"], "Deployment sets replicas: the HPA owns the count")

    containers = pod_spec["containers"]
    failures.check(len(containers) == 1, "one container per pod: one server process owns the model and its batches")
    container = containers[0]
    failures.check(container["name"] == SERVER_CONTAINER, f"container must be named {SERVER_CONTAINER}")
    command = " ".join(container.get("command", []) + container.get("args", []))
    failures.check("--workers" not in command, "several uvicorn workers would each hold a model and split batches")
    _check_server_container(failures, "Deployment", objects, pod_spec, container)

    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    service = by_kind["Service"][0]
    failures.check(
        service["spec"]["selector"].items() <= pod_labels.items(), "Service selector does not match the pods"
    )
    for port in service["spec"]["ports"]:
        failures.check(
            port["targetPort"] in ports, f"Service targetPort {port['targetPort']!r} is not a container port"
        )

    _check_autoscaler(failures, by_kind, deployment, adapter)
    _check_tls(failures, deployment, container)
    _check_model_repository(failures, objects, pod_spec, container)
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        uses_cpu = any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics", []))
        failures.check(
            not uses_cpu or "cpu" in container.get("resources", {}).get("requests", {}),
            "HPA scales on CPU utilization but the container requests no CPU",
        )

    pdb = by_kind["PodDisruptionBudget"][0]
    failures.check(
        pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), "PDB selector does not match the pods"
    )
    return failures.messages


def check_kserve(path: Path) -> list[str]:
    failures = Failures()
    isvc = yaml.safe_load(path.read_text())
    failures.check(
        isvc.get("apiVersion") == "serving.kserve.io/v1beta1", "apiVersion must be serving.kserve.io/v1beta1"
    )
    failures.check(isvc.get("kind") == "InferenceService", "kind must be InferenceService")
    predictor = dict(isvc.get("spec", {}).get("predictor", {}))
    failures.check(bool(predictor.get("containers")), "a custom predictor lists its containers")
    failures.check(
        not (KSERVE_PREDICTOR_IMPLEMENTATIONS & predictor.keys()),
        "a custom predictor names no model format implementation",
    )

    # Everything that is not a KServe extension field is a PodSpec: validate it as a Pod, strictly.
    pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_COMPONENT_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kserve-predictor"}, "spec": pod_spec}
    try:
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        failures.check(False, f"predictor pod spec: {'.'.join(map(str, exc.path))}: {exc.message}")
    if failures.messages:
        return failures.messages

    container = pod_spec["containers"][0]
    failures.check(
        container["name"] == KSERVE_CONTAINER, f"KServe finds the server container by the name {KSERVE_CONTAINER}"
    )
    port_env = (_env_value(container, PORT_ENV) or {}).get("value")
    container_ports = [p["containerPort"] for p in container.get("ports", [])]
    failures.check(
        port_env is not None and container_ports == [int(port_env)], f"{PORT_ENV} must equal the one container port"
    )
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe_port = container.get(probe, {}).get("httpGet", {}).get("port")
        failures.check(port_env is not None and probe_port == int(port_env), f"{probe} must use port {port_env}")
    _check_server_container(failures, "InferenceService predictor", [isvc], pod_spec, container)
    if "timeout" in predictor:
        failures.check(
            predictor["timeout"] > _setting([isvc], container, TIMEOUT_ENV),
            "KServe's timeout must exceed the server's request timeout",
        )
    return failures.messages


def check_kserve_v2(path: Path) -> list[str]:
    """The V2 serving runtime and the InferenceService that uses it."""
    failures = Failures()
    objects = [o for o in yaml.safe_load_all(path.read_text()) if o]
    runtimes = [o for o in objects if o.get("kind") == "ServingRuntime"]
    services = [o for o in objects if o.get("kind") == "InferenceService"]
    failures.check(len(runtimes) == 1 and len(services) == 1, "one ServingRuntime and one InferenceService")
    if failures.messages:
        return failures.messages
    runtime, isvc = runtimes[0], services[0]
    spec = runtime["spec"]
    failures.check("v2" in spec.get("protocolVersions", []), "the runtime must declare protocolVersions: [v2]")
    if "grpc-v2" in spec.get("protocolVersions", []):
        runtime_container = spec["containers"][0]
        grpc_port = (_env_value(runtime_container, "RESNET_SERVE_GRPC_PORT") or {}).get("value")
        h2c = [p["containerPort"] for p in runtime_container.get("ports", []) if p.get("name") == "h2c"]
        failures.check(
            grpc_port is not None and h2c == [int(grpc_port)],
            "with grpc-v2, RESNET_SERVE_GRPC_PORT must be the container port named h2c (KServe's gRPC)",
        )
    # Everything but KServe's runtime fields is a PodSpec: validate it as a Pod, strictly.
    runtime_fields = {
        "supportedModelFormats",
        "protocolVersions",
        "multiModel",
        "disabled",
        "builtInAdapter",
        "grpcEndpoint",
        "grpcDataEndpoint",
        "storageHelper",
        "replicas",
        "httpDataEndpoint",
    }
    pod_spec = {k: v for k, v in spec.items() if k not in runtime_fields}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kserve-runtime"}, "spec": pod_spec}
    try:
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        failures.check(False, f"runtime pod spec: {'.'.join(map(str, exc.path))}: {exc.message}")
        return failures.messages
    container = pod_spec["containers"][0]
    failures.check(
        container["name"] == KSERVE_CONTAINER, f"KServe finds the server container by the name {KSERVE_CONTAINER}"
    )
    failures.check(
        (_env_value(container, "RESNET_SERVE_MODEL_DIR") or {}).get("value") == "/mnt/models",
        "the storage initializer puts the model in /mnt/models: RESNET_SERVE_MODEL_DIR must point there",
    )
    port_env = (_env_value(container, PORT_ENV) or {}).get("value")
    failures.check(
        port_env is not None and int(port_env) in [p["containerPort"] for p in container.get("ports", [])],
        f"{PORT_ENV} must be a container port",
    )
    for probe, path_ in (("livenessProbe", "/v2/health/live"), ("readinessProbe", "/v2/health/ready")):
        failures.check(_probe_path(container, probe) == path_, f"{probe} must probe {path_}")
    security = container.get("securityContext", {})
    failures.check(security.get("readOnlyRootFilesystem") is True, "root filesystem must be read-only")
    failures.check(security.get("runAsNonRoot") is True, "runAsNonRoot unset")
    model = isvc["spec"]["predictor"].get("model", {})
    failures.check(model.get("runtime") == runtime["metadata"]["name"], "the InferenceService must name the runtime")
    failures.check(model.get("protocolVersion") == "v2", "the InferenceService must ask for protocolVersion v2")
    formats = {f["name"] for f in spec.get("supportedModelFormats", [])}
    failures.check(
        model.get("modelFormat", {}).get("name") in formats, "the model format must be one the runtime supports"
    )
    timeout_env = (_env_value(container, TIMEOUT_ENV) or {}).get("value")
    if "timeout" in isvc["spec"]["predictor"] and timeout_env is not None:
        failures.check(
            isvc["spec"]["predictor"]["timeout"] > float(timeout_env),
            "KServe's timeout must exceed the server's request timeout",
        )
    return failures.messages


def _panels(dashboard: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def check_dashboard(dashboard_path: Path, datasources_path: Path) -> list[str]:
    failures = Failures()
    dashboard = json.loads(dashboard_path.read_text())
    datasource_uids = {d["uid"] for d in yaml.safe_load(datasources_path.read_text())["datasources"]}
    failures.check(bool(dashboard.get("uid")), "the dashboard needs a fixed uid so links to it survive reloads")
    failures.check(dashboard.get("id") is None, "a provisioned dashboard must not carry a database id")
    ids = [p.get("id") for p in _panels(dashboard)]
    failures.check(len(ids) == len(set(ids)), "panel ids must be unique")
    queried = 0
    for panel in _panels(dashboard):
        if panel.get("type") == "row":
            continue
        title = panel.get("title", "?")
        uid = panel.get("datasource", {}).get("uid")
        failures.check(uid in datasource_uids, f"panel {title!r}: datasource uid {uid!r} is not provisioned")
        targets = panel.get("targets", [])
        failures.check(bool(targets), f"panel {title!r} has no query")
        for target in targets:
            failures.check(bool(target.get("expr")), f"panel {title!r}: a target without expr")
            failures.check(
                target.get("datasource", {}).get("uid", uid) in datasource_uids, f"panel {title!r}: target datasource"
            )
            queried += 1
    failures.check(queried > 0, "the dashboard has no queries")
    return failures.messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    k8s = sub.add_parser("k8s")
    k8s.add_argument("rendered", type=Path)
    k8s.add_argument("--adapter-values", type=Path, help="the Prometheus adapter's Helm values (its rules)")
    crds = sub.add_parser("without-crds")
    crds.add_argument("rendered", type=Path)
    crds.add_argument("out", type=Path)
    sub.add_parser("kserve").add_argument("path", type=Path)
    sub.add_parser("kserve-v2").add_argument("path", type=Path)
    dash = sub.add_parser("dashboard")
    dash.add_argument("dashboard", type=Path)
    dash.add_argument("datasources", type=Path)
    args = parser.parse_args(argv)

    if args.what == "k8s":
        messages, subject = check_k8s(args.rendered, args.adapter_values), args.rendered
    elif args.what == "without-crds":
        messages, subject = without_crds(args.rendered, args.out), args.rendered
    elif args.what == "kserve":
        messages, subject = check_kserve(args.path), args.path
    elif args.what == "kserve-v2":
        messages, subject = check_kserve_v2(args.path), args.path
    else:
        messages, subject = check_dashboard(args.dashboard, args.datasources), args.dashboard
    for message in messages:
        print(f"FAIL {subject}: {message}", file=sys.stderr)
    if not messages:
        print(f"ok   {subject}: {args.what} checks passed")
    return 1 if messages else 0


if __name__ == "__main__":
    sys.exit(main())
