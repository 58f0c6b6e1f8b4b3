"""``python -m bench.median RUN.json RUN.json RUN.json``: one report from several full runs, each measured point
the median of the runs.

The machine is shared and noisy, and one run's ratio can move by 5-10% from the next (docs/BENCHMARKS.md's targets
are judged over three runs, the median). Every closed-loop point (server, model, image, concurrency, protocol), every
side-by-side comparison (by its median ratio), every ceiling, every server's cold starts (by their median) and its
ready time and memory is taken from the run whose value is the median at that point, whole (its p50 and p99 with its
throughput), so a ratio compares medians measured the same way a single run's does.
Everything else (environment, profiles, rate searches, batch curves) comes from the newest run. The targets are
also judged in each run alone, with how many runs met each ("Targets, run by run"): a ratio within one run is the
comparison the issues ask for, and the median points of a ratio can come from different runs.

    python -m bench                                  # three times, keeping each bench/.cache/results-full.json
    python -m bench.median run1.json run2.json run3.json --output docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pydantic

from bench import report
from bench.results import BenchResults, CeilingRow, LoadRow, PairedRow, ReadyRow, ServerResources

Row = TypeVar("Row")


def load_results(path: Path) -> BenchResults:
    """A run as `BenchResults.save_json` wrote it."""
    return pydantic.TypeAdapter(BenchResults).validate_python(json.loads(path.read_text()))


def median_rows(runs: Sequence[list[Row]], key: Callable[[Row], Hashable], value: Callable[[Row], float]) -> list[Row]:
    """For each key, the row whose value is the median among the runs that measured it (the lower middle of an
    even count), in the order of the newest run that has the key."""
    by_key: dict[Hashable, list[Row]] = {}
    for rows in runs:
        for row in rows:
            by_key.setdefault(key(row), []).append(row)
    chosen = []
    for rows in by_key.values():
        ranked = sorted(rows, key=value)
        chosen.append(ranked[(len(ranked) - 1) // 2])
    return chosen


def _load_key(row: LoadRow) -> Hashable:
    return (row.server, row.model, row.size, row.concurrency, row.protocol)


def _ceiling_key(row: CeilingRow) -> Hashable:
    return (row.model, row.size)


def _resources_key(row: ServerResources) -> Hashable:
    return (row.server, row.model)


def _paired_key(row: PairedRow) -> Hashable:
    return (row.model, row.concurrency)


def _ready_key(row: ReadyRow) -> Hashable:
    return (row.server, row.model)


def median_of(runs: Sequence[BenchResults], names: Sequence[str]) -> BenchResults:
    """The newest run (the last) with its measured points replaced by the runs' medians."""
    newest = runs[-1]
    ordered = list(reversed(runs))  # the newest run's rows first, so its order is kept
    resources = median_rows([run.resources for run in ordered], _resources_key, lambda row: row.ready_after_s)
    rss = {
        _resources_key(row): row
        for row in median_rows([run.resources for run in ordered], _resources_key, lambda row: row.rss_mb)
    }
    resources = [
        replace(
            row,
            rss_mb=rss[_resources_key(row)].rss_mb,
            peak_rss_mb=rss[_resources_key(row)].peak_rss_mb,
            rss_settled_mb=rss[_resources_key(row)].rss_settled_mb,
        )
        for row in resources
    ]
    wall = sorted(run.wall_seconds for run in runs)[(len(runs) - 1) // 2]
    return replace(
        newest,
        load=median_rows([run.load for run in ordered], _load_key, lambda row: row.throughput),
        protocol_load=median_rows([run.protocol_load for run in ordered], _load_key, lambda row: row.throughput),
        ceilings=median_rows([run.ceilings for run in ordered], _ceiling_key, lambda row: row.images_per_second),
        resources=resources,
        paired=median_rows([run.paired for run in ordered], _paired_key, lambda row: row.ratio),
        ready=median_rows([run.ready for run in ordered], _ready_key, lambda row: row.median_s),
        wall_seconds=wall,
        median_of=list(names),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.median", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="results JSON files of full runs, oldest first")
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"), help="markdown report to write")
    parser.add_argument("--json", type=Path, default=None, help="also write the median results as JSON here")
    args = parser.parse_args(argv)
    runs = [load_results(path) for path in args.runs]
    names = [
        f"{path.name} ({run.environment.date}, commit {run.environment.git_commit})"
        for path, run in zip(args.runs, runs, strict=True)
    ]
    median = median_of(runs, names)
    args.output.write_text(report.render(median, runs))
    if args.json is not None:
        median.save_json(args.json)
    print(f"wrote {args.output}: the median of {len(runs)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
