"""Hostile and bursty clients against the real server (`python -m service` in a subprocess), over real sockets.

The server helpers come from tests/integration/conftest.py; fixtures defined there are not visible in this folder,
so the ones used here are re-exported. Clients and process readings live in `harness.py`.

No test waits with a fixed sleep or asserts on a duration except generous limits that only turn a hang into a
failure; the servers get short receipt deadlines by flags so that the attacks end quickly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.integration.conftest import ServerProcess, start_server  # noqa: F401 - start_server is re-exported
from tests.reliability.harness import EXAMPLES, SERVER_FLAGS

# --- servers -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """`launch(*flags)` starts a bundled-model server shared by a module's tests and waits until it is ready; the
    servers are killed after the module."""
    started: list[ServerProcess] = []

    def start(*flags: str) -> ServerProcess:
        log = tmp_path_factory.mktemp("reliability-server") / "server.log"
        server = ServerProcess([*SERVER_FLAGS, *flags], log).start()
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def ready_server(start_server: Callable[..., ServerProcess]) -> Callable[..., ServerProcess]:  # noqa: F811
    """`ready_server(*flags)`: a bundled-model server for one test, ready; killed after the test."""

    def start(*flags: str) -> ServerProcess:
        return start_server(*SERVER_FLAGS, *flags).wait_ready()

    return start


# --- real images -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def example_pngs() -> dict[str, bytes]:
    """The repository's example images (Fashion-MNIST test images upscaled to 280x280 PNG), by file stem."""
    found = {path.stem: path.read_bytes() for path in sorted(EXAMPLES.glob("*.png"))}
    assert len(found) >= 4, f"expected the example PNGs in {EXAMPLES}"
    return found
