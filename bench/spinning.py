"""``python -m bench.spinning``: what ONNX Runtime's thread spinning buys and costs, measured (about 3 minutes).

The server's sessions run with ``session.intra_op.allow_spinning = 0`` (`service.runtime.OnnxModelRuntime`); a
default session, as the naive server has it, spins. Three sessions of one model that differ only in spinning (off,
on, on only while a run lasts: ``MODES``), with the server's other options, take turns in rounds:

- **alone**: batch-1 runs back to back with the server's own preprocessing of a photo between them, as a lone
  request pays it: the median latency of a run, and the process's CPU per request (spinning burns CPU after each
  run, while the next request is decoded);
- **contended**: the same runs while another thread preprocesses photos without pause, a stand-in for the
  decoding, HTTP and refusals that share the cores under load: runs per second and photos per second.

    python -m bench.spinning                         # ResNet-50 fp32 from the bench cache
    python -m bench.spinning --model path/to/model.onnx --seconds 10 --rounds 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.measure import model_spec_of
from bench.workload import SIZES_BY_KEY, ensure_images, ensure_model, model_case
from service.preprocess import DecodeOptions, preprocess_image
from service.runtime import available_cpus

CACHE = Path(__file__).resolve().parent / ".cache"


MODES = {
    "off": ("0", "0"),
    "on": ("1", "0"),
    "during runs": ("1", "1"),
}
"""Spinning modes: (session.intra_op.allow_spinning, session.force_spinning_stop). ORT's default is on: its threads
spin after a run until they give up; with force_spinning_stop they spin between a run's operators only and stop
when the run returns."""


def session(path: Path, mode: str) -> ort.InferenceSession:
    """The server's session options (`service.runtime.OnnxModelRuntime`), with spinning as asked."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = available_cpus()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    spin, stop = MODES[mode]
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.add_session_config_entry("session.force_spinning_stop", stop)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Tally:
    run_ms: list[float] = field(default_factory=list)
    cpu_ms_per_request: list[float] = field(default_factory=list)
    runs_per_s: list[float] = field(default_factory=list)
    photos_per_s: list[float] = field(default_factory=list)


def alone(run, preprocess, seconds: float, tally: Tally) -> None:
    times = []
    cpu_before, give_up = cpu_seconds(), time.monotonic() + seconds
    while time.monotonic() < give_up:
        tensor = preprocess()
        started = time.perf_counter()
        run(tensor)
        times.append(time.perf_counter() - started)
    tally.run_ms.append(statistics.median(times) * 1000)
    tally.cpu_ms_per_request.append((cpu_seconds() - cpu_before) / len(times) * 1000)


def contended(run, preprocess, seconds: float, tally: Tally) -> None:
    stop = threading.Event()
    photos = 0
    tensor = preprocess()

    def decode_forever() -> None:
        nonlocal photos
        while not stop.is_set():
            preprocess()
            photos += 1

    decoder = threading.Thread(target=decode_forever)
    decoder.start()
    runs, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        run(tensor)
        runs += 1
    elapsed = time.monotonic() - started
    stop.set()
    decoder.join()
    tally.runs_per_s.append(runs / elapsed)
    tally.photos_per_s.append(photos / elapsed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", type=Path, default=None, help="an ONNX file with model metadata (default: ResNet-50)"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per phase and setting")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    path = args.model or ensure_model(model_case("resnet50", CACHE)).path
    spec = model_spec_of(path)
    photo = ensure_images(CACHE, (SIZES_BY_KEY["small-jpeg"],))["small-jpeg"][0]
    options = DecodeOptions()

    def preprocess() -> np.ndarray:
        return preprocess_image(photo.data, spec, options, photo.size.content_type).tensor[None]

    sessions = {mode: session(path, mode) for mode in MODES}
    tallies = {mode: Tally() for mode in sessions}
    input_name = sessions["off"].get_inputs()[0].name
    for round_number in range(args.rounds):
        order = list(MODES) if round_number % 2 == 0 else list(reversed(MODES))
        for mode in order:
            chosen = sessions[mode]

            def run(tensor: np.ndarray, chosen: ort.InferenceSession = chosen) -> None:
                chosen.run(None, {input_name: tensor})

            run(preprocess())
            alone(run, preprocess, args.seconds, tallies[mode])
            contended(run, preprocess, args.seconds, tallies[mode])
        print(f"round {round_number + 1}/{args.rounds} done", flush=True)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    off = tallies["off"]
    print(f"\n{path.name}, {available_cpus()} cores, {args.rounds} rounds x {args.seconds:g} s, medians over rounds")
    print("| spinning | batch-1 run, ms | CPU per lone request, ms | contended runs/s | contended photos/s |")
    print("|---|---|---|---|---|")
    for name, tally in tallies.items():
        print(
            f"| {name} | {median(tally.run_ms):.1f} | {median(tally.cpu_ms_per_request):.1f} "
            f"| {median(tally.runs_per_s):.2f} | {median(tally.photos_per_s):.1f} |"
        )
    for name, tally in tallies.items():
        if tally is off:
            continue
        print(
            f"{name} / off: run time {median(tally.run_ms) / median(off.run_ms):.3f}, "
            f"CPU per lone request {median(tally.cpu_ms_per_request) / median(off.cpu_ms_per_request):.3f}, "
            f"contended runs {median(tally.runs_per_s) / median(off.runs_per_s):.3f}, "
            f"contended photos {median(tally.photos_per_s) / median(off.photos_per_s):.3f}"
        )


if __name__ == "__main__":
    main()
