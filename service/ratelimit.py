"""Per-key request rates (`rate=` in the keys file), enforced over every worker process of the server.

The `limits` library parses the rates and applies its sliding-window-counter strategy (the weighted count of the
current and the previous window, so that a client cannot double its rate at a window's edge as fixed windows let
it); the counters live in memory every worker shares (`service.rate_windows`), so the configured rate is the rate a
client gets, whichever workers its connections land on.

A request over its key's rate is refused with 429 and Retry-After, the seconds until the key's weighted count drops
below its limit. Nothing here is imported or made until a key with a rate is used.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from service.auth import ApiKey
from service.errors import RateLimited

if TYPE_CHECKING:
    from limits import RateLimitItem
    from limits.strategies import SlidingWindowCounterRateLimiter

SHARED_FILE_NAME = "rate-limits"
"""The counters' file in the worker processes' shared folder."""


class KeyRateLimits:
    """The rates of the keys that have one. Its storage is made on the first request of such a key."""

    def __init__(self, shared_folder: Path | None = None) -> None:
        """`shared_folder`: the worker processes' private folder (service.workers), None for one process."""
        self._path = shared_folder / SHARED_FILE_NAME if shared_folder is not None else None
        self._limiter: SlidingWindowCounterRateLimiter | None = None
        self._items: dict[str, RateLimitItem] = {}

    def _rate(self, rate: str) -> RateLimitItem:
        item = self._items.get(rate)
        if item is None:
            from limits import parse

            item = self._items[rate] = parse(rate)  # checked when the keys were read
        return item

    def admit(self, key: ApiKey) -> None:
        """Count one request of `key` against its rate; `RateLimited` (429, Retry-After) when it is over."""
        if key.rate is None:
            return
        if self._limiter is None:
            from limits.strategies import SlidingWindowCounterRateLimiter

            from service.rate_windows import SharedWindowStorage

            self._limiter = SlidingWindowCounterRateLimiter(SharedWindowStorage(self._path))
        item = self._rate(key.rate)
        if self._limiter.hit(item, key.name):
            return
        reset_at, _ = self._limiter.get_window_stats(item, key.name)
        retry_after_s = max(1, math.ceil(reset_at - time.time()))
        raise RateLimited(
            f"the API key {key.name!r} may make {key.rate.replace('/', ' requests per ')}; retry after "
            f"{retry_after_s} s",
            retry_after_s=retry_after_s,
        )
