"""In-process measurements: raw inference per batch size, preprocessing per image, the ceiling, INT8 accuracy.

Raw inference, which the ceiling is computed from, runs a default ONNX Runtime `InferenceSession` (`DefaultSession`:
threads sized by ONNX Runtime itself, spinning on), as the naive server has it: the ceiling is what the hardware
gives a user who writes nothing, not what our own session options give. Preprocessing uses the server's own
`service.preprocess.preprocess_image`, exactly what the server pays per image.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from bench.workload import EncodedImage
from service.modelspec import ModelSpec, build_spec, fields_from_metadata_props
from service.preprocess import DecodeOptions, draft_request, image_to_tensor, preprocess_image
from service.runtime import OnnxModelRuntime


@dataclass(frozen=True)
class BatchTiming:
    batch_size: int
    seconds_per_batch: float
    """Median over the timed runs."""
    runs: int

    @property
    def images_per_second(self) -> float:
        return self.batch_size / self.seconds_per_batch

    @property
    def seconds_per_image(self) -> float:
        return self.seconds_per_batch / self.batch_size


@dataclass(frozen=True)
class PreprocessTiming:
    seconds_per_image: float
    """Mean over the photos of each photo's median time."""
    draft_applies: bool
    """Whether JPEG draft decoding changes anything for this size (large JPEGs only)."""


def _timed_median(work: Callable[[], object], min_seconds: float, min_runs: int) -> tuple[float, int]:
    work()  # the first call pays for allocation and kernel selection
    times: list[float] = []
    give_up = time.monotonic() + min_seconds
    while len(times) < min_runs or time.monotonic() < give_up:
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times), len(times)


class DefaultSession:
    """A default `InferenceSession` on the CPU, as a user who sets no option gets it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    @property
    def metadata_props(self) -> dict[str, str]:
        return dict(self._session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray, output_name: str | None = None) -> np.ndarray:
        (logits,) = self._session.run([output_name] if output_name else None, {self._input: batch})
        return logits


def model_spec_of(path: Path) -> ModelSpec:
    """The spec embedded in an ONNX file, read with a throwaway session."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return build_spec(fields_from_metadata_props(session.get_modelmeta().custom_metadata_map), source=path.name)


def model_spec(runtime: OnnxModelRuntime | DefaultSession) -> ModelSpec:
    return build_spec(fields_from_metadata_props(runtime.metadata_props), source=runtime.path.name)


def raw_inference(
    runtime: OnnxModelRuntime | DefaultSession,
    spec: ModelSpec,
    batch_sizes: Sequence[int],
    *,
    min_seconds: float,
    min_runs: int,
) -> list[BatchTiming]:
    """Seconds per batch for each batch size on random inputs (speed does not depend on the pixel values)."""
    rng = np.random.default_rng(0)
    timings = []
    for size in batch_sizes:
        batch = rng.standard_normal((size, spec.channels, spec.crop_size, spec.crop_size), dtype=np.float32)
        seconds, runs = _timed_median(lambda batch=batch: runtime.run(batch, spec.output_name), min_seconds, min_runs)
        timings.append(BatchTiming(size, seconds, runs))
    return timings


def default_session_batch1(path: Path, spec: ModelSpec, *, min_seconds: float, min_runs: int) -> BatchTiming:
    """Batch-1 time with a default `InferenceSession`, as the naive server has it."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).standard_normal(
        (1, spec.channels, spec.crop_size, spec.crop_size), dtype=np.float32
    )
    seconds, runs = _timed_median(lambda: session.run(None, {spec.input_name: batch}), min_seconds, min_runs)
    return BatchTiming(1, seconds, runs)


def best_batch(timings: Sequence[BatchTiming]) -> BatchTiming:
    return max(timings, key=lambda timing: timing.images_per_second)


def preprocessing(
    images: Sequence[EncodedImage], spec: ModelSpec, *, jpeg_draft: bool, min_seconds: float, min_runs: int
) -> PreprocessTiming:
    """Single-threaded seconds per image of the server's preprocessing (decode, resize, crop, normalise)."""
    options = DecodeOptions(jpeg_draft=jpeg_draft)
    medians = []
    for image in images:
        seconds, _ = _timed_median(
            lambda image=image: preprocess_image(image.data, spec, options, image.size.content_type),
            min_seconds / len(images),
            min_runs,
        )
        medians.append(seconds)
    size = images[0].size
    applies = size.format == "JPEG" and draft_request(size.width, size.height, spec.resize_size) is not None
    return PreprocessTiming(statistics.fmean(medians), applies)


def ceiling(preprocess_s: float, inference_s_per_image: float, cores: int) -> float:
    """Images per second when preprocessing spreads over all cores and inference runs at its best batch:
    1 / (preprocessing per image / cores + inference per image)."""
    return 1.0 / (preprocess_s / cores + inference_s_per_image)


def top1_accuracy(
    runtime: OnnxModelRuntime, spec: ModelSpec, images: np.ndarray, labels: np.ndarray, batch_size: int = 500
) -> float:
    """Top-1 accuracy on uint8 grey images, preprocessed by the server's own `image_to_tensor`."""
    correct = 0
    for first in range(0, len(images), batch_size):
        chunk = images[first : first + batch_size]
        tensors = np.stack([image_to_tensor(Image.fromarray(pixels), spec) for pixels in chunk])
        logits = runtime.run(tensors, spec.output_name)
        correct += int((logits.argmax(1) == labels[first : first + batch_size]).sum())
    return correct / len(images)
