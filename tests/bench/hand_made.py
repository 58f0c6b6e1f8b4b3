"""Hand-made bench results for the report's tests: an environment that says nothing about any machine."""

from __future__ import annotations

from bench.results import Environment


def environment() -> Environment:
    return Environment(
        cpu_model="test",
        simd="",
        cores=2,
        online_cpus=2,
        date="",
        versions={},
        git_commit="",
        mode="test",
        command="",
        load_average="",
    )
