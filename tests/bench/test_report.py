"""The report's target table on hand-made results: a target the run did not measure says so, and is not judged."""

from __future__ import annotations

from bench.report import NOT_MEASURED, TARGETS, TargetOutcome, evaluate_targets, render
from bench.results import (
    GRPC_BYTES,
    GRPC_FP32,
    V2_BYTES,
    V2_FP32,
    BatchingRow,
    BatchRow,
    BenchResults,
    LoadRow,
    PairedRound,
    PairedRow,
    RawInference,
    ReadyRow,
    ServerResources,
    fixed_batch_key,
)
from tests.bench.hand_made import environment

REFUSAL_TARGET = "Concurrency 64, requests beyond the queue"


def _results(*load: LoadRow, primary: str = "bundled", titles: dict[str, str] | None = None) -> BenchResults:
    return BenchResults(
        environment=environment(),
        primary_model=primary,
        model_titles=dict(titles or {}),
        server_titles={},
        load=list(load),
    )


def _outcome(results: BenchResults, prefix: str) -> TargetOutcome:
    (outcome,) = [o for o in evaluate_targets(results) if o.name.startswith(prefix)]
    return outcome


def _c64(**changes: object) -> LoadRow:
    return _row(server="ours-admission", concurrency=64, **changes)


def _row(**changes: object) -> LoadRow:
    fields: dict = {
        "server": "ours",
        "model": "bundled",
        "size": "small-jpeg",
        "size_label": "500x375 JPEG",
        "concurrency": 32,
        "throughput": 100.0,
        "p50_ms": 100.0,
        "p95_ms": 150.0,
        "p99_ms": 200.0,
        "ok": 100,
        "statuses": {},
        "server_cpu_cores": 1.0,
        "client_cpu_cores": 0.1,
    }
    return LoadRow(**(fields | changes))


def test_every_target_is_listed_and_none_is_judged_on_an_empty_run() -> None:
    outcomes = evaluate_targets(_results())
    assert len(outcomes) == len(TARGETS)
    assert {(o.measured, o.met, o.margin) for o in outcomes} == {tuple(NOT_MEASURED)}
    assert [o.goal for o in outcomes] == [t.goal for t in TARGETS]


def test_refusals_are_judged_when_there_were_some_and_reported_absent_otherwise() -> None:
    refused = _c64(statuses={"503": 7}, rejected_p50_ms=2.0, rejected_p99_ms=10.0, rejected_max_ms=12.0)
    (outcome,) = [o for o in evaluate_targets(_results(refused)) if o.name == REFUSAL_TARGET]
    assert outcome.measured == "7 refused with 503: p50 2.0 ms, p99 10.0 ms, max 12.0 ms"
    assert (outcome.met, outcome.margin) == (True, "+40.0 ms of slack (p99)")

    (outcome,) = [o for o in evaluate_targets(_results(_c64())) if o.name == REFUSAL_TARGET]
    assert (outcome.measured, outcome.met, outcome.margin) == ("no request was refused in the run", None, "—")


FULL_TITLES = {
    "resnet50": "ResNet-50 fp32",
    "resnet50-int8": "ResNet-50 INT8",
    "resnet18": "ResNet-18 fp32",
    "bundled": "Fashion-MNIST ResNet-20 fp32 (bundled)",
}


def test_protocol_targets_compare_rows_of_the_same_model_and_concurrency_and_say_which() -> None:
    results = _results(
        _row(model="resnet50", throughput=25.0),
        _row(model="resnet50", concurrency=8, throughput=26.0),
        primary="resnet50",
        titles=FULL_TITLES,
    )
    results.protocol_load += [
        _row(model="resnet50", protocol=V2_BYTES, throughput=24.5),
        _row(model="resnet50", protocol=V2_BYTES, concurrency=8, throughput=99.0),  # not the one compared
        _row(model="resnet50", protocol=V2_FP32, throughput=26.0, concurrency=8),
        _row(model="resnet50", protocol=V2_FP32, throughput=25.0),
        _row(model="resnet50", protocol=GRPC_BYTES, throughput=24.0),
        _row(model="resnet50", protocol=GRPC_FP32, throughput=27.0),
        _row(model="bundled", protocol=V2_BYTES, throughput=800.0),
        _row(model="bundled", protocol=GRPC_BYTES, throughput=740.0),
    ]
    results.raw.append(
        RawInference("resnet50", "ResNet-50 fp32", [BatchRow(1, 40.0, 25.0), BatchRow(32, 1185.0, 27.0)])
    )

    v2 = _outcome(results, "Protocols, V2 BYTES vs /v1 multipart")
    assert v2.name.endswith("ResNet-50 fp32")
    assert "24.5 img/s vs /v1 multipart 25.0 img/s" in v2.measured and "concurrency 32" in v2.measured
    assert (v2.met, v2.margin.split()[0]) == (True, "+0.010")

    fp32 = _outcome(results, "Protocols, V2 FP32 vs raw ONNX Runtime")
    assert "26.0 img/s (concurrency 8" in fp32.measured and "27.0 img/s (batch 32)" in fp32.measured
    assert fp32.met is True  # 26 / 27 = 0.963

    bundled = _outcome(results, "Protocols, gRPC vs V2 HTTP (BYTES),")
    assert "740.0 img/s vs V2 HTTP binary BYTES 800.0" in bundled.measured
    assert (bundled.met, bundled.margin.split()[0]) == (False, "-0.025")  # 0.925 against issue 18's 0.95

    primary = _outcome(results, "Protocols, gRPC vs V2 HTTP (BYTES and FP32)")
    assert "BYTES: gRPC 24.0 vs V2 HTTP 24.5" in primary.measured
    assert "FP32: gRPC 27.0 vs V2 HTTP 25.0" in primary.measured
    assert primary.met is False  # FP32: 27 / 25 = 1.08, outside ±5%
    assert primary.margin.endswith("(FP32)")


def test_auto_batch_targets_take_the_best_fixed_setting_and_name_a_stand_in() -> None:
    results = _results(
        _row(throughput=500.0),
        _row(concurrency=1, p50_ms=2.0),
        _row(concurrency=8, p50_ms=9.0),
        _row(server=fixed_batch_key(1), throughput=510.0),
        _row(server=fixed_batch_key(8), throughput=480.0),
        _row(server=fixed_batch_key(32), throughput=450.0),
        _row(server=fixed_batch_key(32), concurrency=1, p50_ms=2.5),
        _row(server=fixed_batch_key(32), concurrency=8, p50_ms=8.0),
        titles={"bundled": "Bundled"},
    )
    results.fixed_batch_sizes = [1, 8, 32]
    results.stand_ins = {"resnet50": "bundled"}
    results.batching.append(BatchingRow("ours", "bundled", 2, "auto", [(1, 1000.0), (2, 1100.0)]))

    throughput = _outcome(results, "Auto batch size, throughput, ResNet-50 fp32")
    assert throughput.name == "Auto batch size, throughput, ResNet-50 fp32 (Bundled stands in)"
    assert "auto (batch 2) 500.0 img/s vs the best fixed, --max-batch-size 1, 510.0 img/s" in throughput.measured
    assert throughput.met is True  # 500 / 510 = 0.980

    latency = _outcome(results, "Auto batch size, latency, Bundled")
    assert "concurrency 1: 2.00 vs 2.50 ms; concurrency 8: 9.00 vs 8.00 ms" in latency.measured
    assert (latency.met, latency.margin.split()[0]) == (False, "-1.00")

    assert _outcome(results, "Auto batch size, throughput, ResNet-18").measured == "not measured"  # no stand-in


def test_start_up_targets_compare_ready_time_and_memory_with_the_naive_server() -> None:
    results = _results(primary="resnet50", titles={"bundled": "Bundled"})
    results.resources += [
        ServerResources(
            "ours",
            "bundled",
            ready_after_s=1.2,
            rss_mb=300.0,
            peak_rss_mb=320.0,
            settled_after_s=3.0,
            rss_settled_mb=250.0,
            processes=3,
        ),
        ServerResources(
            "naive",
            "bundled",
            ready_after_s=0.6,
            rss_mb=180.0,
            peak_rss_mb=900.0,
            settled_after_s=0.9,
            rss_settled_mb=95.0,
            processes=1,
        ),
    ]
    results.raw.append(RawInference("bundled", "Bundled", [BatchRow(1, 1.0, 1000.0)], session_load_s=0.02))
    ready = _outcome(results, "Ready time, Bundled")
    assert "ours 1.20 s" in ready.measured and "naive 0.60 s" in ready.measured
    assert "0.02 s in-process" in ready.measured
    assert (ready.met, ready.margin) == (False, "-0.10 s of slack")
    memory = _outcome(results, "RSS after load, Bundled")
    assert "ours 250 MiB in 3 processes vs naive 95 MiB" in memory.measured
    assert (memory.met, memory.margin) == (False, "-155 MiB")


def test_ready_targets_are_judged_on_the_ready_phases_median_start_when_the_run_has_one() -> None:
    results = _results(primary="resnet50", titles={"resnet50": "ResNet-50"})
    results.server_titles = {"ours": "ours", "naive": "naive"}
    results.resources += [
        ServerResources("ours", "resnet50", ready_after_s=0.95, rss_mb=410.0, peak_rss_mb=980.0),
        ServerResources("naive", "resnet50", ready_after_s=0.50, rss_mb=752.0, peak_rss_mb=2567.0),
    ]
    results.raw.append(RawInference("resnet50", "ResNet-50", [BatchRow(1, 20.0, 50.0)], session_load_s=0.20))
    # The load phases' starts (0.95 s) miss the session-load target; without a ready phase that is what is judged.
    assert _outcome(results, "Ready time vs session load, ResNet-50").met is False
    assert "the start before its load runs" in _outcome(results, "Ready time, ResNet-50").measured
    results.ready += [
        ReadyRow("ours", "resnet50", [0.71, 0.62, 0.66], 0.005),
        ReadyRow("naive", "resnet50", [0.52, 0.50, 0.55], 0.005),
    ]
    versus_naive = _outcome(results, "Ready time, ResNet-50")
    assert "ours 0.66 s (median of 3 (0.71, 0.62, 0.66))" in versus_naive.measured
    assert "naive 0.52 s" in versus_naive.measured
    assert (versus_naive.met, versus_naive.margin) == (True, "+0.36 s of slack")
    versus_load = _outcome(results, "Ready time vs session load, ResNet-50")
    assert "session 0.20 s in-process + 0.5 s" in versus_load.measured
    assert (versus_load.met, versus_load.margin) == (True, "+0.04 s of slack")
    results.ready[0] = ReadyRow("ours", "resnet50", [0.71, 0.75, 0.66], 0.005)
    assert _outcome(results, "Ready time vs session load, ResNet-50").margin == "-0.01 s of slack"
    markdown = render(results)
    assert "## Ready" in markdown and "asked every 5 ms" in markdown
    assert "| ResNet-50 | ours | 0.71, 0.75, 0.66 | **0.71** | 0.20 |" in markdown


def test_rss_after_a_saturation_run_compares_the_primary_model_at_the_end_of_its_runs() -> None:
    results = _results(primary="resnet50", titles={"resnet50": "ResNet-50"})
    results.resources += [
        ServerResources("ours", "resnet50", ready_after_s=1.5, rss_mb=410.0, peak_rss_mb=980.0, rss_settled_mb=400.0),
        ServerResources("naive", "resnet50", ready_after_s=1.0, rss_mb=752.0, peak_rss_mb=2567.0, rss_settled_mb=340.0),
    ]
    outcome = _outcome(results, "RSS after a saturation run, ResNet-50")
    assert "ours 410 vs naive 752 MiB" in outcome.measured and "peak 980 vs 2567" in outcome.measured
    assert (outcome.met, outcome.margin) == (True, "+342 MiB")
    assert _outcome(results, "RSS after load, ResNet-50").met is False  # settled, before any request: 400 vs 340


def test_concurrency_1_against_the_naive_server_per_model() -> None:
    results = _results(
        _row(concurrency=1, throughput=400.0),
        _row(server="naive", concurrency=1, throughput=300.0),
        titles={"bundled": "Bundled"},
    )
    outcome = _outcome(results, "Concurrency 1 vs naive, Bundled")
    assert outcome.met is True and "ours 400.0 img/s" in outcome.measured and "naive 300.0 img/s" in outcome.measured


def test_concurrency_1_against_the_naive_server_is_judged_side_by_side_when_the_run_has_the_rounds() -> None:
    # The load runs, minutes apart, say ours is ahead; the alternating rounds, seconds apart, say it is behind.
    results = _results(
        _row(concurrency=1, throughput=400.0),
        _row(server="naive", concurrency=1, throughput=300.0),
        titles={"bundled": "Bundled"},
    )
    results.paired.append(
        PairedRow(
            "bundled",
            1,
            5.0,
            [
                PairedRound("ours", 95.0, 100.0, 10.5, 10.0),
                PairedRound("naive", 99.0, 100.0, 10.1, 10.0),
                PairedRound("ours", 102.0, 100.0, 9.8, 10.0),
                PairedRound("naive", 90.0, 100.0, 11.1, 10.0),
            ],
        )
    )
    outcome = _outcome(results, "Concurrency 1 vs naive, Bundled")
    assert outcome.met is False  # the median of 0.90, 0.95, 0.99, 1.02: the lower middle, 0.95
    assert "4 alternating rounds of 5 s" in outcome.measured and "median 0.950" in outcome.measured
    assert "minutes apart: 400.0 vs 300.0 img/s = 1.333" in outcome.measured
    assert outcome.margin.startswith("-0.050")
    results.server_titles = {"ours": "ours", "naive": "naive"}
    markdown = render(results)
    assert "## Concurrency 1, side by side" in markdown
    assert "| Bundled | 4 × 5 s | 95.0 | 100.0 | 10.10 / 10.00 | 0.950 (ours first), 0.990 (naive first)" in markdown


def test_a_report_renders_from_hand_made_results_with_a_protocols_and_a_batch_size_section() -> None:
    results = _results(_row(), _row(server=fixed_batch_key(32)), titles={"bundled": "Bundled"})
    results.server_titles = {"ours": "ours", "naive": "naive", fixed_batch_key(32): "ours, --max-batch-size 32"}
    results.fixed_batch_sizes = [32]
    results.protocol_load.append(_row(protocol=GRPC_BYTES))
    results.batching += [
        BatchingRow("ours", "bundled", 4, "auto", [(1, 1.0), (2, 2.0), (4, 3.0)]),
        BatchingRow(fixed_batch_key(32), "bundled", 32, "flag"),
    ]
    markdown = render(results)
    assert "## Protocols" in markdown and "| Bundled | gRPC ModelInfer, BYTES (JPEG) | 32 |" in markdown
    assert "## Batch sizes: auto against fixed" in markdown
    assert "| ours | Bundled | 4 | auto | 1: 1, 2: 2, 4: 3 |" in markdown


def test_saturation_against_naive_needs_the_throughput_and_a_p99_no_worse() -> None:
    results = _results(
        _row(model="resnet18", throughput=90.0, p99_ms=500.0),
        _row(model="resnet18", concurrency=8, throughput=95.0, p99_ms=150.0),
        _row(server="naive", model="resnet18", throughput=88.0, p99_ms=450.0),
        _row(model="bundled", throughput=1000.0, p99_ms=60.0),
        _row(server="naive", model="bundled", throughput=390.0, p99_ms=110.0),
        _row(model="resnet50-int8", throughput=120.0),
        _row(server="naive", model="resnet50-int8", concurrency=1, throughput=80.0),
        titles=FULL_TITLES,
    )
    resnet18 = _outcome(results, "Saturation vs naive, ResNet-18")
    assert "ours 95.0 img/s (concurrency 8) vs naive 88.0 img/s (concurrency 32) = 1.08×" in resnet18.measured
    assert "p99 at concurrency 32: 500.0 vs 450.0 ms" in resnet18.measured
    assert resnet18.met is False and resnet18.margin == "+0.08×, p99 +50.0 ms"
    bundled = _outcome(results, "Saturation vs naive, Fashion-MNIST ResNet-20")
    assert bundled.goal.startswith("ours ≥ 2.5× naive") and bundled.met is True  # 1000 / 390 = 2.56
    int8 = _outcome(results, "Saturation vs naive, ResNet-50 INT8")
    assert int8.met is True and "did not run at concurrency 32" in int8.measured
    ceiling = _outcome(results, "Saturation vs ceiling, ResNet-18")
    assert ceiling.measured == NOT_MEASURED[0]  # no ceiling in this run
