"""Several runs into one report: each point is the median run's row, whole, and a saved run reads back as it was."""

from __future__ import annotations

from pathlib import Path

from bench.median import load_results, main, median_of
from bench.report import render
from bench.results import PairedRound, PairedRow, ReadyRow, ServerResources
from tests.bench.test_report import _results, _row


def _resources(ready: float, rss: float) -> ServerResources:
    return ServerResources(server="ours", model="bundled", ready_after_s=ready, rss_mb=rss, peak_rss_mb=rss + 1)


def test_each_point_is_the_median_runs_row_and_a_point_one_run_lacks_is_kept() -> None:
    runs = []
    for throughput, p99, ready, rss in ((10.0, 5.0, 1.5, 300.0), (30.0, 9.0, 1.2, 100.0), (20.0, 7.0, 1.9, 200.0)):
        run = _results(_row(concurrency=1, throughput=throughput, p99_ms=p99))
        run.resources = [_resources(ready, rss)]
        runs.append(run)
    runs[0].load.append(_row(concurrency=8, throughput=3.0))
    median = median_of(runs, ["a", "b", "c"])
    c1 = median.load_at("ours", "bundled", "small-jpeg", 1)
    assert c1 is not None and (c1.throughput, c1.p99_ms) == (20.0, 7.0)  # the median run's p99, not the median p99
    c8 = median.load_at("ours", "bundled", "small-jpeg", 8)
    assert c8 is not None and c8.throughput == 3.0
    (resources,) = median.resources
    assert (resources.ready_after_s, resources.rss_mb, resources.peak_rss_mb) == (1.5, 200.0, 201.0)
    assert median.median_of == ["a", "b", "c"]


def test_the_side_by_side_comparison_is_the_median_runs_by_its_ratio() -> None:
    runs = []
    for ours in (90.0, 110.0, 100.0):
        run = _results()
        run.paired = [PairedRow("bundled", 1, 5.0, [PairedRound("ours", ours, 100.0, 1.0, 1.0)])]
        runs.append(run)
    paired = median_of(runs, ["a", "b", "c"]).paired_for("bundled")
    assert paired is not None and paired.ratio == 1.0


def test_the_cold_starts_are_the_median_runs_by_their_median() -> None:
    runs = []
    for starts in ([0.9, 0.6, 0.7], [0.5, 0.6, 0.55], [0.8, 0.65, 0.66]):
        run = _results()
        run.ready = [ReadyRow("ours", "bundled", starts, 0.005)]
        runs.append(run)
    ready = median_of(runs, ["a", "b", "c"]).ready_for("ours", "bundled")
    assert ready is not None and ready.starts_s == [0.8, 0.65, 0.66]  # medians 0.70, 0.55, 0.66: the middle, whole


def test_a_saved_run_reads_back_and_renders(tmp_path: Path) -> None:
    run = _results(_row(throughput=12.5), titles={"bundled": "the bundled model"})
    run.paired = [PairedRow("bundled", 1, 5.0, [PairedRound("naive", 12.0, 10.0, 1.0, 1.5)])]
    run.resources = [_resources(1.0, 50.0)]
    run.ready = [ReadyRow("ours", "bundled", [0.6, 0.7], 0.005)]
    run.server_titles = {"ours": "ours"}
    saved = tmp_path / "run.json"
    run.save_json(saved)
    assert load_results(saved) == run
    assert main([str(saved), str(saved), "--output", str(tmp_path / "report.md")]) == 0
    assert "Written by `python -m bench.median` from 2 runs" in (tmp_path / "report.md").read_text()


def test_targets_are_also_judged_in_each_run_alone_and_counted() -> None:
    runs = []
    for ours, naive in ((100.0, 90.0), (80.0, 85.0), (95.0, 80.0)):  # run 2: a slower hour for ours
        run = _results(
            _row(concurrency=1, throughput=ours),
            _row(server="naive", concurrency=1, throughput=naive),
            titles={"bundled": "Fashion-MNIST ResNet-20 fp32 (bundled)"},
        )
        run.server_titles = {"ours": "ours", "naive": "naive FastAPI"}
        runs.append(run)
    median = median_of(runs, ["a", "b", "c"])
    text = render(median, runs)
    assert "## Targets, run by run" in text
    run_by_run = text.split("## Targets, run by run", 1)[1]
    (row,) = [line for line in run_by_run.splitlines() if line.startswith("| Concurrency 1 vs naive, Fashion-MNIST")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2].startswith("**met** (+0.111") and cells[3].startswith("**missed** (-0.059")
    assert cells[-1] == "2 of 3"
    assert "met in at least 2 of the 3 runs" in text
    assert "## Targets, run by run" not in render(median)  # one run's report has no such section
