"""A model version as served: its stages bound to its spec and session, its batcher, its state and its tuning.

A `ServedModel` is the model contract the data plane drives (`preprocess`, `run_batch`, `postprocess`), bound to
its own spec, session and serving settings. Its state changes here and nowhere else: loaded -> warming_up ->
ready, then unloading when it is being replaced or removed, or failed. It counts the requests that hold it, so
that it is closed only after the last one, and its memory returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

from service import autotune
from service.autotune import BatchCurve
from service.batching import DynamicBatcher, ImageReservation
from service.config import ServingSettings
from service.contract import ModelDescription, ModelState
from service.memory import resident_memory_bytes
from service.metrics import ServiceMetrics
from service.modelspec import AUTO, ModelSpec
from service.postprocess import ScoredLabel, rank
from service.preprocess import DecodeOptions, ImageUpload, PreprocessedImage, preprocess_upload
from service.priority import call_in_lowered_thread, thread_initializer
from service.runtime import InferenceRuntime, OnnxModelRuntime, run_batch

logger = logging.getLogger("service")

T = TypeVar("T")


def open_onnx_runtime(path: Path, providers: Sequence[str], intra_op_threads: int | None) -> OnnxModelRuntime:
    return OnnxModelRuntime(path, providers=providers, intra_op_threads=intra_op_threads)


@dataclass(eq=False)
class ServedModel:
    """A model as served. Its stages are bound at construction to its spec and session, so that a request goes
    from the data plane straight into preprocess.py, runtime.py and postprocess.py."""

    name: str
    path: Path
    spec: ModelSpec
    serving: ServingSettings
    overridden: tuple[str, ...]
    runtime: InferenceRuntime
    decode_options: DecodeOptions
    metrics: ServiceMetrics
    worker_nice: int = 0
    """How much lower than the event loop the threads running this model's batches are (service.priority)."""
    batch_memory_release_s: float = 0.0
    """Idle seconds after batches of more than one image before their memory is given back; 0: kept."""
    version: str = "1"
    is_default: bool = False
    """Whether requests that name no model go to this one (the registry decides)."""
    versions: tuple[str, ...] = ()
    """Every version of this model the server has now (the registry keeps it current)."""
    stamp: object = None
    """What the repository said of its files when it was loaded (a change means a reload)."""
    memory_bytes: int | None = None
    """Resident memory the process gained while it was opened (its weights and session), when measured."""
    state: ModelState = field(default=ModelState.LOADED, init=False)
    error: str | None = field(default=None, init=False)
    preprocess: Callable[[ImageUpload], PreprocessedImage] = field(init=False, repr=False)
    run_batch: Callable[[Sequence[np.ndarray]], np.ndarray] = field(init=False, repr=False)
    postprocess: Callable[[np.ndarray, int], list[list[ScoredLabel]]] = field(init=False, repr=False)
    batcher: DynamicBatcher[np.ndarray, np.ndarray] = field(init=False, repr=False)
    batch_curve: BatchCurve | None = field(default=None, init=False)
    """What tuning has measured so far when the batch size is "auto"."""
    _tuning: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _holds: int = field(default=0, init=False, repr=False)
    _released: asyncio.Event | None = field(default=None, init=False, repr=False)
    _memory_before_batches: int | None = field(default=None, init=False, repr=False)
    _tuning_now: bool = field(default=False, init=False, repr=False)

    @property
    def auto_batch(self) -> bool:
        return self.serving.max_batch_size == AUTO and self.runtime.supports_batches()

    def __post_init__(self) -> None:
        self.preprocess = partial(preprocess_upload, spec=self.spec, options=self.decode_options)
        self.run_batch = partial(run_batch, runtime=self.runtime, spec=self.spec)
        self.postprocess = partial(rank, labels=self.spec.labels)
        serving = self.serving
        self.batcher = DynamicBatcher(
            self.run_batch,
            name=self.name,
            max_batch_size=serving.max_batch_size
            if isinstance(serving.max_batch_size, int) and self.runtime.supports_batches()
            else 1,
            max_queue_size=serving.max_queue_size,
            max_delay_s=serving.max_batch_delay_s,
            max_wait_s=serving.max_queue_wait_s,
            observer=self.metrics.register_model(self.name, self.version),
            thread_initializer=thread_initializer(self.worker_nice),
            on_idle=self._release_batch_memory if self.batch_memory_release_s > 0 else None,
            idle_after_s=self.batch_memory_release_s,
        )

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY and self.batcher.running

    def reserve(self, count: int) -> ImageReservation[np.ndarray, np.ndarray]:
        return self.batcher.reserve(count)

    def request_started(self) -> None:
        """A request resolved to this version holds it until `request_finished`: it is not closed under it."""
        self._holds += 1

    def request_finished(self) -> None:
        self._holds -= 1
        if self._holds == 0 and self._released is not None:
            self._released.set()

    @property
    def requests_holding(self) -> int:
        return self._holds

    def mark_unloading(self) -> None:
        """It is out of the routing: no new request comes to it (`unload` finishes the job)."""
        self._set_state(ModelState.UNLOADING)

    async def unload(self) -> None:
        """Let the requests that hold it finish, then close it (after `mark_unloading`)."""
        self.mark_unloading()
        if self._holds:
            self._released = asyncio.Event()
            await self._released.wait()
        await self.close()
        # Its memory goes back now, freed in a thread rather than whenever the last reference drops on the loop.
        await asyncio.to_thread(self.runtime.release)

    def describe(self) -> ModelDescription:
        return ModelDescription(
            name=self.name,
            version=self.version,
            versions=self.versions or (self.version,),
            state=self.state,
            error=self.error,
            spec=self.spec,
            is_default=self.is_default,
            serving=ServingSettings(
                max_batch_size=self.batcher.max_batch_size,
                max_batch_delay_ms=self.serving.max_batch_delay_ms,
                max_queue_size=self.serving.max_queue_size,
                max_queue_wait_ms=self.serving.max_queue_wait_ms,
                intra_op_threads=self.runtime.intra_op_threads,
                batch_memory_budget_mb=self.serving.batch_memory_budget_mb,
            ),
            overridden=self.overridden,
            execution_provider=self.runtime.provider,
            intra_op_threads=self.runtime.intra_op_threads,
            queue_depth=self.batcher.queue_depth,
            seconds_per_image=self.batcher.seconds_per_image,
            batch_size_source=self._batch_size_source(),
            batch_curve=self.batch_curve,
        )

    def _batch_size_source(self) -> str:
        if not self.runtime.supports_batches():
            return "fixed batch axis"
        if self.serving.max_batch_size == AUTO:
            if self.batch_curve is None:
                return "auto (not measured yet)"
            return "auto" if self.batch_curve.finished else "auto (tuning)"
        return "model" if "max_batch_size" in self.overridden else "flag"

    def _set_state(self, state: ModelState, error: str | None = None) -> None:
        self.state = state
        self.error = error
        self.metrics.set_model_ready(self.name, self.version, state is ModelState.READY)

    async def warm_up_and_start(self, *, tune_first: bool = False) -> bool:
        """Warm the model up, start its batcher and serve; False (and state failed) if warm-up raised. With an auto
        batch size it serves at batch 1 at once and tunes in the background (`tune_batch_size`), or with
        `tune_first` (a new version beside one that serves) tunes before it is ready."""
        self._set_state(ModelState.WARMING_UP)
        spec = self.spec
        try:
            if self.auto_batch:
                self._memory_before_batches = resident_memory_bytes()
                batch = np.zeros((1, *spec.input_shape), dtype=np.float32)
                # One run: it plans batch 1's memory, and its time (an overestimate) seeds the wait estimate,
                # which the first real batches correct.
                seconds = await self._below_serving(partial(self.runtime.time_batch, batch, spec.output_name))
                self.batcher.seed_seconds_per_image(seconds)
            else:
                sizes = warm_up_sizes(self.batcher.max_batch_size)
                await self._below_serving(partial(self.runtime.warm_up, sizes, spec.input_shape, spec.output_name))
        except Exception as exc:
            logger.exception("warm-up of model %s failed; the server stays not ready", self.name)
            self._set_state(ModelState.FAILED, f"warm-up failed: {exc}")
            return False
        self.batcher.start()
        if self.auto_batch and tune_first:
            await self.tune_batch_size()
        self._set_state(ModelState.READY)
        logger.info(
            "model %s version %s warmed up and ready (batch size up to %d)",
            self.name,
            self.version,
            self.batcher.max_batch_size,
        )
        if self.auto_batch and not tune_first:
            self._tuning = asyncio.get_running_loop().create_task(self.tune_batch_size(), name=f"tune-{self.name}")
        return True

    async def _below_serving(self, work: Callable[[], T]) -> T:
        """Warm-up runs in a thread at the inference threads' priority: a version loaded beside one that serves
        takes CPU from it no more than another batch would, and the event loop keeps its precedence."""
        return await asyncio.to_thread(call_in_lowered_thread, work, self.worker_nice)

    async def tune_batch_size(self) -> None:
        """Time the served path at batch sizes 1, 2, 4, ... in the batcher's own thread, between the batches it
        serves, and move the largest batch to the choice after each size (service.autotune)."""
        spec = self.spec
        hop_s = min([await self._hand_off_seconds() for _ in range(5)])

        def timed(size: int) -> tuple[float, float]:
            tensors = [np.zeros(spec.input_shape, dtype=np.float32)] * size
            started = time.perf_counter()
            batch = np.stack(tensors)
            stacked = time.perf_counter()
            self.runtime.time_batch(batch, spec.output_name)
            return stacked - started, time.perf_counter() - stacked

        async def measure(size: int) -> autotune.BatchTiming:
            await self.batcher.run_in_thread(lambda: timed(size))  # the first run at a shape plans its memory
            memory = resident_memory_bytes()
            runs = [await self.batcher.run_in_thread(lambda: timed(size)) for _ in range(autotune.TIMED_RUNS)]
            stack_s, inference_s = min(runs, key=sum)
            before = self._memory_before_batches
            return autotune.BatchTiming(
                size,
                hop_s + stack_s + inference_s,
                inference_s,
                None if memory is None or before is None else memory - before,
            )

        def step(curve: autotune.BatchCurve) -> None:
            self.batch_curve = curve
            if curve.chosen != self.batcher.max_batch_size:
                self.batcher.set_max_batch_size(curve.chosen)

        self._tuning_now = True
        try:
            curve = await autotune.tune(
                measure,
                limit=autotune.largest_batch(4 * spec.input_values),
                memory_limit_bytes=self.serving.batch_memory_budget_bytes,
                on_step=step,
            )
        except Exception:
            logger.exception(
                "batch-size tuning of model %s failed; it keeps batch size %d", self.name, self.batcher.max_batch_size
            )
            return
        finally:
            self._tuning_now = False
        step(curve)
        served = ", ".join(
            f"{t.batch_size}: {t.images_per_second:.1f}"
            + (f" ({t.memory_bytes / 2**20:.0f} MiB)" if t.memory_bytes is not None else "")
            for t in curve.timings
        )
        logger.info(
            "model %s: served images per second by batch size %s; batch size %d chosen (memory budget %s)",
            self.name,
            served,
            curve.chosen,
            "none" if curve.memory_limit_bytes is None else f"{curve.memory_limit_bytes / 2**20:.0f} MiB",
        )
        # The sizes tried left their memory in the arena, the largest above the one chosen (and the batches served
        # meanwhile theirs): given back now, once, rather than held until the model next idles.
        if self.batch_memory_release_s > 0:
            largest = max(timing.batch_size for timing in curve.timings)
            await self.batcher.run_in_thread(partial(self._release_batch_memory, largest))

    def _release_batch_memory(self, largest_batch: int) -> None:
        """In the batcher's thread, once idle: what batches of more than one image held goes back to the system.
        Not while tuning measures memory and time between served batches: it gives it all back when it ends."""
        if largest_batch > 1 and not self._tuning_now:
            before = resident_memory_bytes()
            self.runtime.release_batch_memory(self.spec.input_shape, self.spec.output_name)
            after = resident_memory_bytes()
            if before is not None and after is not None:
                logger.debug("model %s idle: %.0f MiB of batch memory given back", self.name, (before - after) / 2**20)

    async def _hand_off_seconds(self) -> float:
        started = time.perf_counter()
        await self.batcher.run_in_thread(lambda: None)
        return time.perf_counter() - started

    async def batch1_seconds(self) -> float:
        """Its inference time for one image alone, timed in its batcher's thread (so not beside tuning)."""
        spec = self.spec
        return await self.batcher.run_in_thread(
            partial(self.runtime.batch1_seconds, spec.input_shape, spec.output_name)
        )

    async def close(self) -> None:
        if self._tuning is not None:
            self._tuning.cancel()
            await asyncio.gather(self._tuning, return_exceptions=True)
        await self.batcher.close()
        self.metrics.set_model_ready(self.name, self.version, False)


def warm_up_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes warmed up for a fixed maximum: powers of two and the maximum itself. Warming every size
    from 1 to 32 took 5.9 s on ResNet-50; the sizes in between plan their memory on their first batch instead."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch_size:
        sizes.append(sizes[-1] * 2)
    return sizes if sizes[-1] == max_batch_size else [*sizes, max_batch_size]
