"""What a served model is to the data plane: its stages, its room for images, its state and its description.

The data plane is typed against these protocols only, never against how the registry builds a model
(`registry.ServedModel`), so that a toy model with a real batcher drives it in the unit tests exactly as an ONNX
model does in the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from service.modelspec import ModelSpec
from service.postprocess import ScoredLabel
from service.preprocess import ImageUpload, PreprocessedImage

if TYPE_CHECKING:
    from service.autotune import BatchCurve
    from service.batching import ImageReservation
    from service.config import ServingSettings


class ModelState(StrEnum):
    LOADED = "loaded"
    WARMING_UP = "warming_up"
    READY = "ready"
    UNLOADING = "unloading"
    """Replaced or removed: it takes no new request and closes after its last one."""
    FAILED = "failed"


@dataclass(frozen=True)
class VersionStatus:
    """One line of the repository index: a model version on disk or loaded, its state and why."""

    name: str
    version: str
    state: str
    """READY, LOADING, UNLOADING or UNAVAILABLE (Triton's words)."""
    reason: str = ""


@dataclass(frozen=True)
class ModelDescription:
    """Everything the front ends show about a model version, read at one moment."""

    name: str
    version: str
    """The version this describes (positive integers, as Triton numbers them)."""
    versions: tuple[str, ...]
    """Every version of the model the server knows."""
    state: ModelState
    error: str | None
    spec: ModelSpec
    serving: ServingSettings
    """The effective settings: server flags overridden by the model's own `serving` section."""
    overridden: tuple[str, ...]
    """Which of `serving` come from the model's own section."""
    execution_provider: str
    intra_op_threads: int
    queue_depth: int
    seconds_per_image: float | None
    batch_size_source: str
    """auto (measured), model (its serving section), flag, or fixed batch axis."""
    batch_curve: BatchCurve | None
    is_default: bool = False
    """Whether requests that name no model go to this one."""

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY


@runtime_checkable
class ModelContract(Protocol):
    """The stages of a served model. The data plane calls `preprocess` (in the decode pool) and `postprocess`;
    the batcher calls `run_batch` with tensors from any front end (decoded uploads or tensors sent as they are)."""

    def preprocess(self, upload: ImageUpload) -> PreprocessedImage: ...

    def run_batch(self, tensors: Sequence[np.ndarray]) -> np.ndarray: ...

    def postprocess(self, logits: np.ndarray, k: int) -> list[list[ScoredLabel]]: ...


class ServableModel(ModelContract, Protocol):
    """A model version as the data plane serves it: the contract's stages, plus its identity, its spec (what its
    input and output are), whether it takes requests, and room for a request's images in its batcher."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def ready(self) -> bool: ...

    @property
    def state(self) -> ModelState: ...

    @property
    def error(self) -> str | None: ...

    def reserve(self, count: int) -> ImageReservation[np.ndarray, np.ndarray]:
        """Room for `count` images in the model's queue, or `Overloaded` / `ShuttingDown` at once."""
        ...

    def request_started(self) -> None:
        """A request resolved to this version holds it (it is not closed under the request) until..."""
        ...

    def request_finished(self) -> None:
        """...the request ends, whatever the outcome."""
        ...

    def describe(self) -> ModelDescription: ...


class ModelSource(Protocol):
    """Where the data plane finds the model versions it serves (`registry.ModelRegistry`)."""

    @property
    def ready(self) -> bool:
        """Every model has a version that takes requests."""
        ...

    @property
    def default_model(self) -> str | None: ...

    def get(self, name: str | None, version: str | None = None) -> ServableModel:
        """The named model's version (None: the default model; no version: the one that answers by default);
        `ModelNotFound` when there is no such model or version."""
        ...

    def all(self) -> Sequence[ServableModel]:
        """Every model version, sorted by name and version."""
        ...
