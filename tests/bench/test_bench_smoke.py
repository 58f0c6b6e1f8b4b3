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
"""Only a guard against a hung run; the quick run takes about a minute and a half."""

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
    "## Concurrency 1, side by side",
    "## Protocols",
    "## Batch sizes: auto against fixed",
    "## Open-loop load (Poisson arrivals)",
    "## Ready",
    "## Server resources",
    "## INT8 accuracy",
    "## Method",
]
MODELS = ("Fashion-MNIST ResNet-20 fp32 (bundled)", "ResNet-18 fp32", "ResNet-50 fp32", "ResNet-50 INT8")
"""The per-model targets' models; in the quick run the bundled model (or its INT8) stands in for the ResNets."""
TARGET_NAMES = [
    "Saturation throughput, 500x375 JPEG",
    "Saturation throughput, 4000x3000 JPEG",
    "Concurrency 1 latency, 500x375 JPEG",
    "Concurrency 64, accepted requests",
    "Concurrency 64, requests beyond the queue",
    "Idle server CPU",
    "INT8 throughput",
    "INT8 accuracy, bundled Fashion-MNIST model",
    "Protocols, V2 BYTES vs /v1 multipart",
    "Protocols, V2 FP32 vs raw ONNX Runtime",
    "Protocols, gRPC vs V2 HTTP (BYTES)",
    "Protocols, gRPC vs V2 HTTP (BYTES and FP32)",
    "Saturation vs ceiling, Fashion-MNIST ResNet-20 fp32 (bundled)",
    "Concurrency 1 latency, Fashion-MNIST ResNet-20 fp32 (bundled)",
    *(f"Concurrency 1 vs naive, {model}" for model in MODELS),
    "Saturation vs ceiling, Fashion-MNIST ResNet-20 INT8",  # standing in for ResNet-50 INT8
    *(
        f"Image kind vs ceiling, {kind}"
        for kind in ("500x375 JPEG", "1920x1080 JPEG", "4000x3000 JPEG", "1000x1000 PNG")
    ),
    "Ready time",
    "Ready time vs session load",
    "RSS after load",
    *(f"Auto batch size, throughput, {model}" for model in MODELS),
    *(f"Auto batch size, latency, {model}" for model in MODELS),
]
PROTOCOLS = {"v2-http-bytes", "v2-http-fp32", "grpc-bytes", "grpc-fp32"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("bench")
    report, results = folder / "BENCHMARKS.md", folder / "results.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--output",
            str(report),
            "--json",
            str(results),
            "--cache-dir",
            str(folder / "cache"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_S,
    )
    assert completed.returncode == 0, f"python -m bench --quick failed:\n{completed.stdout}\n{completed.stderr[-6000:]}"
    return {"markdown": report.read_text(), "results": json.loads(results.read_text()), "stdout": completed.stdout}


def tables(markdown: str) -> list[list[list[str]]]:
    """Every markdown table as rows of cells (header first, separator dropped)."""
    found, current = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    parsed = []
    for block in found:
        rows = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in block]
        assert len(rows) >= 3, "a table without data rows:\n" + "\n".join(block)
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
    assert -1 not in positions, f"missing sections: {[h for h, p in zip(SECTIONS, positions, strict=False) if p == -1]}"
    assert positions == sorted(positions)


def test_every_table_is_well_formed_and_holds_no_nan(quick_run: dict) -> None:
    markdown = quick_run["markdown"]
    assert len(tables(markdown)) >= 10
    assert not re.search(r"\bnan\b", markdown, re.IGNORECASE)


def test_machine_section_names_cpu_cores_versions_and_commit(quick_run: dict) -> None:
    rows = {row[0]: row[1] for row in tables(section(quick_run["markdown"], "## Machine"))[0][1:]}
    for key in (
        "CPU",
        "Cores (this process may use / online)",
        "Date",
        "Git commit",
        "python",
        "onnxruntime",
        "numpy",
        "pillow",
    ):
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


def test_every_server_answered_at_its_concurrencies(quick_run: dict) -> None:
    load = quick_run["results"]["load"]

    def concurrencies(server: str, model: str = "bundled") -> set[int]:
        return {
            row["concurrency"]
            for row in load
            if row["server"] == server and row["model"] == model and row["size"] == "small-jpeg"
        }

    assert concurrencies("ours") == {1, 8, 32}  # at its defaults
    assert concurrencies("ours-admission") == {64}
    assert concurrencies("naive") == {1, 8, 32, 64}
    assert concurrencies("ours", "bundled-int8") == {1, 8, 32}
    assert concurrencies("naive", "bundled-int8") == {1}
    for model in ("bundled", "bundled-int8"):
        assert concurrencies("ours-batch-1", model) == {32}
        assert concurrencies("ours-batch-32", model) == {1, 8, 32}
    for row in load + quick_run["results"]["protocol_load"]:
        unexpected = {status for status in row["statuses"] if status != "503"}
        assert not unexpected, f"{row['server']} {row['size']} c={row['concurrency']}: {row['statuses']}"
    ours_c1 = next(r for r in load if r["server"] == "ours" and r["size"] == "small-jpeg" and r["concurrency"] == 1)
    assert ours_c1["ok"] > 0 and ours_c1["client_cpu_cores"] >= 0 and ours_c1["server_cpu_cores"] > 0


def test_ours_and_naive_met_side_by_side_at_concurrency_1_on_every_model(quick_run: dict) -> None:
    paired = quick_run["results"]["paired"]
    assert {(row["model"], row["concurrency"]) for row in paired} == {("bundled", 1), ("bundled-int8", 1)}
    for row in paired:
        assert [round_["first"] for round_ in row["rounds"]] == ["ours", "naive"]  # the order alternates
        assert all(round_["ours_throughput"] > 0 and round_["naive_throughput"] > 0 for round_ in row["rounds"])
    (targets,) = tables(section(quick_run["markdown"], "## Targets"))
    c1 = [row for row in targets[1:] if row[0].startswith("Concurrency 1 vs naive")]
    assert len(c1) == 4 and all("alternating rounds" in row[2] for row in c1)


def test_every_protocol_was_run_on_the_default_server(quick_run: dict) -> None:
    rows = quick_run["results"]["protocol_load"]
    assert {(row["protocol"], row["server"], row["model"], row["concurrency"]) for row in rows} == {
        (protocol, "ours", "bundled", 32) for protocol in PROTOCOLS
    }
    assert all(row["client_cpu_cores"] >= 0 and row["server_cpu_cores"] > 0 for row in rows)
    (table,) = tables(section(quick_run["markdown"], "## Protocols"))
    assert {row[1] for row in table[1:]} == {
        "/v1 multipart, JPEG",
        "V2 HTTP binary, BYTES (JPEG)",
        "V2 HTTP binary, FP32 tensor",
        "gRPC ModelInfer, BYTES (JPEG)",
        "gRPC ModelInfer, FP32 tensor",
    }


def test_what_auto_chose_and_how_every_server_was_started_are_reported(quick_run: dict) -> None:
    results = quick_run["results"]
    auto = {row["model"]: row for row in results["batching"] if row["server"] == "ours"}
    assert set(auto) == {"bundled", "bundled-int8"}
    for row in auto.values():
        assert row["source"] == "auto" and row["curve"] and row["max_batch_size"] in {size for size, _ in row["curve"]}
    fixed = {
        (row["server"], row["model"]): row["max_batch_size"]
        for row in results["batching"]
        if row["server"].startswith("ours-batch-")
    }
    assert fixed == {
        ("ours-batch-1", "bundled"): 1,
        ("ours-batch-32", "bundled"): 32,
        ("ours-batch-1", "bundled-int8"): 1,
        ("ours-batch-32", "bundled-int8"): 32,
    }
    commands = {(row["server"], row["model"]): row["command"] for row in results["servers"]}
    assert len(commands) == len(results["servers"]) == len(results["resources"])
    default = commands[("ours", "bundled")]
    assert default.startswith("python -m service ") and "--max-queue" not in default and "--max-batch" not in default
    assert "--max-queue-size 1" in commands[("ours-admission", "bundled")]
    assert commands[("ours-batch-32", "bundled-int8")].endswith("--max-batch-size 32")
    method = section(quick_run["markdown"], "## Method")
    assert all(f"`{command}`" in method for command in commands.values())


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
    for row in results["resources"]:
        assert row["ready_after_s"] > 0 and row["settled_after_s"] >= row["ready_after_s"], row
        assert row["rss_settled_mb"] > 0 and row["processes"] >= 1, row
    assert all(raw["session_load_s"] > 0 for raw in results["raw"])
    ready = {(row["server"], row["model"]): row["starts_s"] for row in results["ready"]}
    assert set(ready) == {("ours", "bundled"), ("naive", "bundled")}  # the quick run: one start each
    assert all(len(starts) == 1 and 0 < starts[0] < 60 for starts in ready.values()), ready
    assert set(results["c1_reference_ms"]) == {"bundled"}
    accuracy = {row["model"]: row["test_accuracy"] for row in results["accuracy"]}
    assert set(accuracy) == {"bundled", "bundled-int8"}
    assert all(0.5 < value <= 1.0 for value in accuracy.values())  # a trained model, not chance (0.1)
