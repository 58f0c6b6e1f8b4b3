"""Property-based and schema-driven tests: hypothesis strategies for V2 JSON, V2 binary and gRPC messages, and
schemathesis over the app's own OpenAPI schema, all sent over real sockets to a real server (`python -m service`,
protocol guard included).

Bounded and reproducible in `make test`: the `ci` hypothesis profile has a fixed seed (derandomize) and a small
number of examples per test. `make fuzz` selects the `fuzz` profile (HYPOTHESIS_PROFILE=fuzz): thousands of
examples, a random seed each run; a failure prints the example to reproduce it.

The invariant everywhere: a 4xx (or the matching gRPC status) with a message a person understands, never a 5xx
or UNKNOWN, never invalid JSON out, and the server answering a valid request right afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.integration.conftest import ServerProcess, free_port, poll
from tests.integration.test_v2_grpc import GRPC_LISTENING

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "60")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "2000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

UPLOAD_LIMIT_BYTES = 1 << 20


@pytest.fixture(scope="session")
def property_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The bundled model behind the real server, HTTP and gRPC, with a 1 MiB upload limit so that extreme sizes
    are cheap to reach."""
    log = tmp_path_factory.mktemp("property-server") / "server.log"
    server = ServerProcess(
        [
            "--workers",
            "1",
            "--no-access-log",
            "--max-upload-bytes",
            str(UPLOAD_LIMIT_BYTES),
            "--grpc-port",
            str(free_port()),
        ],
        log,
    ).start()
    try:
        server.wait_ready()
        server.grpc_port = int(poll(lambda: GRPC_LISTENING.search(server.log()), "gRPC to listen").group(1))  # type: ignore[attr-defined]
        yield server
    finally:
        server.kill()
