r"""``python -m bench.ready``: cold starts of our server and the naive one, in turn, from process start to ready.

    python -m bench.ready                                   # ResNet-50 fp32 and the bundled model, 5 starts each
    python -m bench.ready --models resnet50,resnet18 --starts 3

The full bench's ready phase (`BenchmarkRun.ready_times`) on its own: each server started at its defaults (ours
as `make serve` starts it, less the access log, its gRPC listener on) and stopped once its readiness endpoint
answers 200, asked every few milliseconds; the order alternates from start to start. Printed beside each model:
creating its ONNX Runtime session in this process, what issue 18's ready target adds 0.5 s to.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from bench.results import BenchResults
from bench.run import FULL, BenchmarkRun, environment, timed_runtime, variants
from bench.workload import DEFAULT_CACHE_DIR, MODEL_NAMES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ready",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--models",
        default="resnet50,bundled",
        help=f"comma-separated, of {', '.join(MODEL_NAMES)} (default: resnet50,bundled)",
    )
    parser.add_argument("--starts", type=int, default=5, help="cold starts of each server per model (default: 5)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    models = tuple(model.strip() for model in args.models.split(",") if model.strip())
    unknown = [model for model in models if model not in MODEL_NAMES]
    if unknown or not models or args.starts < 1:
        parser.error(f"--models takes some of {', '.join(MODEL_NAMES)} and --starts at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    plan = replace(FULL, models=models, ready_starts=args.starts)
    command = " ".join(["python -m bench.ready", *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    results = BenchResults(
        environment=environment(plan, command),
        primary_model=models[0],
        model_titles={},
        server_titles={key: variant.title for key, variant in variants(plan).items()},
    )
    run = BenchmarkRun(plan, args.cache_dir, results)
    run.prepare()
    for key in models:
        run.ready_times(key)
    print(f"{results.environment.date}, commit {results.environment.git_commit}, {command}")
    print("| Model | Server | Starts (s) | Median (s) | Session load (s) |")
    print("|---|---|---|---|---|")
    for key in models:
        _, load_s = timed_runtime(run.models[key].path)  # the file already in the page cache, as in the bench
        for server in ("ours", "naive"):
            row = results.ready_for(server, key)
            assert row is not None
            starts = ", ".join(f"{start:.2f}" for start in row.starts_s)
            print(f"| {results.model_titles[key]} | {server} | {starts} | {row.median_s:.2f} | {load_s:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
