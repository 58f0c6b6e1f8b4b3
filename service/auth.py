"""Optional API keys: which requests carry a key the server accepts, under which name they are counted, and what
the key may do (its role, its request rate, its priority).

Off unless keys are given. Keys come from a file (`--api-keys-file`, re-read when it changes, so that a Kubernetes
Secret rotates without a restart) and/or from `RESNET_SERVE_API_KEYS`. One entry per line (comma-separated in
the variable); blank lines and `#` comments are ignored:

    ci-runner:7f3c...            a named key: requests with it are counted under "ci-runner"
    7f3c...                      an unnamed key: counted as "key-<line>"
    batch-jobs:sha256:9a0b...    a key stored as the SHA-256 hex digest of the key, so the file need not hold it

and after the key, optionally, space-separated `field=value` settings of that key (none: today's entries mean
what they always meant):

    ops:sha256:9a0b... role=admin                    may also load and unload models (the repository API)
    batch-jobs:sha256:1c2d... rate=600/minute priority=low
    interactive:5e6f... rate=20/second priority=high

- ``role``: ``infer`` (the default: inference, metadata, statistics) or ``admin`` (also model control);
- ``rate``: requests the key may make, ``N/second``, ``N/minute``, ``N/hour`` or ``N/day`` (the `limits`
  library's notation); further requests are answered 429 with Retry-After (`service.ratelimit`);
- ``priority``: ``high``, ``normal`` (the default) or ``low``: under load, the batcher runs a model's queued
  images of higher priority first (`service.batch_policy`).

A key itself cannot contain white space. Every presented key is hashed and compared with every stored digest with
`hmac.compare_digest`, so neither how many characters match nor which entry matches shows in the time taken. Keys
never reach logs, metrics or errors; only names do. The gates (HTTP's and gRPC's) put the key a request presented
in `current_key` for the rest of its handling.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
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


class Role(StrEnum):
    INFER = "infer"
    """Every route a key opens: inference, metadata, statistics (the default)."""
    ADMIN = "admin"
    """What `infer` may, and changing which models are served (loading and unloading them)."""


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """The batcher's order: lower runs first, 0 is the default (`batch_policy.QueuedItem.priority`)."""
        return {Priority.HIGH: -1, Priority.NORMAL: 0, Priority.LOW: 1}[self]


@dataclass(frozen=True)
class ApiKey:
    """What a key is to the server, without the key: its name and its settings."""

    name: str
    role: Role = Role.INFER
    rate: str | None = None
    """Requests it may make, in the `limits` library's notation (``10/second``); None: no limit."""
    priority: Priority = Priority.NORMAL


current_key: contextvars.ContextVar[ApiKey | None] = contextvars.ContextVar("current_key", default=None)
"""The key the request the current task works for presented (set by the gates); None when keys are off."""


@dataclass(frozen=True)
class _Key:
    key: ApiKey
    digest: bytes


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _settings(fields: list[str], name: str, source: str, number: int) -> dict[str, object]:
    """The `field=value` settings after a key, checked; the message names the entry, never the key."""
    where = f"{source}: entry {number} ({name})"
    settings: dict[str, object] = {}
    for field in fields:
        setting, equals, value = field.partition("=")
        if not equals or setting in settings:
            raise ApiKeysError(
                f"{where}: after the key come space-separated settings role=..., rate=..., priority=... "
                f"(given once each); a key cannot contain white space"
            )
        if setting == "role":
            if value not in Role.__members__.values():
                raise ApiKeysError(f"{where}: role must be {' or '.join(Role)}, got {value!r}")
            settings["role"] = Role(value)
        elif setting == "priority":
            if value not in Priority.__members__.values():
                raise ApiKeysError(f"{where}: priority must be {', '.join(Priority)}, got {value!r}")
            settings["priority"] = Priority(value)
        elif setting == "rate":
            settings["rate"] = _checked_rate(value, where)
        else:
            raise ApiKeysError(f"{where}: unknown setting {setting!r}; the settings are role, rate and priority")
    return settings


def _checked_rate(value: str, where: str) -> str:
    import limits  # only where a key has a rate

    try:
        items = limits.parse_many(value)
    except ValueError:
        items = []
    if len(items) != 1 or items[0].amount < 1:
        raise ApiKeysError(
            f"{where}: rate must be a number of requests per second, minute, hour or day, such as 10/second or "
            f"600/minute; got {value!r}"
        )
    return value


def parse_keys(text: str, source: str, separator: str = "\n") -> list[_Key]:
    keys: list[_Key] = []
    names: set[str] = set()
    for number, raw in enumerate(text.split(separator), start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        name, colon, rest = entry.partition(":")
        if not colon:
            name, rest = f"key-{number}", entry
        name = name.strip()
        secret, *fields = rest.split() or [""]
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
        keys.append(_Key(ApiKey(name, **_settings(fields, name, source, number)), stored))  # type: ignore[arg-type]
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
        return [entry.key.name for entry in (*self._from_file, *self._inline)]

    def key_for(self, authorization: str | None, x_api_key: str | None) -> ApiKey | None:
        """The key a request presents in these headers (or gRPC metadata), or None."""
        presented = presented_key(authorization, x_api_key)
        return self.identify(presented) if presented else None

    def identify(self, presented: str) -> ApiKey | None:
        """The key `presented` is, or None. Constant in time over the keys and their characters."""
        self._maybe_reload()
        wanted = digest(presented)
        found = None
        for entry in (*self._from_file, *self._inline):
            if hmac.compare_digest(entry.digest, wanted) and found is None:
                found = entry.key
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
                ", ".join(entry.key.name for entry in keys),
            )
        self._from_file = keys
        self._file_state = state
