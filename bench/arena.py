"""``python -m bench.arena``: what ONNX Runtime's CPU memory arena costs in memory and buys in speed.

    python -m bench.arena                  # ResNet-50 fp32 from the bench cache, batch sizes 1 and 32

Each configuration runs in a fresh process (RSS is per process): the server's own session options
(`service.runtime.OnnxModelRuntime`), with the arena on (ONNX Runtime's default, which the server keeps) or off.
It reports RSS after the session is created, after runs at batch 1, after runs at the largest batch, and after
more runs at batch 1 (an arena keeps what the large batch took), the median time per batch, and what the server's
idle release (`OnnxModelRuntime.release_batch_memory`, after `batch_memory_release_s`) gives back, what it takes,
and what the first large batch after it takes (its memory allocated again).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.workload import DEFAULT_CACHE_DIR, ensure_model, model_case

RUNS = 5


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_one(model_path: Path, arena: bool, large_batch: int) -> dict[str, float]:
    """In this process: the server's runtime class with the arena on or off."""
    import numpy as np
    import onnxruntime as ort

    from service.runtime import OnnxModelRuntime
    from service.server import return_freed_memory_to_the_os

    return_freed_memory_to_the_os()  # as the server does
    original = ort.InferenceSession

    def session(path: str, sess_options: ort.SessionOptions, **kwargs: object) -> ort.InferenceSession:
        sess_options.enable_cpu_mem_arena = arena
        return original(path, sess_options=sess_options, **kwargs)

    ort.InferenceSession = session  # type: ignore[misc, assignment]
    runtime = OnnxModelRuntime(model_path)
    shape = [dim if isinstance(dim, int) else 1 for dim in runtime.input_shape]
    figures = {"session_mb": _rss_mb()}

    def timed(batch: int) -> float:
        data = np.random.default_rng(0).random([batch, *shape[1:]], dtype=np.float32)
        runtime.run(data)
        times = []
        for _ in range(RUNS):
            started = time.perf_counter()
            runtime.run(data)
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    figures["batch1_ms"] = timed(1)
    figures["after_batch1_mb"] = _rss_mb()
    figures[f"batch{large_batch}_ms"] = timed(large_batch)
    figures["after_large_mb"] = _rss_mb()
    timed(1)
    figures["after_batch1_again_mb"] = _rss_mb()
    if not arena:  # nothing to give back (and ONNX Runtime refuses to shrink an arena it does not have)
        return figures
    started = time.perf_counter()
    runtime.release_batch_memory(shape[1:])
    figures["release_ms"] = (time.perf_counter() - started) * 1000
    figures["after_release_mb"] = _rss_mb()
    large_data = np.random.default_rng(0).random([large_batch, *shape[1:]], dtype=np.float32)
    started = time.perf_counter()
    runtime.run(large_data)
    figures["large_after_release_ms"] = (time.perf_counter() - started) * 1000
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.arena", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--large-batch", type=int, default=32)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_one(args.path, args.child == "on", args.large_batch)))
        return 0
    case = ensure_model(model_case(args.model, args.cache_dir))
    large = args.large_batch
    print(f"{case.title}, {RUNS} timed runs per batch, one process per row (RSS in MB, times in ms)\n")
    print(
        f"| CPU arena | after session | after batch 1 | after batch {large} | batch 1 again | batch 1 (ms) "
        f"| batch {large} (ms) | after the idle release | release (ms) | first batch {large} after it (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arena in ("on", "off"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.arena",
                "--child",
                arena,
                "--path",
                str(case.path),
                "--large-batch",
                str(large),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        f = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {arena} | {f['session_mb']:.0f} | {f['after_batch1_mb']:.0f} | {f['after_large_mb']:.0f} | "
            f"{f['after_batch1_again_mb']:.0f} | {f['batch1_ms']:.1f} | {f[f'batch{large}_ms']:.1f} | "
            + (
                f"{f['after_release_mb']:.0f} | {f['release_ms']:.1f} | {f['large_after_release_ms']:.1f} |"
                if "release_ms" in f
                else "— | — | — |"
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
