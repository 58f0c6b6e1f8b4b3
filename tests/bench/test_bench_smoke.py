"""A real run of ``python -m bench --quick`` on the bundled model: the report is produced and well-formed.

The run starts both servers, loads them over HTTP and writes the markdown and JSON results; the tests read
those files. Nothing here checks a timing: on a shared CI machine the numbers mean nothing, their presence does.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_LIMIT_S = 1800
"""Only a guard against a hung run; the quick run takes about a minute."""

SECTIONS = [
    "# Benchmarks",
    "## Machine",
    "## Headline",
    "## Targets",
    "## Raw ONNX Runtime throughput",
    "## Preprocessing cost per image",
    "## Ceiling",
    "## Closed-loop load",
    "## Ours against the ceiling and the naive server",
    "## Open-loop load (Poisson arrivals)",
    "## Server resources",
    "## INT8 accuracy",
    "## Method",
]
TARGET_NAMES = [
    "Saturation throughput, 500x375 JPEG",
    "Saturation throughput, 4000x3000 JPEG",
    "Concurrency 1 latency, 500x375 JPEG",
    "Concurrency 64, accepted requests",
    "Concurrency 64, requests beyond the queue",
    "Idle server CPU",
    "INT8 throughput",
    "INT8 accuracy, bundled Fashion-MNIST model",
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("bench")
    report, results = folder / "BENCHMARKS.md", folder / "results.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(report), "--json", str(results),
         "--cache-dir", str(folder / "cache")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_LIMIT_S,
    )
    assert completed.returncode == 0, f"python -m bench --quick failed:\n{completed.stdout}\n{completed.stderr[-6000:]}"
    return {"markdown": report.read_text(), "results": json.loads(results.read_text()), "stdout": completed.stdout}


def tables(markdown: str) -> list[list[list[str]]]:
    """Every markdown table as rows of cells (header first, separator dropped)."""
    found, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    parsed = []
    for block in found:
        rows = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in block]
        assert len(rows) >= 3, f"a table without data rows:\n" + "\n".join(block)
        assert all(set(cell) == {"-"} for cell in rows[1]), f"second line is not a separator:\n{block[1]}"
        widths = {len(row) for row in rows}
        assert widths == {len(rows[0])}, f"rows of different widths {widths}:\n" + "\n".join(block)
        parsed.append([rows[0], *rows[2:]])
    return parsed


def section(markdown: str, heading: str) -> str:
    start = markdown.index(heading + "\n")
    following = markdown.find("\n## ", start + len(heading))
    return markdown[start : following if following != -1 else len(markdown)]


def test_report_has_every_section_in_order(quick_run: dict) -> None:
    markdown = quick_run["markdown"]
    positions = [markdown.find(heading + "\n") for heading in SECTIONS]
    assert -1 not in positions, f"missing sections: {[h for h, p in zip(SECTIONS, positions) if p == -1]}"
    assert positions == sorted(positions)


def test_every_table_is_well_formed_and_holds_no_nan(quick_run: dict) -> None:
    markdown = quick_run["markdown"]
    assert len(tables(markdown)) >= 10
    assert not re.search(r"\bnan\b", markdown, re.IGNORECASE)


def test_machine_section_names_cpu_cores_versions_and_commit(quick_run: dict) -> None:
    rows = dict((row[0], row[1]) for row in tables(section(quick_run["markdown"], "## Machine"))[0][1:])
    for key in ("CPU", "Cores (this process may use / online)", "Date", "Git commit", "python", "onnxruntime",
                "numpy", "pillow"):
        assert rows.get(key), f"machine table lacks {key!r}: {rows}"
    assert re.fullmatch(r"\d+ / \d+", rows["Cores (this process may use / online)"])


def test_each_target_has_a_verdict(quick_run: dict) -> None:
    (targets,) = tables(section(quick_run["markdown"], "## Targets"))
    header, rows = targets[0], targets[1:]
    assert header == ["Target", "Goal", "Measured", "Verdict", "Margin"]
    names = [row[0] for row in rows]
    assert [n for n in TARGET_NAMES if not any(name.startswith(n) for name in names)] == []
    assert {row[3] for row in rows} <= {"**met**", "**missed**", "not measured"}
    # The quick run measures every target on the bundled model, so each one is judged, whatever the machine's
    # speed: bench.run.QUICK_OURS_ARGS says why concurrency 64 is always refused in part.
    assert "not measured" not in {row[3] for row in rows}, rows


def test_both_servers_answered_at_every_concurrency(quick_run: dict) -> None:
    load = quick_run["results"]["load"]
    for server in ("ours", "naive"):
        concurrencies = {row["concurrency"] for row in load if row["server"] == server and row["size"] == "small-jpeg"}
        assert concurrencies == {1, 8, 32, 64}, (server, concurrencies)
    for row in load:
        unexpected = {status for status in row["statuses"] if status != "503"}
        assert not unexpected, f"{row['server']} {row['size']} c={row['concurrency']}: {row['statuses']}"
    ours_c1 = next(r for r in load if r["server"] == "ours" and r["size"] == "small-jpeg" and r["concurrency"] == 1)
    assert ours_c1["ok"] > 0 and ours_c1["client_cpu_cores"] >= 0 and ours_c1["server_cpu_cores"] > 0


def test_ceilings_come_from_measured_parts(quick_run: dict) -> None:
    results = quick_run["results"]
    assert results["ceilings"]
    for row in results["ceilings"]:
        expected = 1 / (row["preprocess_ms"] / 1e3 / row["cores"] + row["inference_ms_per_image"] / 1e3)
        assert math.isclose(row["images_per_second"], expected, rel_tol=1e-9)
    raw_batches = {row["batch_size"] for raw in results["raw"] for row in raw["batches"]}
    assert 1 in raw_batches and max(raw_batches) >= 32


def test_idle_cpu_memory_and_accuracy_are_reported(quick_run: dict) -> None:
    results = quick_run["results"]
    ours = next(r for r in results["resources"] if r["server"] == "ours" and r["model"] == "bundled")
    assert ours["idle_cpu_percent"] is not None and ours["rss_mb"] > 0
    accuracy = {row["model"]: row["test_accuracy"] for row in results["accuracy"]}
    assert set(accuracy) == {"bundled", "bundled-int8"}
    assert all(0.5 < value <= 1.0 for value in accuracy.values())  # a trained model, not chance (0.1)
