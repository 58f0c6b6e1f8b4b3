"""The one class that owns an ONNX Runtime session: providers, threads, warm-up and `run(batch)`.

Its thread pool is sized by `service.cpus.available_cpus()` (re-exported here), the CPUs this process may really
use: inside a container the host's core count is the wrong answer (onnxruntime #29510).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import onnxruntime as ort

from service import autotune
from service.config import PROVIDER_ALIASES
from service.cpus import available_cpus, cgroup_cpu_limit

__all__ = [
    "InferenceRuntime",
    "OnnxModelRuntime",
    "available_cpus",
    "cgroup_cpu_limit",
    "resolve_providers",
    "run_batch",
]
from service.modelspec import ModelSpec

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def resolve_providers(requested: Iterable[str], available: Sequence[str]) -> list[str]:
    """Requested providers (aliases expanded) that this onnxruntime build has, in order, always ending with CPU.

    'auto' means CUDA when available. A requested provider that is missing is logged and skipped.
    """
    chosen: list[str] = []
    for name in requested:
        candidates = [CUDA_PROVIDER] if name == "auto" else [PROVIDER_ALIASES.get(name.lower(), name)]
        for provider in candidates:
            if provider in available:
                if provider not in chosen:
                    chosen.append(provider)
            elif name != "auto":
                logger.warning(
                    "execution provider %s is not available in this onnxruntime build (has %s); skipping it",
                    provider,
                    ", ".join(available),
                )
    if CPU_PROVIDER not in chosen:
        chosen.append(CPU_PROVIDER)
    return chosen


class InferenceRuntime(Protocol):
    """What the registry and the batcher need of an opened model; `OnnxModelRuntime` is the one real kind."""

    @property
    def provider(self) -> str: ...

    @property
    def intra_op_threads(self) -> int: ...

    @property
    def metadata_props(self) -> Mapping[str, str]: ...

    def check_compatible(self, spec: ModelSpec) -> None: ...

    def supports_batches(self) -> bool: ...

    def run(self, batch: np.ndarray, output_name: str | None = None) -> np.ndarray: ...

    def warm_up(
        self, batch_sizes: Iterable[int], sample_shape: Sequence[int], output_name: str | None = None
    ) -> None: ...

    def time_batch(self, batch: np.ndarray, output_name: str | None = None) -> float: ...

    def release(self) -> None: ...

    def release_batch_memory(self, sample_shape: Sequence[int], output_name: str | None = None) -> None: ...

    def batch1_seconds(self, sample_shape: Sequence[int], output_name: str | None = None) -> float: ...


def run_batch(tensors: Sequence[np.ndarray], *, runtime: InferenceRuntime, spec: ModelSpec) -> np.ndarray:
    """The model contract's inference stage: CHW tensors -> logits of shape (len(tensors), classes)."""
    logits = runtime.run(np.stack(tensors), spec.output_name)
    if logits.shape != (len(tensors), spec.num_classes):
        raise ValueError(
            f"model returned logits of shape {logits.shape}, expected ({len(tensors)}, {spec.num_classes})"
        )
    return logits


class OnnxModelRuntime:
    """One ONNX Runtime inference session for one model file.

    `run` is called by exactly one batcher thread at a time; the session itself is thread-safe anyway.
    """

    def __init__(self, path: Path, *, providers: Sequence[str] = ("cpu",), intra_op_threads: int | None = None) -> None:
        self.path = Path(path)
        self.intra_op_threads = intra_op_threads or available_cpus()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning threads keep cores busy while the model is idle, stealing them from decoding and other models.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.providers = resolve_providers(providers, ort.get_available_providers())
        self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=self.providers)
        self._input = self._session.get_inputs()[0]
        self._output_names = [output.name for output in self._session.get_outputs()]
        self._shrinking_run = ort.RunOptions()
        self._shrinking_run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    @property
    def session_options(self) -> ort.SessionOptions:
        """The options the session runs with (threads, spinning, optimisation level)."""
        return self._session.get_session_options()

    @property
    def provider(self) -> str:
        """The execution provider that actually runs the graph (the first one the session accepted)."""
        return cast(str, self._session.get_providers()[0])

    @property
    def metadata_props(self) -> Mapping[str, str]:
        """The ONNX file's ``metadata_props`` (where `service.modelspec` stores a ModelSpec)."""
        return dict(self._session.get_modelmeta().custom_metadata_map)

    @property
    def input_name(self) -> str:
        return cast(str, self._input.name)

    @property
    def input_shape(self) -> list[int | str | None]:
        """Declared input shape; symbolic dimensions (the batch axis) are strings or None."""
        return list(self._input.shape)

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    def check_compatible(self, spec: ModelSpec) -> None:
        """Raise ValueError, saying what differs, when the graph does not take what `spec` describes."""
        problems: list[str] = []
        if self._input.name != spec.input_name:
            problems.append(f"graph input is named {self._input.name!r}, metadata says {spec.input_name!r}")
        if spec.output_name not in self._output_names:
            problems.append(f"graph has no output {spec.output_name!r} (outputs: {', '.join(self._output_names)})")
        shape = self.input_shape
        expected = [None, spec.channels, spec.crop_size, spec.crop_size]
        if len(shape) != 4:
            problems.append(f"graph input has rank {len(shape)}, expected 4 (NCHW)")
        else:
            for axis, (declared, wanted) in enumerate(zip(shape, expected, strict=False)):
                if wanted is not None and isinstance(declared, int) and declared != wanted:
                    problems.append(f"input axis {axis} is {declared}, metadata implies {wanted}")
            if isinstance(shape[0], int) and shape[0] != 1:
                problems.append(f"batch axis is fixed at {shape[0]}; export it as dynamic")
        if self._input.type != "tensor(float)":
            problems.append(f"graph input type is {self._input.type}, expected tensor(float)")
        if problems:
            raise ValueError("; ".join(problems))

    def supports_batches(self) -> bool:
        """False when the graph's batch axis is fixed at 1, so the batcher must run images one by one."""
        first = self.input_shape[0] if self.input_shape else None
        return not (isinstance(first, int) and first == 1)

    def run(self, batch: np.ndarray, output_name: str | None = None) -> np.ndarray:
        """Logits for a float32 NCHW batch."""
        name = output_name or self._output_names[0]
        (logits,) = self._session.run([name], {self._input.name: batch})
        return cast(np.ndarray, logits)

    def warm_up(self, batch_sizes: Iterable[int], sample_shape: Sequence[int], output_name: str | None = None) -> None:
        """Run each batch size once so allocation and kernel selection do not land on the first requests."""
        for size in batch_sizes:
            self.run(np.zeros((size, *sample_shape), dtype=np.float32), output_name)

    def release_batch_memory(self, sample_shape: Sequence[int], output_name: str | None = None) -> None:
        """Give back to the system what ONNX Runtime's arena holds for past batches: its CPU arena keeps the largest
        batch's activations for the life of the session (about 390 MB at batch 32 on ResNet-50) and frees its
        unused regions only at the end of a run that asks for it. So: one run of a single image that does."""
        batch = np.zeros((1, *sample_shape), dtype=np.float32)
        self._session.run([output_name or self._output_names[0]], {self._input.name: batch}, self._shrinking_run)

    def release(self) -> None:
        """Free the session (its weights, arena and thread pool) now, in the calling thread; no run after this."""
        self.__dict__.pop("_session", None)

    def time_batch(self, batch: np.ndarray, output_name: str | None = None) -> float:
        """Seconds one run of `batch` takes (batch-size tuning: `service.autotune`)."""
        started = time.perf_counter()
        self.run(batch, output_name)
        return time.perf_counter() - started

    def batch1_seconds(self, sample_shape: Sequence[int], output_name: str | None = None) -> float:
        """One image's inference time alone: the fastest of up to 20 runs within about 0.1 s (after a warm one)."""
        batch = np.zeros((1, *sample_shape), dtype=np.float32)
        self.run(batch, output_name)
        return autotune.fastest(lambda _: self.run(batch, output_name), 1, runs=20, budget_s=0.1)
