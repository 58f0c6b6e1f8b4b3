"""TLS on both listeners, against real servers (`python -m service --ssl-certfile ...`), with the stock clients:
httpx, `tritonclient.http` and `tritonclient.grpc`. Every certificate comes from a throwaway CA made for the test
(`tests/certificates.py`); a client that trusts another CA, or that brings no certificate or a foreign one when
client certificates are required, is refused on both listeners; rotated files take effect without a restart."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
from http.client import HTTPException
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
import tritonclient.http as tritonhttp
from tritonclient.utils import InferenceServerException

from tests.certificates import CertificateAuthority, Issued
from tests.integration.conftest import ServerProcess, poll
from tests.integration.test_v2_grpc import GRPC_LISTENING, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SNEAKER = (REPO_ROOT / "examples" / "sneaker.png").read_bytes()
BUNDLED = "fashion-mnist-resnet20"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertificateAuthority]:
    folder = tmp_path_factory.mktemp("pki")
    return {"ours": CertificateAuthority("ours", folder), "other": CertificateAuthority("other", folder)}


def trusting(ca_file: Path, client: Issued | None = None) -> ssl.SSLContext:
    """What a client uses: trusts `ca_file`, presents `client`'s certificate when given."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if client is not None:
        context.load_cert_chain(client.certfile, client.keyfile)
    return context


def start_tls_server(
    start_server, server: Issued, *flags: str, client: Issued | None = None, workers: int = 1
) -> tuple[ServerProcess, str]:
    """A bundled-model server with TLS on HTTP and gRPC; (the server, its gRPC address) once ready."""
    process = start_server(
        "--workers",
        str(workers),
        "--grpc-port",
        str(free_port()),
        "--ssl-certfile",
        str(server.certfile),
        "--ssl-keyfile",
        str(server.keyfile),
        *flags,
        verify=trusting(server.ca_file, client),
    ).wait_ready()
    port = poll(lambda: (match := GRPC_LISTENING.search(process.log())) and int(match.group(1)), "gRPC to listen")
    return process, f"localhost:{port}"


def classify_over_http(url: str, context: ssl.SSLContext) -> str:
    answer = httpx.post(url + "/v1/classify", files={"file": ("sneaker.png", SNEAKER)}, verify=context, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["results"][0]["top_k"][0]["label"]


def triton_http(url: str, ca_file: Path, client: Issued | None = None) -> tritonhttp.InferenceServerClient:
    options = {"ca_certs": str(ca_file)}
    if client is not None:
        options |= {"certfile": str(client.certfile), "keyfile": str(client.keyfile)}
    return tritonhttp.InferenceServerClient(
        url.removeprefix("https://"), ssl=True, ssl_options=options, network_timeout=60.0
    )


def triton_grpc(address: str, ca_file: Path, client: Issued | None = None) -> tritongrpc.InferenceServerClient:
    return tritongrpc.InferenceServerClient(
        address,
        ssl=True,
        root_certificates=str(ca_file),
        private_key=None if client is None else str(client.keyfile),
        certificate_chain=None if client is None else str(client.certfile),
    )


def top_label(client, module) -> str:
    """Classify the sneaker with a tritonclient module (http or grpc): the top label."""
    image = module.InferInput("input", [1], "BYTES")
    image.set_data_from_numpy(np.array([SNEAKER], dtype=object))
    result = client.infer(BUNDLED, [image], outputs=[module.InferRequestedOutput("logits", class_count=1)])
    return result.as_numpy("logits")[0][0].decode().split(":")[2]


@pytest.mark.parametrize("workers", [1, 2])
def test_both_listeners_serve_the_stock_clients_over_tls(start_server, pki, workers):
    issued = pki["ours"].issue_server()
    server, grpc_address = start_tls_server(start_server, issued, workers=workers)
    assert server.url.startswith("https://")
    context = trusting(issued.ca_file)

    assert classify_over_http(server.url, context) == "Sneaker"
    over_http = triton_http(server.url, issued.ca_file)
    assert over_http.is_server_ready()
    assert top_label(over_http, tritonhttp) == "Sneaker"
    over_grpc = triton_grpc(grpc_address, issued.ca_file)
    assert over_grpc.is_server_ready()
    assert top_label(over_grpc, tritongrpc) == "Sneaker"
    assert over_grpc.get_model_metadata(BUNDLED).name == BUNDLED


def test_a_client_that_trusts_another_ca_is_refused_on_both_listeners(start_server, pki):
    issued = pki["ours"].issue_server()
    server, grpc_address = start_tls_server(start_server, issued)
    wrong_ca = pki["other"].ca_file

    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(server.url + "/v2/health/ready", verify=trusting(wrong_ca))
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        triton_http(server.url, wrong_ca).is_server_ready()
    with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
        triton_grpc(grpc_address, wrong_ca).is_server_ready()
    # Plain HTTP to the TLS port is not served either.
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url.replace("https://", "http://") + "/healthz", timeout=10)
    assert httpx.get(server.url + "/healthz", verify=trusting(issued.ca_file)).status_code == 200


def test_client_certificates_from_the_given_ca_are_required_on_both_listeners(start_server, pki):
    ours, other = pki["ours"], pki["other"]
    issued = ours.issue_server()
    member = ours.issue_client("member")
    stranger = other.issue_client("stranger")
    server, grpc_address = start_tls_server(start_server, issued, "--ssl-ca-certs", str(ours.ca_file), client=member)

    assert classify_over_http(server.url, trusting(issued.ca_file, member)) == "Sneaker"
    assert top_label(triton_http(server.url, issued.ca_file, member), tritonhttp) == "Sneaker"
    assert top_label(triton_grpc(grpc_address, issued.ca_file, member), tritongrpc) == "Sneaker"

    for refused in (None, stranger):
        # TLS 1.3 sends the client's certificate after the client considers the handshake done: the refusal shows
        # as a connection the server closes (or resets) instead of an answer.
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            httpx.get(server.url + "/healthz", verify=trusting(issued.ca_file, refused), timeout=30)
        with pytest.raises((OSError, HTTPException)):  # geventhttpclient: the connection closed before an answer
            triton_http(server.url, issued.ca_file, refused).is_server_live()
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            triton_grpc(grpc_address, issued.ca_file, refused).is_server_live()


def replace(source: Path, target: Path) -> None:
    """Publish a file as a rotation does: written beside, then renamed over the old one (never read half written)."""
    partial = target.with_name(target.name + ".new")
    shutil.copyfile(source, partial)
    partial.replace(target)


def test_rotated_certificate_files_take_effect_without_a_restart(start_server, pki, tmp_path):
    ours, other = pki["ours"], pki["other"]
    first, second = ours.issue_server(), other.issue_server()
    certfile, keyfile = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copyfile(first.certfile, certfile)
    shutil.copyfile(first.keyfile, keyfile)
    live = Issued(certfile, keyfile, first.ca_file)
    server, grpc_address = start_tls_server(start_server, live)
    assert classify_over_http(server.url, trusting(ours.ca_file)) == "Sneaker"

    # A broken rewrite (a key that does not match the certificate) is refused; the certificate read before stays.
    # (The files are looked at when a handshake comes, at most once a second: each poll makes one.)
    replace(second.keyfile, keyfile)

    def broken_rewrite_refused() -> bool:
        assert classify_over_http(server.url, trusting(ours.ca_file)) == "Sneaker"
        return "cannot re-read the certificate files" in server.log()

    poll(broken_rewrite_refused, "the broken rewrite to be logged")
    assert triton_grpc(grpc_address, ours.ca_file).is_server_live()

    replace(second.certfile, certfile)

    def http_serves_the_new_certificate() -> bool:
        try:
            return httpx.get(server.url + "/healthz", verify=trusting(other.ca_file)).status_code == 200
        except httpx.ConnectError:
            return False

    def grpc_serves_the_new_certificate() -> bool:
        try:
            return triton_grpc(grpc_address, other.ca_file).is_server_live()
        except InferenceServerException:
            return False

    poll(http_serves_the_new_certificate, "HTTP to serve the rotated certificate")
    poll(grpc_serves_the_new_certificate, "gRPC to serve the rotated certificate")
    assert classify_over_http(server.url, trusting(other.ca_file)) == "Sneaker"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(server.url + "/healthz", verify=trusting(ours.ca_file))
    assert "certificate files changed" in server.log()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--ssl-certfile", "{cert}"], "ssl_certfile and ssl_keyfile are set together"),
        (["--ssl-ca-certs", "{ca}"], "ssl_ca_certs asks clients for certificates over TLS"),
    ],
)
def test_incomplete_tls_settings_stop_the_server_at_once(start_server, pki, flags, message):
    issued = pki["ours"].issue_server()
    args = [flag.format(cert=issued.certfile, ca=issued.ca_file) for flag in flags]
    server = start_server(*args)
    assert server.wait_exit() == 2
    assert message in server.log()


def test_a_key_that_does_not_match_its_certificate_stops_start_up_naming_the_files(start_server, pki):
    issued, foreign = pki["ours"].issue_server(), pki["other"].issue_server()
    server = start_server(
        "--workers", "1", "--ssl-certfile", str(issued.certfile), "--ssl-keyfile", str(foreign.keyfile)
    )
    assert server.wait_exit() == 3
    assert f"{issued.certfile} and {foreign.keyfile}: not a PEM certificate chain and its matching private key" in (
        server.log()
    )


def test_the_container_health_check_asks_over_https(start_server, pki):
    issued = pki["ours"].issue_server()
    server, _ = start_tls_server(start_server, issued)

    def health_check(**env: str) -> int:
        script = REPO_ROOT / "deploy" / "docker" / "healthcheck.py"
        environment = {"PATH": os.environ["PATH"], "RESNET_SERVE_PORT": str(server.port), **env}
        return subprocess.run(
            [sys.executable, str(script)], env=environment, capture_output=True, timeout=60
        ).returncode

    assert health_check(RESNET_SERVE_SSL_CERTFILE=str(issued.certfile)) == 0
    assert health_check() == 1  # plain HTTP to a TLS listener
