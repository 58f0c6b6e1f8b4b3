"""py-spy samples of a server under load, boiled down to where its threads spend their time.

py-spy (``pip install py-spy``, the bench extra) samples the Python stacks of a running process without changing
it. Threads that wait on a lock or a socket are left out, but a thread that is ready to run and waits for a core
counts, so samples say where threads want time, not how much CPU they get: on 2 busy cores the groups' samples
added up to 4 cores' worth. What each group used is read from /proc instead (`cpu_by_group`), thread by thread,
before and after the recording; py-spy's raw output names each thread with its native ID. Threads py-spy never
saw running Python (ONNX Runtime's pool, gRPC's) are one group of their own, `NATIVE_GROUP`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

_LINE = re.compile(r"^thread \((?P<tid>\d+)\): (?P<stack>.*) (?P<count>\d+)$")
_PROCESS_PREFIX = re.compile(r'^(?:process \d+:"(?:[^"\\]|\\.)*";)+')
"""With --subprocesses py-spy puts each process's chain (supervisor, then worker) before the thread."""
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """The py-spy executable, if installed: next to this Python (a virtual environment) or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def start_recording(pid: int, seconds: float, output: Path, rate_hz: int = 100) -> subprocess.Popen[bytes]:
    executable = py_spy()
    if executable is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy, or the project's bench extra)")
    return subprocess.Popen(
        [
            executable,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            str(rate_hz),
            "--format",
            "raw",
            "--output",
            str(output),
            "--threads",
            "--nonblocking",
            "--function",
            "--subprocesses",
        ],  # a server with worker processes: their threads, not the idle supervisor's
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def thread_group(name: str) -> str:
    """Threads of one pool share a group: 'decode_0' and 'decode_1' are 'decode'."""
    return re.sub(r"[_-]\d+$", "", name)


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    for marker in ("site-packages/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{match['function']} ({file})"


@dataclass
class ProfileSummary:
    samples: int = 0
    duration_s: float = 0.0
    rate_hz: int = 100
    by_group: Counter[str] = field(default_factory=Counter)
    self_frames: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    thread_groups: dict[int, str] = field(default_factory=dict)
    """Native thread ID to group, for the threads py-spy sampled."""

    def cores(self, count: int) -> float:
        """Samples turned into cores' worth of busy time over the recording."""
        return count / (self.rate_hz * self.duration_s) if self.duration_s else 0.0


def summarise(raw: str, duration_s: float, rate_hz: int = 100) -> ProfileSummary:
    """Parse py-spy's raw (collapsed-stack) output: samples per thread group, and the innermost frames of each."""
    summary = ProfileSummary(duration_s=duration_s, rate_hz=rate_hz)
    for line in raw.splitlines():
        match = _LINE.match(_PROCESS_PREFIX.sub("", line.strip()))
        if not match:
            continue
        frames = match["stack"].split(";")
        group = thread_group(frames[0])
        count = int(match["count"])
        summary.samples += count
        summary.by_group[group] += count
        summary.thread_groups[int(match["tid"])] = group
        summary.self_frames[group][_frame_name(frames[-1]) if len(frames) > 1 else "(no Python frame)"] += count
    return summary


NATIVE_GROUP = "other threads (native)"
"""Threads without Python frames in the samples: ONNX Runtime's intra-op pool, gRPC's, the supervisor's idle ones."""


def cpu_by_group(
    summary: ProfileSummary, before: dict[int, float], after: dict[int, float], seconds: float
) -> dict[str, float]:
    """Cores each thread group used between two `bench.servers.thread_cpu_seconds` readings `seconds` apart.
    A thread that started in between counts from zero; one that ended in between is lost (not in `after`)."""
    used: Counter[str] = Counter()
    for tid, cpu_s in after.items():
        used[summary.thread_groups.get(tid, NATIVE_GROUP)] += max(0.0, cpu_s - before.get(tid, 0.0))
    return {group: cpu_s / seconds for group, cpu_s in used.items()} if seconds > 0 else {}
