"""TLS for both listeners: the server's certificate and key, and optionally the CAs its clients' certificates must
come from (mutual TLS), re-read when the files change, like the API keys file.

Off unless `ssl_certfile` and `ssl_keyfile` are set; nothing here is imported or run otherwise.

- HTTP: `http_context` is the `ssl.SSLContext` the listening sockets are created with (`service.server`). Every
  handshake calls its SNI callback (OpenSSL calls it for every ClientHello, with or without a server name), which
  looks at most once a second whether a file changed and hands the handshake the newest context: a rotated
  certificate or client CA takes effect for new connections without a restart, and connections already open keep
  theirs. The handshake deadline and its place in the connection cap are the protocol guard's and the listener's
  (`service.http_protocol`, `service.server`).
- gRPC: `grpc_credentials()` are gRPC's dynamic server credentials, whose fetcher gRPC calls before every
  handshake; it answers with the newest files when they changed since the last handshake.

A rewrite that cannot be loaded (a key that does not match its certificate, a file half written) is logged once and
the files read before stay in force; the server retries at every check until the files load.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.config import TlsFiles

if TYPE_CHECKING:
    import grpc

logger = logging.getLogger("service")

RELOAD_EVERY_S = 1.0
"""How often, at most, a handshake makes the server look whether the certificate files changed."""


class TlsError(ValueError):
    """The certificate files cannot be used; the message names the file and the problem."""


_FileState = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class _Loaded:
    state: _FileState
    http: ssl.SSLContext
    key_pem: bytes
    chain_pem: bytes
    ca_pem: bytes | None


class ServerTls:
    """The server's TLS material as last read, for both listeners."""

    def __init__(self, files: TlsFiles, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Reads the files; raises `TlsError` naming the file when they cannot be used (start-up fails)."""
        self.files = files
        self._clock = clock
        self._lock = threading.Lock()  # gRPC calls its fetcher from its own threads, HTTP from the event loop
        self._checked_at = clock()
        self._failed_state: _FileState | None = None
        self._loaded = self._load(self._state())
        self._grpc_state = self._loaded.state
        self.http_context = self._loaded.http
        """The context the HTTP listener is created with; its handshakes are handed the newest one."""
        self.http_context.sni_callback = self.newest_for_handshake

    @property
    def client_certificates_required(self) -> bool:
        return self.files.ca_certs is not None

    # ---------------------------------------------------------------------------------------------- HTTP

    def newest_for_handshake(self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        """The listener's SNI callback: hand the handshake the context of the newest files."""
        newest = self.current().http
        if newest is not context:
            connection.context = newest

    # ---------------------------------------------------------------------------------------------- gRPC

    def grpc_credentials(self) -> grpc.ServerCredentials:
        import grpc

        return grpc.dynamic_ssl_server_credentials(
            self._grpc_configuration(self._loaded),
            self.grpc_certificate_update,  # type: ignore[arg-type]  # grpc-stubs leave out None, which gRPC documents: no change
            require_client_authentication=self.client_certificates_required,
        )

    @staticmethod
    def _grpc_configuration(loaded: _Loaded) -> grpc.ServerCertificateConfiguration:
        import grpc

        return grpc.ssl_server_certificate_configuration([(loaded.key_pem, loaded.chain_pem)], loaded.ca_pem)

    def grpc_certificate_update(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher, called before each handshake: the newest files when they changed, else None (no change)."""
        loaded = self.current()
        with self._lock:
            if loaded.state == self._grpc_state:
                return None
            self._grpc_state = loaded.state
        return self._grpc_configuration(loaded)

    # ---------------------------------------------------------------------------------------------- the files

    def current(self) -> _Loaded:
        """The newest files that load, looking at most once a second whether they changed."""
        now = self._clock()
        if now - self._checked_at < RELOAD_EVERY_S:
            return self._loaded
        with self._lock:
            if now - self._checked_at >= RELOAD_EVERY_S:
                self._checked_at = now
                self._reload()
        return self._loaded

    def _reload(self) -> None:
        try:
            state = self._state()
        except TlsError as exc:
            self._report_failure(None, exc)
            return
        if state == self._loaded.state or state == self._failed_state:
            return
        try:
            loaded = self._load(state)
        except TlsError as exc:
            self._report_failure(state, exc)
            return
        self._loaded = loaded
        self._failed_state = None
        logger.info("TLS: the certificate files changed; new connections use them (%s)", self.files.certfile)

    def _report_failure(self, state: _FileState | None, exc: TlsError) -> None:
        if state is None or state != self._failed_state:
            logger.error("TLS: cannot re-read the certificate files (%s); keeping those read before", exc)
        self._failed_state = state

    def _paths(self) -> list[Path]:
        files = self.files
        return [files.certfile, files.keyfile, *([files.ca_certs] if files.ca_certs is not None else [])]

    def _state(self) -> _FileState:
        states = []
        for path in self._paths():
            try:
                stat = os.stat(path)  # follows the symlinks a Kubernetes Secret volume swaps on rotation
            except OSError as exc:
                raise TlsError(f"{path}: {exc.strerror or exc}") from None
            states.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
        return tuple(states)

    def _load(self, state: _FileState) -> _Loaded:
        files = self.files
        contents = {}
        for path in self._paths():
            try:
                contents[path] = path.read_bytes()
            except OSError as exc:
                raise TlsError(f"{path}: {exc.strerror or exc}") from None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # TLS 1.2 or newer, the default ciphers
        context.set_alpn_protocols(["http/1.1"])  # the HTTP listener speaks HTTP/1.1 only
        try:
            context.load_cert_chain(files.certfile, files.keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(
                f"{files.certfile} and {files.keyfile}: not a PEM certificate chain and its matching private key "
                f"({exc})"
            ) from None
        ca_pem = None
        if files.ca_certs is not None:
            ca_pem = contents[files.ca_certs]
            try:
                context.load_verify_locations(cadata=ca_pem.decode("ascii"))
            except (ssl.SSLError, ValueError) as exc:
                raise TlsError(f"{files.ca_certs}: not PEM CA certificates ({exc})") from None
            context.verify_mode = ssl.CERT_REQUIRED
        return _Loaded(state, context, contents[files.keyfile], contents[files.certfile], ca_pem)
