"""The protocol guard's defences over TLS, against a real server with a certificate from a throwaway CA: a handshake
that never ends is cut at its deadline, handshakes under way count in the connection cap, the receipt deadlines
run once the handshake is done, and a client refused while still writing reads its answer (the lingering close,
which over TLS is TLS's own closing handshake). Under both event loops where they differ: they report failed
handshakes differently."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as tritongrpc
from tritonclient.utils import InferenceServerException

from tests.certificates import CertificateAuthority, Issued
from tests.integration.test_v2_grpc import GRPC_LISTENING, free_port
from tests.reliability.harness import HANG_LIMIT_S, SERVER_FLAGS, connect, parse_responses, poll, request_bytes

LOOPS = ["uvloop", "asyncio"]
UPLOAD = b"\x89" * 512 * 1024


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return CertificateAuthority("defences", tmp_path_factory.mktemp("pki")).issue_server()


def trusting(issued: Issued) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(issued.ca_file))


@pytest.fixture
def tls_server(start_server, issued):
    """`tls_server(*flags)`: a bundled-model server with TLS, ready; killed after the test."""

    def start(*flags: str):
        return start_server(
            *SERVER_FLAGS,
            "--ssl-certfile",
            str(issued.certfile),
            "--ssl-keyfile",
            str(issued.keyfile),
            *flags,
            verify=trusting(issued),
        ).wait_ready()

    return start


@contextmanager
def tls_connection(port: int, issued: Issued) -> Iterator[ssl.SSLSocket]:
    with connect(port) as raw, trusting(issued).wrap_socket(raw, server_hostname="localhost") as connection:
        connection.settimeout(HANG_LIMIT_S)
        yield connection


def read_strictly_until_closed(connection: socket.socket) -> bytes:
    """What the server sends until it closes; a reset (which would have destroyed its answer) fails the test."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    return data


def closed_by_server(connection: socket.socket) -> bool:
    """The server closed a connection that never sent a byte (with a FIN or a reset)."""
    connection.settimeout(HANG_LIMIT_S)
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("loop", LOOPS)
def test_a_handshake_that_never_ends_is_cut_at_its_deadline(tls_server, issued, loop):
    server = tls_server("--loop", loop, "--tls-handshake-timeout-s", "1")
    with connect(server.port) as silent, connect(server.port) as halfway:
        halfway.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, then nothing
        assert closed_by_server(silent)
        assert closed_by_server(halfway)
    assert httpx.get(server.url + "/healthz", verify=trusting(issued)).status_code == 200


@pytest.mark.parametrize("loop", LOOPS)
def test_handshakes_under_way_count_in_the_connection_cap(tls_server, issued, loop):
    server = tls_server("--loop", loop, "--max-connections", "2", "--tls-handshake-timeout-s", "3")
    with connect(server.port), connect(server.port):  # two connections that never start their handshake
        with tls_connection(server.port, issued) as refused:
            refused.sendall(request_bytes("GET", "/healthz"))
            responses = parse_responses(read_strictly_until_closed(refused))
        assert [r.status for r in responses] == [503]
        assert responses[0].error_code == "too_many_connections"

    # Gone, they count until their handshake deadline (the loops do not say when a client leaves mid-handshake);
    # then the cap has room again.
    def answered() -> bool:
        return httpx.get(server.url + "/healthz", verify=trusting(issued)).status_code == 200

    poll(answered, "the cap to have room again")


def test_the_head_deadline_runs_once_the_handshake_is_done(tls_server, issued):
    server = tls_server("--header-timeout-s", "1")
    with tls_connection(server.port, issued) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and the rest never comes
        responses = parse_responses(read_strictly_until_closed(slow))
    assert [r.status for r in responses] == [408]
    assert responses[0].error_code == "request_timeout"


def test_a_client_refused_by_the_app_before_its_body_was_read_reads_the_answer(tls_server, issued, tmp_path: Path):
    keys = tmp_path / "keys.txt"
    keys.write_text("ci:a-key-of-some-length-0123456789\n")
    server = tls_server("--api-keys-file", str(keys))
    upload = request_bytes("POST", "/v1/classify", body=UPLOAD, content_type="image/png")
    for _ in range(5):
        with tls_connection(server.port, issued) as refused:
            refused.sendall(upload)
            responses = parse_responses(read_strictly_until_closed(refused))
        assert [r.status for r in responses] == [401], responses
        assert responses[0].headers.get("connection") == "close"


def test_a_client_refused_by_the_connection_cap_reads_the_503_after_writing_its_whole_request(tls_server, issued):
    server = tls_server("--max-connections", "1", "--keep-alive-timeout-s", "120", "--header-timeout-s", "120")
    upload = request_bytes("POST", "/v1/classify", body=UPLOAD, content_type="image/png")
    with tls_connection(server.port, issued) as held:
        held.sendall(request_bytes("GET", "/healthz"))
        assert held.recv(65536).startswith(b"HTTP/1.1 200")
        for _ in range(5):
            with tls_connection(server.port, issued) as refused:
                refused.sendall(upload)
                responses = parse_responses(read_strictly_until_closed(refused))
            assert [r.status for r in responses] == [503], responses
            assert responses[0].error_code == "too_many_connections"


def _two_accepted(port: int) -> tuple[socket.socket, socket.socket] | None:
    """Two silent connections, when the server kept both open for a moment; a refused one is closed at once."""
    pair = (connect(port), connect(port))
    for connection in pair:
        connection.settimeout(0.3)
        try:
            closed = connection.recv(1) == b""
        except TimeoutError:
            continue
        except ConnectionResetError:
            closed = True
        if closed:
            for each in pair:
                each.close()
            return None
    return pair


def test_grpc_cuts_unfinished_handshakes_and_counts_them_in_its_connection_cap(tls_server, issued):
    server = tls_server("--grpc-port", str(free_port()), "--max-connections", "2", "--tls-handshake-timeout-s", "3")
    port = poll(lambda: (match := GRPC_LISTENING.search(server.log())) and int(match.group(1)), "gRPC to listen")

    def client() -> tritongrpc.InferenceServerClient:
        return tritongrpc.InferenceServerClient(f"localhost:{port}", ssl=True, root_certificates=str(issued.ca_file))

    first = client()
    assert first.is_server_live()
    first.close()
    # The server frees the first client's slot when it reads its close, a moment later: until then, one of two new
    # connections is refused at acceptance. Hold two that the cap accepted.
    held = poll(lambda: _two_accepted(port), "the cap to accept two connections that never send a byte")
    with held[0] as silent, held[1]:
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            client().is_server_live(client_timeout=HANG_LIMIT_S)
        assert closed_by_server(silent)  # at its handshake deadline

    def live() -> bool:
        try:
            return client().is_server_live(client_timeout=HANG_LIMIT_S)
        except InferenceServerException:
            return False

    poll(live, "gRPC's cap to have room again")
