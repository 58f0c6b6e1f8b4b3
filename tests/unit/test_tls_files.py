"""`service.tls.ServerTls`: the files read at start (or a start-up error naming them), re-read at most once a second
when they change, a broken rewrite kept out, and gRPC's fetcher answering "no change" unless they changed.
Certificates from a throwaway CA (`tests/certificates.py`); the clock is the test's."""

from __future__ import annotations

import logging
import shutil
import ssl
from pathlib import Path

import pytest

from service.config import TlsFiles
from service.tls import RELOAD_EVERY_S, ServerTls, TlsError
from tests.certificates import CertificateAuthority


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cas(tmp_path: Path) -> tuple[CertificateAuthority, CertificateAuthority]:
    return CertificateAuthority("first", tmp_path / "first"), CertificateAuthority("second", tmp_path / "second")


def live_files(folder: Path, certfile: Path, keyfile: Path, ca: Path | None = None) -> TlsFiles:
    folder.mkdir(exist_ok=True)
    shutil.copyfile(certfile, folder / "tls.crt")
    shutil.copyfile(keyfile, folder / "tls.key")
    if ca is not None:
        shutil.copyfile(ca, folder / "ca.crt")
    return TlsFiles(folder / "tls.crt", folder / "tls.key", folder / "ca.crt" if ca is not None else None)


def served_subject(context: ssl.SSLContext) -> str:
    return context.get_ca_certs()[0]["subject"][0][0][1] if context.get_ca_certs() else ""


def test_the_files_are_read_at_start_and_client_certificates_asked_for_with_a_ca(cas, tmp_path):
    first, _ = cas
    server = first.issue_server()
    plain = ServerTls(live_files(tmp_path / "plain", server.certfile, server.keyfile))
    assert not plain.client_certificates_required
    assert plain.http_context.verify_mode == ssl.CERT_NONE
    mutual = ServerTls(live_files(tmp_path / "mutual", server.certfile, server.keyfile, first.ca_file))
    assert mutual.client_certificates_required
    assert mutual.http_context.verify_mode == ssl.CERT_REQUIRED
    assert served_subject(mutual.http_context) == "first"


def test_unusable_files_stop_start_up_naming_them(cas, tmp_path):
    first, second = cas
    one, other = first.issue_server(), second.issue_server()
    with pytest.raises(TlsError, match="not a PEM certificate chain and its matching private key"):
        ServerTls(TlsFiles(one.certfile, other.keyfile))
    with pytest.raises(TlsError, match=r"missing\.pem"):
        ServerTls(TlsFiles(tmp_path / "missing.pem", one.keyfile))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsError, match="not PEM CA certificates"):
        ServerTls(TlsFiles(one.certfile, one.keyfile, garbage))


def test_changed_files_are_read_at_most_once_a_second_and_a_broken_rewrite_is_kept_out(cas, tmp_path, caplog):
    first, second = cas
    one, other = first.issue_server(), second.issue_server()
    files = live_files(tmp_path / "live", one.certfile, one.keyfile)
    clock = Clock()
    tls = ServerTls(files, clock=clock)
    original = tls.current()
    assert tls.grpc_certificate_update() is None  # nothing changed since the credentials were made

    shutil.copyfile(other.keyfile, files.keyfile)  # half a rotation: a key that does not match the certificate
    clock.now += RELOAD_EVERY_S
    with caplog.at_level(logging.ERROR, logger="service"):
        assert tls.current() is original
        clock.now += RELOAD_EVERY_S
        assert tls.current() is original
    assert [record.getMessage() for record in caplog.records].count(caplog.records[0].getMessage()) == 1, (
        "a broken rewrite is logged once, not at every check"
    )
    assert "cannot re-read the certificate files" in caplog.records[0].getMessage()

    shutil.copyfile(other.certfile, files.certfile)  # the rotation completes
    clock.now += RELOAD_EVERY_S / 2
    assert tls.current() is original  # not looked at again within the second
    clock.now += RELOAD_EVERY_S
    rotated = tls.current()
    assert rotated is not original
    assert rotated.chain_pem == other.certfile.read_bytes()
    assert tls.grpc_certificate_update() is not None  # gRPC's next handshake gets the new files
    assert tls.grpc_certificate_update() is None  # and the one after sees no further change


def test_a_handshake_is_handed_the_newest_context(cas, tmp_path):
    first, second = cas
    one, other = first.issue_server(), second.issue_server()
    files = live_files(tmp_path / "live", one.certfile, one.keyfile)
    clock = Clock()
    tls = ServerTls(files, clock=clock)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    connection = tls.http_context.wrap_bio(incoming, outgoing, server_side=True)
    tls.newest_for_handshake(connection, None, tls.http_context)
    assert connection.context is tls.http_context  # nothing changed: the listener's own

    shutil.copyfile(other.keyfile, files.keyfile)
    shutil.copyfile(other.certfile, files.certfile)
    clock.now += RELOAD_EVERY_S
    tls.newest_for_handshake(connection, None, tls.http_context)
    assert connection.context is tls.current().http is not tls.http_context
