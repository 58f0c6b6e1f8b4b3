"""Optional API keys: which requests carry a key the server accepts, and under which name they are counted.

Off unless keys are given. Keys come from a file (`--api-keys-file`, re-read when it changes, so that a Kubernetes
Secret rotates without a restart) and/or from `RESNET_SERVE_API_KEYS`. One entry per line (comma-separated in
the variable); blank lines and `#` comments are ignored:

    ci-runner:7f3c...            a named key: requests with it are counted under "ci-runner"
    7f3c...                      an unnamed key: counted as "key-<line>"
    batch-jobs:sha256:9a0b...    a key stored as the SHA-256 hex digest of the key, so the file need not hold it

Every presented key is hashed and compared with every stored digest with `hmac.compare_digest`, so neither how
many characters match nor which entry matches shows in the time taken. Keys never reach logs, metrics or errors;
only names do.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("service")

KEY_REQUIRED = (
    "this server requires an API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY' (the "
    "key given, if any, is not accepted)"
)
"""What a request without an accepted key is told, by every front end (HTTP 401, gRPC UNAUTHENTICATED)."""
RELOAD_EVERY_S = 1.0
"""How often, at most, a request makes the server look whether the keys file changed."""
_DIGEST_PREFIX = "sha256:"
_BEARER = "bearer "


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request presents, from its `Authorization: Bearer KEY` or else its `X-API-Key: KEY` (HTTP headers
    and gRPC metadata alike); None when it presents none."""
    if authorization is not None and authorization[: len(_BEARER)].lower() == _BEARER:
        return authorization[len(_BEARER) :].strip() or None
    return x_api_key or None


class ApiKeysError(ValueError):
    """The keys cannot be read; the message names the file and line, never a key."""


@dataclass(frozen=True)
class _Key:
    name: str
    digest: bytes


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_keys(text: str, source: str, separator: str = "\n") -> list[_Key]:
    keys: list[_Key] = []
    names: set[str] = set()
    for number, raw in enumerate(text.split(separator), start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        name, colon, secret = entry.partition(":")
        if not colon:
            name, secret = f"key-{number}", entry
        name, secret = name.strip(), secret.strip()
        if not name or not secret:
            raise ApiKeysError(f"{source}: entry {number} has an empty name or key")
        if secret.startswith(_DIGEST_PREFIX):
            hex_digest = secret[len(_DIGEST_PREFIX) :]
            try:
                stored = bytes.fromhex(hex_digest)
            except ValueError:
                stored = b""
            if len(stored) != 32:
                raise ApiKeysError(f"{source}: entry {number} ({name}) is not a 64-digit SHA-256 hex digest")
        else:
            stored = digest(secret)
        if name in names:
            raise ApiKeysError(f"{source}: the name {name!r} is given twice")
        names.add(name)
        keys.append(_Key(name, stored))
    return keys


class ApiKeys:
    """The keys the server accepts now."""

    def __init__(
        self, path: Path | None = None, inline: str | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self._clock = clock
        self._inline = parse_keys(inline, "RESNET_SERVE_API_KEYS", ",") if inline else []
        self._from_file: list[_Key] = []
        self._file_state: tuple[int, int, int] | None = None
        self._checked_at = -RELOAD_EVERY_S
        if path is not None:
            self._reload(strict=True)

    @property
    def enabled(self) -> bool:
        return self.path is not None or bool(self._inline)

    @property
    def names(self) -> list[str]:
        return [key.name for key in (*self._from_file, *self._inline)]

    def name_for(self, authorization: str | None, x_api_key: str | None) -> str | None:
        """The name of the key a request presents in these headers (or gRPC metadata), or None."""
        presented = presented_key(authorization, x_api_key)
        return self.identify(presented) if presented else None

    def identify(self, presented: str) -> str | None:
        """The name of the key `presented` is, or None. Constant in time over the keys and their characters."""
        self._maybe_reload()
        wanted = digest(presented)
        found = None
        for key in (*self._from_file, *self._inline):
            if hmac.compare_digest(key.digest, wanted) and found is None:
                found = key.name
        return found

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        now = self._clock()
        if now - self._checked_at < RELOAD_EVERY_S:
            return
        self._checked_at = now
        self._reload(strict=False)

    def _reload(self, *, strict: bool) -> None:
        assert self.path is not None
        try:
            stat = os.stat(self.path)  # follows the symlink a Kubernetes Secret volume swaps on rotation
            state = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if state == self._file_state:
                return
            keys = parse_keys(self.path.read_text(encoding="utf-8"), self.path.name)
        except (OSError, UnicodeDecodeError, ApiKeysError) as exc:
            if strict:
                raise ApiKeysError(f"cannot read the API keys file {self.path}: {exc}") from None
            logger.error("cannot re-read the API keys file %s (%s); keeping the keys read before", self.path, exc)
            return
        if self._file_state is not None:
            logger.info(
                "API keys file %s changed: %d key(s) now (%s)",
                self.path,
                len(keys),
                ", ".join(key.name for key in keys),
            )
        self._from_file = keys
        self._file_state = state
