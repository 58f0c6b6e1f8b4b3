"""``python -m bench``: run the load benchmark and write docs/BENCHMARKS.md.

    python -m bench                 # the full run (about 25 minutes on 2 cores; exports missing models first)
    python -m bench --quick --output /tmp/BENCHMARKS.md     # the smoke run: bundled model, tiny durations

Run it on a quiet machine: anything else using the CPU lowers every number (the report shows the load average at
the start). Exported models, test images, server logs and profiles go to the cache folder (bench/.cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from pathlib import Path

from bench import report
from bench.run import FULL, QUICK, run_benchmark
from bench.workload import BENCH_MODELS, DEFAULT_CACHE_DIR, MODEL_NAMES, REPO_ROOT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: the bundled model only, tiny durations (numbers are not meaningful)",
    )
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated models, the first is judged against the targets "
        f"(choices: resnet50, resnet18, bundled; default: {','.join(FULL.models)}, "
        f"or {','.join(QUICK.models)} with --quick)",
    )
    parser.add_argument(
        "--batch-models",
        default=None,
        help="comma-separated bench models that get the fixed --max-batch-size runs, against auto "
        f"(choices: {', '.join(BENCH_MODELS)}; default: all of them; fewer shortens the run by "
        "about 1.5 minutes each, and their auto batch size targets are then not measured)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO_ROOT / "docs" / "BENCHMARKS.md",
        help="markdown report to write (default: docs/BENCHMARKS.md)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the raw results as JSON here (default: CACHE_DIR/results-MODE.json)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help="exported models, images, logs and profiles (default: bench/.cache)",
    )
    parser.add_argument("--load-seconds", type=float, default=None, help="measured seconds per closed-loop run")
    parser.add_argument("--rate-trial-seconds", type=float, default=None, help="measured seconds per open-loop rate")
    parser.add_argument("--idle-seconds", type=float, default=None, help="seconds of idle CPU measurement")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument(
        "--ours-args",
        default=None,
        help='extra flags for every server of ours, e.g. "--max-batch-delay-ms 2" (none by default: '
        "the targets are judged on the defaults; the concurrency-64 server adds its admission "
        f'flags "{" ".join(FULL.admission_args)}", or "{" ".join(QUICK.admission_args)}" '
        "with --quick, after them; later flags win)",
    )
    args = parser.parse_args(argv)
    if args.models is not None:
        models = tuple(name.strip() for name in args.models.split(",") if name.strip())
        unknown = [name for name in models if name not in MODEL_NAMES or name.endswith("-int8")]
        if not models or unknown:
            parser.error(
                f"unknown model(s) {', '.join(unknown) or '(none given)'}; choose from resnet50, resnet18, bundled"
            )
        args.models = models
    if args.batch_models is not None:
        chosen = tuple(name.strip() for name in args.batch_models.split(",") if name.strip())
        unknown = [name for name in chosen if name not in BENCH_MODELS]
        if unknown:
            parser.error(f"unknown batch model(s) {', '.join(unknown)}; choose from {', '.join(BENCH_MODELS)}")
        args.batch_models = chosen
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    plan = QUICK if args.quick else FULL
    overrides = {
        "models": args.models,
        "batch_models": args.batch_models,
        "load_s": args.load_seconds,
        "rate_trial_s": args.rate_trial_seconds,
        "idle_s": args.idle_seconds,
        "profile_s": 0.0 if args.no_profile else None,
        "ours_args": (*plan.ours_args, *shlex.split(args.ours_args)) if args.ours_args else None,
    }
    plan = dataclasses.replace(plan, **{key: value for key, value in overrides.items() if value is not None})
    command = "python -m bench" + (
        "" if argv is None and len(sys.argv) <= 1 else " " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    results = run_benchmark(plan, args.cache_dir, command)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report.render(results))
    json_path = args.json or args.cache_dir / f"results-{plan.mode}.json"
    results.save_json(json_path)
    print(f"wrote {args.output} and {json_path} ({results.wall_seconds / 60:.1f} minutes)")
    for target in report.evaluate_targets(results):
        print(
            f"  {target.name}: {target.measured} -> {'met' if target.met else 'MISSED' if target.met is False else 'not measured'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
