"""How much memory this process holds, and how much its container lets it hold (Linux; None elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
_NO_V1_LIMIT = 1 << 60
"""cgroup v1 writes a huge number (about 2^63, rounded to pages) for "no limit"."""


def resident_memory_bytes() -> int | None:
    """This process's resident memory now; None where /proc does not say."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def cgroup_memory_limit_bytes(v2: Path = CGROUP_MEMORY_MAX, v1: Path = CGROUP_V1_LIMIT) -> int | None:
    """The container's memory limit (cgroup v2 `memory.max`, or v1's limit); None when there is none."""
    for path in (v2, v1):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return None if value >= _NO_V1_LIMIT else value
    return None
