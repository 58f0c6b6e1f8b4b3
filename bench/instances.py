"""``python -m bench.instances``: one session on every core against several smaller ones (Triton's instance groups).

Issue 18 asks whether several sessions per model, each with a share of the cores, serve more than one session with
all of them. Measured in-process, without HTTP, as the server's pipeline runs under load: decoding threads
(`service.preprocess.preprocess_image` on the bench's photos, 500x375 JPEGs unless `--image` says otherwise, one
per core) feed a bounded queue; each session's own thread takes what is queued, up to its batch size, and runs it
(`service.runtime.OnnxModelRuntime`, the server's session options). Each layout, written SESSIONSxTHREADSbBATCH (``1x2b16``: one session of 2 threads,
batches of up to 16), takes turns with the others in rounds, its order alternating; printed: images per second,
the median over rounds.

    python -m bench.instances                                    # ResNet-18: 1x2b16 against 2x1b8
    python -m bench.instances --model resnet50 --layouts 1x2b8,2x1b4 --seconds 8 --rounds 3
"""

from __future__ import annotations

import argparse
import queue
import re
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.measure import model_spec_of
from bench.workload import (
    DEFAULT_CACHE_DIR,
    MODEL_NAMES,
    SIZES_BY_KEY,
    EncodedImage,
    ensure_images,
    ensure_model,
    model_case,
)
from service.modelspec import ModelSpec
from service.preprocess import DecodeOptions, preprocess_image
from service.runtime import OnnxModelRuntime, available_cpus

WARM_UP_S = 1.0
"""Run before each measured window, untimed: the queue fills and the sessions run their first batches."""
_LAYOUT = re.compile(r"^(?P<sessions>\d+)x(?P<threads>\d+)b(?P<batch>\d+)$")


@dataclass(frozen=True)
class Layout:
    sessions: int
    threads: int
    batch: int

    @classmethod
    def parse(cls, text: str) -> Layout:
        match = _LAYOUT.match(text.strip())
        if match is None or min(int(value) for value in match.groups()) < 1:
            raise ValueError(f"a layout is SESSIONSxTHREADSbBATCH, each at least 1 (such as 2x1b8), not {text!r}")
        return cls(int(match["sessions"]), int(match["threads"]), int(match["batch"]))

    def __str__(self) -> str:
        return f"{self.sessions}x{self.threads}b{self.batch}"


def images_per_second(
    runtimes: list[OnnxModelRuntime],
    batch: int,
    spec: ModelSpec,
    photos: list[EncodedImage],
    decoders: int,
    seconds: float,
) -> float:
    """The pipeline's throughput over `seconds`, after `WARM_UP_S`."""
    options = DecodeOptions()
    ready: queue.Queue[np.ndarray] = queue.Queue(maxsize=4 * batch * len(runtimes))
    stop = threading.Event()
    done = [0] * len(runtimes)

    def decode(first: int) -> None:
        index = first
        while not stop.is_set():
            photo = photos[index % len(photos)]
            tensor = preprocess_image(photo.data, spec, options, photo.size.content_type).tensor
            index += 1
            while not stop.is_set():
                try:
                    ready.put(tensor, timeout=0.05)
                    break
                except queue.Full:
                    pass

    def infer(slot: int) -> None:
        while not stop.is_set():
            try:
                tensors = [ready.get(timeout=0.05)]
            except queue.Empty:
                continue
            while len(tensors) < batch:
                try:
                    tensors.append(ready.get_nowait())
                except queue.Empty:
                    break
            runtimes[slot].run(np.stack(tensors), spec.output_name)
            done[slot] += len(tensors)

    threads = [threading.Thread(target=decode, args=(index,)) for index in range(decoders)]
    threads += [threading.Thread(target=infer, args=(slot,)) for slot in range(len(runtimes))]
    for thread in threads:
        thread.start()
    try:
        time.sleep(WARM_UP_S)
        before, started = sum(done), time.monotonic()
        time.sleep(seconds)
        return (sum(done) - before) / (time.monotonic() - started)
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18", choices=MODEL_NAMES, help="a bench model (default: resnet18)")
    parser.add_argument("--layouts", default="1x2b16,2x1b8", help="comma-separated (default: 1x2b16,2x1b8)")
    parser.add_argument("--image", default="small-jpeg", choices=SIZES_BY_KEY, help="the photos' size and format")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per layout and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    try:
        layouts = [Layout.parse(text) for text in args.layouts.split(",") if text.strip()]
    except ValueError as exc:
        parser.error(str(exc))

    path = ensure_model(model_case(args.model, args.cache_dir)).path
    spec = model_spec_of(path)
    photos = ensure_images(args.cache_dir, (SIZES_BY_KEY[args.image],))[args.image]
    decoders = available_cpus()
    sessions = {
        layout: [OnnxModelRuntime(path, intra_op_threads=layout.threads) for _ in range(layout.sessions)]
        for layout in layouts
    }
    results: dict[str, list[float]] = {str(layout): [] for layout in layouts}
    for round_number in range(args.rounds):
        for layout in layouts if round_number % 2 == 0 else layouts[::-1]:
            rate = images_per_second(sessions[layout], layout.batch, spec, photos, decoders, args.seconds)
            results[str(layout)].append(rate)
            print(f"round {round_number + 1}/{args.rounds}: {layout} {rate:.1f} img/s", flush=True)

    print(
        f"\n{path.name}, {photos[0].size.label}, {decoders} cores, {decoders} decoding threads, "
        f"{args.rounds} rounds x {args.seconds:g} s"
    )
    print("| layout | sessions x threads | batch | img/s (median) | rounds |")
    print("|---|---|---|---|---|")
    for layout in layouts:
        rates = results[str(layout)]
        print(
            f"| {layout} | {layout.sessions} x {layout.threads} | {layout.batch} | {statistics.median(rates):.1f} "
            f"| {', '.join(f'{rate:.1f}' for rate in rates)} |"
        )
    return results


if __name__ == "__main__":
    main()
