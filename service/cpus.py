"""The CPUs this process may really use: its affinity mask, capped by its cgroup's CPU quota.

Thread pools (ONNX Runtime's, the decode pool, worker processes) are sized from this, never from the host's core
count, which inside a container is the wrong answer (onnxruntime #29510). Light on purpose: the worker supervisor
imports it without numpy or onnxruntime.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_v2_limit(cpu_max: Path) -> float | None:
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def _cgroup_v1_limit(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def _ancestors(root: Path, relative: str) -> list[Path]:
    """`root/relative` and its parents up to `root`; just `root` when the path is not visible (container)."""
    relative = relative.strip("/")
    own = root / relative if relative else root
    if not own.exists():
        return [root]
    folders = [own]
    while folders[-1] != root:
        folders.append(folders[-1].parent)
    return folders


def cgroup_cpu_limit(
    cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """CPUs' worth of time the cgroup quota allows this process (for example 1.5), or None when unlimited.

    Reads cgroup v2 ``cpu.max`` and cgroup v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` along the process's
    own cgroup path and its ancestors; the tightest limit wins.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            for folder in _ancestors(cgroup_root, path):
                limit = _cgroup_v2_limit(folder / "cpu.max")
                if limit is not None:
                    limits.append(limit)
        elif "cpu" in controllers.split(","):
            for mount in (cgroup_root / "cpu", cgroup_root / "cpu,cpuacct", cgroup_root / "cpuacct,cpu"):
                if mount.is_dir():
                    for folder in _ancestors(mount, path):
                        limit = _cgroup_v1_limit(folder)
                        if limit is not None:
                            limits.append(limit)
                    break
    return min(limits) if limits else None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup CPU quota (rounded up), at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)
