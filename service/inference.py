"""The protocol-neutral inference request and result: what every front end translates its wire format to and from.

A front end (/v1 classify, V2 over HTTP, V2 over gRPC) builds an `InferenceRequest` (which model and version,
what it wants back if it knows before the body, and a `RequestBody` that knows how to receive its inputs) and
hands it to `DataPlane.infer`, which admits it, has the body received into the admission's `Ticket`, validates,
decodes, batches, infers and ranks, and returns an `InferenceResult` for the front end to encode.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from service.postprocess import ScoredLabel
from service.preprocess import ImageUpload

if TYPE_CHECKING:
    from service.admission import Ticket

DEFAULT_TOP_K = 5
"""Labels per image when a request asks for ranked labels without saying how many (fewer if the model has fewer)."""


@dataclass(frozen=True)
class EncodedImages:
    """Images as uploaded (JPEG, PNG, ...), decoded and preprocessed by the server."""

    uploads: Sequence[ImageUpload]
    input_name: str | None = None
    """The model input they are for; None: the model's one input."""

    def __len__(self) -> int:
        return len(self.uploads)


@dataclass(frozen=True)
class TensorBatch:
    """A batch already preprocessed by the client: float32, (N, C, H, W), straight to the batcher."""

    array: np.ndarray
    input_name: str | None = None

    def __len__(self) -> int:
        return len(self.array)


ModelInputs = EncodedImages | TensorBatch


@dataclass(frozen=True)
class RequestedOutput:
    """One output a request asks for: the logits as they are, or the k most probable labels of each image."""

    name: str | None = None
    """The model output it is about; None: the model's one output."""
    ranked: bool = False
    k: int | None = None
    """With `ranked`: labels per image, 1 to the model's classes; None: `DEFAULT_TOP_K` (or all classes if fewer)."""
    asked_as: str = "k"
    """What the protocol calls k (top_k, classification), for the message that refuses it."""


LOGITS = RequestedOutput()


@dataclass(frozen=True)
class RequestParameters:
    """What a request's protocol-level parameters may ask of serving (V2 ``parameters``)."""

    timeout_s: float | None = None
    """Answer within this many seconds or not at all; shortens the server's own request timeout, never extends it."""
    priority: int | None = None
    """Scheduling priority, Triton's convention: 1 highest, larger numbers lower, 0 or None the default."""


@dataclass(frozen=True)
class ReceivedBody:
    """What a request's body carried, once received: its inputs and what the protocol puts in the body."""

    inputs: ModelInputs
    outputs: Sequence[RequestedOutput] | None = None
    """The outputs the body asks for; None: those of the request, else the model's logits."""
    request_id: str | None = None
    """The protocol's own request ID (V2 ``id``), echoed in the result."""
    parameters: RequestParameters = field(default_factory=RequestParameters)
    client_gone: Callable[[], Awaitable[None]] | None = None
    """Returns when the client leaves before its answer (then nothing more is done for it); None: the front end
    cancels the call itself (gRPC)."""


Admit = Callable[[int | None], "Ticket"]
"""Takes the request's admission, given its declared body size in bytes (None if unknown); see `admission`."""


class RequestBody(Protocol):
    """How a front end receives its request's inputs. `receive` checks what it can before admission (media type,
    declared size), calls `admit` once before it reads any of the body, counts the bytes and the images into the
    returned ticket as they arrive (so that a request the server has no room for is refused mid-upload), and
    returns what the body carried."""

    async def receive(self, admit: Admit) -> ReceivedBody: ...


@dataclass(frozen=True)
class InferenceRequest:
    model: str | None
    """None: the default model."""
    body: RequestBody
    version: str | None = None
    """None: the version that answers by default."""
    outputs: Sequence[RequestedOutput] | None = None
    """What is asked back, when the front end knows it before the body (/v1's `top_k`): checked before admission."""
    protocol: str = "v1"
    """The `protocol` label of the request metrics: v1, v2-http, v2-grpc."""
    received_at: float | None = None
    """When the request arrived (monotonic clock); None: now."""
    client_timeout_s: float | None = None
    """The client's own deadline in seconds from `received_at` (gRPC's), when it has one."""


@dataclass(frozen=True)
class StageTimings:
    """Seconds per stage; for a request of several images, the slowest image's time in each stage."""

    preprocess_s: float
    queue_wait_s: float
    inference_s: float
    total_s: float
    postprocess_s: float = 0.0
    """Ranking and building the outputs (Triton's compute_output)."""


@dataclass(frozen=True)
class ImageInfo:
    """What the client hears about an uploaded image it sent."""

    filename: str | None
    width: int
    """After EXIF orientation, before any resizing."""
    height: int


@dataclass(frozen=True)
class OutputResult:
    name: str
    logits: np.ndarray | None = None
    """(N, classes) float32, when the logits were asked for."""
    ranked: list[list[ScoredLabel]] | None = None
    """Per image, the k most probable labels, highest first, when ranked labels were asked for."""


@dataclass(frozen=True)
class InferenceResult:
    model: str
    version: str
    outputs: list[OutputResult]
    """In the order asked for."""
    timings: StageTimings
    images: list[ImageInfo] | None = None
    """For encoded images, in upload order; None for a tensor batch."""
    request_id: str | None = None
    """The protocol's request ID, as the body gave it."""
