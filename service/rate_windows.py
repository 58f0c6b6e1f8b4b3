"""The rate limiter's counters (`service.ratelimit`) in memory every worker process shares.

`limits`' stock storages are per process (memory) or a server (Redis, Memcached, ...); the worker processes of one
server share a port, not memory. `SharedWindowStorage` keeps the counters in a fixed table in a memory-mapped file
of the supervisor's private folder, each hit checked and counted under an exclusive `flock`; with one process the
same table lives in anonymous memory. Imported only once a key with a rate is used (`limits` takes 0.1 s to import).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import math
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from limits.storage import Storage
from limits.storage.base import SlidingWindowCounterSupport, TimestampedSlidingWindow

SLOTS = 4096
"""Counters the table holds; each key with a rate uses two or three at a time (the current and previous windows)."""
_PROBES = 64
_SLOT = struct.Struct("<Qqd")
"""One counter: the hash of its window's key (0: never used), its count, when it expires (wall clock seconds)."""


class TableFull(RuntimeError):
    """No free counter near the key's place in the table."""


class SharedWindowStorage(Storage, SlidingWindowCounterSupport, TimestampedSlidingWindow):
    """`limits` storage in a fixed table of counters in shared memory (a file mapped by every worker process, or
    anonymous memory for one process), for the fixed- and sliding-window strategies. Windows are keyed by wall-clock
    time, which every process of the host shares; expired counters are reused in place."""

    STORAGE_SCHEME = None  # made directly, never from a URI

    def __init__(self, path: Path | None = None, *, slots: int = SLOTS, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._clock = clock
        self._slots = slots
        size = slots * _SLOT.size
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        if path is None:
            self._table = mmap.mmap(-1, size)
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        with self._flock(fd):
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)  # zeros: every counter unused
        self._fd = fd
        self._table = mmap.mmap(fd, size)

    @staticmethod
    @contextmanager
    def _flock(fd: int) -> Iterator[None]:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel too if the process dies holding it
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._fd is None:
                yield
            else:
                with self._flock(self._fd):
                    yield

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (OSError, TableFull)

    # ---------------------------------------------------------------------------------------------- the table

    @staticmethod
    @functools.lru_cache(maxsize=1024)  # a key's windows are hit again and again
    def _hash(key: str) -> int:
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") or 1

    def _find(self, key: str, now: float, *, create: bool) -> int | None:
        """The offset of `key`'s counter (made, if `create`, in the first free place; None if absent)."""
        wanted = self._hash(key)
        start = wanted % self._slots
        free = None
        for probe in range(_PROBES):
            offset = ((start + probe) % self._slots) * _SLOT.size
            found, _, expires_at = _SLOT.unpack_from(self._table, offset)
            if found == wanted:
                return offset
            if found == 0:
                free = offset if free is None else free
                break  # never used: the key cannot be further on
            if expires_at <= now and free is None:
                free = offset
        if not create:
            return None
        if free is None:
            raise TableFull(f"no free rate-limit counter among {_PROBES} for a key; {self._slots} in all")
        _SLOT.pack_into(self._table, free, wanted, 0, 0.0)
        return free

    def _count(self, key: str, now: float) -> int:
        offset = self._find(key, now, create=False)
        if offset is None:
            return 0
        _, count, expires_at = _SLOT.unpack_from(self._table, offset)
        return int(count) if expires_at > now else 0

    def _add(self, key: str, expiry: float, amount: int, now: float) -> int:
        offset = self._find(key, now, create=True)
        assert offset is not None
        wanted, count, expires_at = _SLOT.unpack_from(self._table, offset)
        if expires_at <= now:
            count, expires_at = 0, now + expiry
        count = max(0, count + amount)
        _SLOT.pack_into(self._table, offset, wanted, count, expires_at)
        return int(count)

    # ---------------------------------------------------------------------------------------------- limits' API

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        with self._locked():
            return self._add(key, expiry, amount, self._clock())

    def get(self, key: str) -> int:
        with self._locked():
            return self._count(key, self._clock())

    def get_expiry(self, key: str) -> float:
        now = self._clock()
        with self._locked():
            offset = self._find(key, now, create=False)
            if offset is None:
                return now
            _, _, expires_at = _SLOT.unpack_from(self._table, offset)
        return float(expires_at) if expires_at > now else now

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with self._locked():
            self._table[:] = bytes(len(self._table))
        return None

    def clear(self, key: str) -> None:
        with self._locked():
            offset = self._find(key, self._clock(), create=False)
            if offset is not None:
                _SLOT.pack_into(self._table, offset, self._hash(key), 0, 0.0)

    def _window(self, key: str, expiry: int, now: float) -> tuple[int, float, int, float]:
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        previous = self._count(previous_key, now)
        current = self._count(current_key, now)
        previous_ttl = 0.0 if previous == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous, previous_ttl, current, current_ttl

    def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Count `amount` hits unless the weighted count would pass `limit`: checked and counted under one lock,
        so that workers hitting at once cannot all slip under it."""
        if amount > limit:
            return False
        now = self._clock()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        with self._locked():
            previous = self._count(previous_key, now)
            previous_ttl = 0.0 if previous == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
            offset = self._find(current_key, now, create=True)
            assert offset is not None
            wanted, current, expires_at = _SLOT.unpack_from(self._table, offset)
            if expires_at <= now:  # kept through the next window, where it is "previous"
                current, expires_at = 0, now + 2 * expiry
            if math.floor(previous * previous_ttl / expiry + current) + amount > limit:
                return False
            _SLOT.pack_into(self._table, offset, wanted, current + amount, expires_at)
            return True

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        with self._locked():
            return self._window(key, expiry, self._clock())

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        previous_key, current_key = self.sliding_window_keys(key, expiry, self._clock())
        self.clear(previous_key)
        self.clear(current_key)
