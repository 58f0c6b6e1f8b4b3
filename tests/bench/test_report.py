"""The report's target table on hand-made results: a target the run did not measure says so, and is not judged."""

from __future__ import annotations

from bench.report import NOT_MEASURED, TARGETS, evaluate_targets
from bench.results import BenchResults, Environment, LoadRow

REFUSAL_TARGET = "Concurrency 64, requests beyond the queue"


def _results(*load: LoadRow) -> BenchResults:
    environment = Environment(cpu_model="test", simd="", cores=2, online_cpus=2, date="", versions={}, git_commit="",
                              mode="test", command="", load_average="")
    return BenchResults(environment=environment, primary_model="bundled", model_titles={}, server_titles={},
                        load=list(load))


def _c64(**changes: object) -> LoadRow:
    fields: dict = dict(server="ours", model="bundled", size="small-jpeg", size_label="500x375 JPEG", concurrency=64,
                        throughput=100.0, p50_ms=100.0, p95_ms=150.0, p99_ms=200.0, ok=100, statuses={},
                        server_cpu_cores=1.0, client_cpu_cores=0.1)
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
