"""Parsing py-spy's raw output into thread groups and innermost frames."""

from __future__ import annotations

from bench.profiling import summarise, thread_group

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
