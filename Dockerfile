# resnet-serve, CPU image: FastAPI + ONNX Runtime with dynamic batching, and the bundled Fashion-MNIST model.
#
#   docker build -t resnet-serve .
#   docker run --rm -p 8000:8000 -p 8001:8001 resnet-serve     # HTTP on 8000, gRPC (Open Inference Protocol) on 8001
#   docker build --build-arg EXTRAS=otel -t resnet-serve:otel .  # with OpenTelemetry, for --tracing
#
# The base is an argument so that builders without registry access can substitute any Debian-like image that
# has python3 >= 3.11 and python3-venv (the test suite uses a debootstrap image). Nothing below relies on
# /usr/local/bin/python: the venv is made with `python3 -m venv` and both stages use the same base.
# The GPU variant is Dockerfile.gpu.
ARG BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python3 -m venv /opt/venv

# Runtime dependencies first, read from pyproject.toml alone, so that a code change reuses this layer.
# Only [project.dependencies], and the extras named in EXTRAS (comma-separated; `otel` for --tracing): the [train]
# extra (torch) never enters the image.
ARG EXTRAS=""
COPY pyproject.toml ./
RUN EXTRAS="${EXTRAS}" python3 -c "import os, tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; extras = [name for name in os.environ['EXTRAS'].split(',') if name]; print('\n'.join(project['dependencies'] + [dep for name in extras for dep in project['optional-dependencies'][name]]))" \
        > /tmp/requirements.txt \
    && /opt/venv/bin/python -m pip install --requirement /tmp/requirements.txt

# README.md* may match nothing (pyproject.toml keeps the source list non-empty for the classic builder).
COPY pyproject.toml README.md* ./
COPY service/ service/
# pip and setuptools are build tools: the served venv does not need them. The wheel is the server alone,
# with the bundled model as package data (service/bundled_models), so the image holds it once.
RUN /opt/venv/bin/python -m pip install --no-deps . \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools


FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="resnet-serve" \
      org.opencontainers.image.description="Image classification with ResNets on ONNX Runtime, dynamic batching, Prometheus metrics" \
      org.opencontainers.image.licenses="MIT"

# A fixed numeric UID so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN useradd --no-log-init --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin resnet-serve

COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/resnet-serve/healthcheck.py

# Every server flag is also an environment variable with the RESNET_SERVE_ prefix. The server listens on all
# interfaces here because the container's network namespace is its boundary. With no RESNET_SERVE_MODEL_DIR the
# bundled model is served; to serve others, mount a folder (say at /models) and set RESNET_SERVE_MODEL_DIR=/models.
# Bytecode was compiled at install time; not writing .pyc keeps a read-only root filesystem quiet. ONNX Runtime >= 1.29 on Linux uploads
# usage telemetry and keeps a device ID on disk unless told not to: an inference server does neither
# (1.32 reads ORT_DISABLE_TELEMETRY; newer upstream sources read ORT_TELEMETRY_DISABLED).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    ORT_TELEMETRY_DISABLED=1 \
    RESNET_SERVE_HOST=0.0.0.0 \
    RESNET_SERVE_PORT=8000 \
    RESNET_SERVE_GRPC_PORT=8001

USER 10001:10001
WORKDIR /opt/resnet-serve
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=4s --start-period=60s --retries=3 \
    CMD ["/opt/venv/bin/python", "/opt/resnet-serve/healthcheck.py"]

# Exec form: the server is PID 1 and receives SIGTERM itself. It then drains: /readyz answers 503, new requests
# are refused, the requests in flight are answered, and the process exits 0.
ENTRYPOINT ["/opt/venv/bin/resnet-serve"]
