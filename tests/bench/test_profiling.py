"""Parsing py-spy's raw output into thread groups and innermost frames, and the CPU each group used."""

from __future__ import annotations

import os
import threading
import time

from bench.profiling import NATIVE_GROUP, cpu_by_group, summarise, thread_group
from bench.report import render
from bench.results import GRPC_BYTES, BenchResults, ProfileGroup, ProfileResult
from bench.servers import thread_cpu_seconds
from tests.bench.hand_made import environment

RAW = """\
thread (101): MainThread;run_forever (asyncio/base_events.py:600);_run_once (asyncio/base_events.py:1880);feed (/x/lib/python3.11/site-packages/h11/_receivebuffer.py) 30
thread (102): decode_0;_worker (concurrent/futures/thread.py:81);preprocess_image (service/preprocess.py) 50
thread (103): decode_1;_worker (concurrent/futures/thread.py:81);preprocess_image (service/preprocess.py) 40
thread (104): batcher-resnet50_0;_worker (concurrent/futures/thread.py:81);run (service/runtime.py) 80
"""


def test_thread_pools_are_grouped() -> None:
    assert thread_group("decode_1") == "decode"
    assert thread_group("batcher-resnet50_0") == "batcher-resnet50"
    assert thread_group("MainThread") == "MainThread"


def test_summary_counts_samples_per_group_and_innermost_frame() -> None:
    summary = summarise(RAW, duration_s=1.0, rate_hz=100)
    assert summary.samples == 200
    assert summary.by_group == {"decode": 90, "batcher-resnet50": 80, "MainThread": 30}
    assert summary.cores(summary.by_group["decode"]) == 0.9
    assert summary.self_frames["decode"] == {"preprocess_image (service/preprocess.py)": 90}
    assert summary.self_frames["MainThread"] == {"feed (h11/_receivebuffer.py)": 30}


def test_worker_processes_recorded_with_subprocesses_are_counted() -> None:
    """py-spy --subprocesses prefixes each line with the process chain; a summary that skipped those lines left the
    bench's profiles of the multi-worker server empty."""
    raw = (
        'process 10:"python -m service --port 1";process 11:"python -m service --port 1";'
        "thread (201): MainThread;run (asyncio/runners.py) 25\n"
        'process 10:"python -m service --port 1";process 12:"python -m service --port 1";'
        "thread (301): decode_0;preprocess_image (service/preprocess.py) 75\n"
    )
    summary = summarise(raw, duration_s=1.0, rate_hz=100)
    assert summary.samples == 100
    assert summary.by_group == {"MainThread": 25, "decode": 75}


def test_cpu_is_read_per_thread_and_summed_per_group_with_unsampled_threads_as_native() -> None:
    summary = summarise(RAW, duration_s=1.0, rate_hz=100)
    before = {101: 1.0, 102: 2.0, 103: 2.0, 104: 5.0, 900: 0.0, 901: 3.0}
    # 103 ended during the recording (gone from `after`); 105 started (counts from zero); 900 and 105 are native.
    after = {101: 1.5, 102: 2.5, 104: 6.0, 900: 0.25, 105: 0.25}
    cpu = cpu_by_group(summary, before, after, seconds=2.0)
    assert cpu == {"MainThread": 0.25, "decode": 0.25, "batcher-resnet50": 0.5, NATIVE_GROUP: 0.25}
    assert cpu_by_group(summary, before, after, seconds=0.0) == {}


def test_thread_cpu_seconds_reads_the_cpu_each_thread_of_a_process_used() -> None:
    me = threading.get_native_id()
    before = thread_cpu_seconds(os.getpid())
    start = time.thread_time()
    while time.thread_time() - start < 0.2:  # CPU, not wall time: a busy machine only makes this take longer
        pass
    after = thread_cpu_seconds(os.getpid())
    assert me in before and me in after
    assert after[me] - before[me] >= 0.1  # /proc counts in clock ticks (10 ms)
    assert all(value >= 0 for value in after.values())


def test_a_profile_reports_cpu_per_group_and_per_image_when_read_and_not_when_absent() -> None:
    group = ProfileGroup("decode", 1.5, 0.4, [("preprocess_image (service/preprocess.py)", 1.0)], cpu_cores=0.5)
    native = ProfileGroup(NATIVE_GROUP, 0.0, 0.0, [], cpu_cores=0.25)
    results = _profiled_results([group, native])
    markdown = render(results)
    assert "| Thread group | CPU (cores) | CPU per image (ms) | Samples (cores) |" in markdown
    assert "| decode | 0.50 | 2.00 | 1.50 | 40% | preprocess_image (service/preprocess.py) 100% |" in markdown
    assert f"| {NATIVE_GROUP} | 0.25 | 1.00 | 0.00 | 0% | — |" in markdown
    assert "## Profile: ours, Bundled, 500x375 JPEG, concurrency 32" in markdown
    old = render(_profiled_results([ProfileGroup("decode", 1.5, 0.4, [])]))  # a run from before CPU was read
    assert "| Thread group | Samples (cores) | Share |" in old and "CPU (cores)" not in old


def test_a_profile_of_another_protocol_says_which() -> None:
    results = _profiled_results([ProfileGroup("MainThread", 0.5, 1.0, [], cpu_cores=0.4)])
    results.profiles[0].protocol = GRPC_BYTES
    assert "## Profile: ours, Bundled, 500x375 JPEG, gRPC ModelInfer, BYTES (JPEG), concurrency 32" in render(results)


def _profiled_results(groups: list[ProfileGroup]) -> BenchResults:
    results = BenchResults(
        environment=environment(),
        primary_model="bundled",
        model_titles={"bundled": "Bundled"},
        server_titles={"ours": "ours"},
    )
    results.profiles.append(ProfileResult("ours", "bundled", "small-jpeg", 32, 10.0, 4000, 250.0, groups))
    return results
