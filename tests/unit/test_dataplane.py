"""The data plane with the real DynamicBatcher, Ticket and decode pool, and only ONNX Runtime replaced: a toy model
whose "images" are bytes naming their class, held at will by a gate, so that ordering, errors per image,
deadlines, cancellation, k and version checks are exercised deterministically (no test depends on speed)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
import pytest

from service.batching import DynamicBatcher, ImageReservation
from service.config import LimitsSettings, ServingSettings
from service.contract import ModelDescription, ModelState, ServableModel
from service.dataplane import DataPlane
from service.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    InvalidImage,
    InvalidParameter,
    InvalidTensor,
    ModelNotFound,
    NotReady,
    Overloaded,
    TooManyFiles,
)
from service.inference import (
    LOGITS,
    Admit,
    EncodedImages,
    InferenceRequest,
    ModelInputs,
    ReceivedBody,
    RequestedOutput,
    RequestParameters,
    TensorBatch,
)
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.modelspec import ModelSpec
from service.postprocess import ScoredLabel, rank
from service.preprocess import ImageUpload, PreprocessedImage

CLASSES = 4
SPEC = ModelSpec(
    labels=[f"class-{i}" for i in range(CLASSES)], color_mode="L", resize_size=2, crop_size=2, mean=[0.0], std=[1.0]
)
LIMITS = LimitsSettings(max_files_per_request=4, max_upload_bytes=4096, max_inflight_bytes=8192)


class ToyModel:
    """A served model whose image b"class:2" decodes to a tensor of 2s and is classified as class 2 (logit 10)."""

    def __init__(self, name: str = "toy", *, max_batch_size: int = 4, max_queue_size: int = 16) -> None:
        self.holds = 0
        """Requests resolved to this model that have not ended."""
        self.name = name
        self.version = "1"
        self.spec = SPEC
        self.state = ModelState.READY
        self.error: str | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        """Set when a batch reaches the model (before the gate)."""
        self.ran: list[list[float]] = []
        self.decoded_in: list[str] = []
        """The thread each image was decoded in."""
        """The class of every image run, batch by batch."""
        self.batcher: DynamicBatcher[np.ndarray, np.ndarray] = DynamicBatcher(
            self.run_batch, name=name, max_batch_size=max_batch_size, max_queue_size=max_queue_size
        )

    def preprocess(self, upload: ImageUpload) -> PreprocessedImage:
        self.decoded_in.append(threading.current_thread().name)
        if not upload.data.startswith(b"class:"):
            raise InvalidImage("not a toy image").for_file(upload.filename)
        value = float(upload.data.removeprefix(b"class:"))
        return PreprocessedImage(
            np.full(SPEC.input_shape, value, np.float32), width=len(upload.data), height=1, format="TOY", seconds=0.0
        )

    def run_batch(self, tensors: Sequence[np.ndarray]) -> np.ndarray:
        self.entered.set()
        self.gate.wait()
        classes = [float(tensor.flat[0]) for tensor in tensors]
        self.ran.append(classes)
        logits = np.zeros((len(tensors), CLASSES), np.float32)
        logits[np.arange(len(tensors)), np.array(classes, dtype=int) % CLASSES] = 10.0
        return logits

    def postprocess(self, logits: np.ndarray, k: int) -> list[list[ScoredLabel]]:
        return rank(logits, k, labels=SPEC.labels)

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY and self.batcher.running

    def reserve(self, count: int) -> ImageReservation[np.ndarray, np.ndarray]:
        return self.batcher.reserve(count)

    def request_started(self) -> None:
        self.holds += 1

    def request_finished(self) -> None:
        self.holds -= 1

    def describe(self) -> ModelDescription:
        return ModelDescription(
            name=self.name,
            version=self.version,
            versions=(self.version,),
            state=self.state,
            error=self.error,
            spec=self.spec,
            serving=ServingSettings(self.batcher.max_batch_size, 0.0, 16, None, 1),
            overridden=(),
            execution_provider="toy",
            intra_op_threads=1,
            queue_depth=self.batcher.queue_depth,
            seconds_per_image=None,
            batch_size_source="flag",
            batch_curve=None,
        )


class ToySource:
    def __init__(self, *models: ToyModel) -> None:
        self._models = {model.name: model for model in models}

    @property
    def ready(self) -> bool:
        return all(model.ready for model in self._models.values())

    @property
    def default_model(self) -> str | None:
        return min(self._models)

    def get(self, name: str | None, version: str | None = None) -> ServableModel:
        model = self._models.get(name or min(self._models))
        if model is None:
            raise ModelNotFound(f"no model named {name!r}")
        if version is not None and version != model.version:
            raise ModelNotFound(f"model {model.name!r} has no version {version!r}")
        return model

    def all(self) -> list[ServableModel]:
        return [self._models[name] for name in sorted(self._models)]


class Body:
    """A front end's body reader: admits with its declared size, counts its images, returns its inputs."""

    def __init__(
        self,
        inputs: ModelInputs,
        *,
        declared: int | None = 100,
        outputs=None,
        parameters: RequestParameters | None = None,
        client_gone: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.inputs, self.declared, self.outputs = inputs, declared, outputs
        self.parameters = parameters or RequestParameters()
        self.client_gone = client_gone
        self.received = False

    async def receive(self, admit: Admit) -> ReceivedBody:
        self.received = True
        ticket = admit(self.declared)
        ticket.count_images(len(self.inputs))
        return ReceivedBody(
            self.inputs,
            outputs=self.outputs,
            request_id="r-1",
            parameters=self.parameters,
            client_gone=self.client_gone,
        )


def images(*classes: int | str) -> EncodedImages:
    return EncodedImages(
        [
            ImageUpload(f"class:{c}".encode() if isinstance(c, int) else c.encode(), f"{i}.toy")
            for i, c in enumerate(classes)
        ]
    )


def ranked(k: int | None = None) -> list[RequestedOutput]:
    return [RequestedOutput(ranked=True, k=k, asked_as="top_k")]


async def started(*models: ToyModel) -> DataPlane:
    lifecycle = Lifecycle()
    for model in models:
        model.batcher.start()
    lifecycle.mark_ready()
    return DataPlane(ToySource(*models), lifecycle=lifecycle, metrics=ServiceMetrics(), limits=LIMITS, decode_threads=2)


async def hold_first_batch(dataplane: DataPlane, model: ToyModel) -> asyncio.Future:
    """A request of one class-0 image, running in the model and held there until the test opens the gate."""
    model.gate.clear()
    first = asyncio.ensure_future(dataplane.infer(InferenceRequest("toy", Body(images(0)), outputs=ranked())))
    assert await asyncio.to_thread(model.entered.wait, 30)
    return first


async def stop(dataplane: DataPlane, *models: ToyModel) -> None:
    for model in models:
        model.gate.set()
        await model.batcher.close()
    dataplane.close()


def nothing_held(dataplane: DataPlane, model: ToyModel) -> bool:
    return model.batcher.reserved == 0 and dataplane.upload_bytes.in_use == 0


def top_classes(result) -> list[int]:
    (output,) = result.outputs
    return [row[0].index for row in output.ranked]


def test_results_come_back_in_upload_order_and_requests_never_mix():
    async def scenario() -> None:
        model = ToyModel()
        dataplane = await started(model)
        requests = [[1, 2, 3], [3, 0], [2], [0, 1, 2, 3]]
        results = await asyncio.gather(
            *(
                dataplane.infer(InferenceRequest("toy", Body(images(*classes)), outputs=ranked(1)))
                for classes in requests
            )
        )
        assert [top_classes(result) for result in results] == requests
        assert results[0].images is not None and [image.filename for image in results[0].images] == [
            "0.toy",
            "1.toy",
            "2.toy",
        ]
        assert results[0].request_id == "r-1" and (results[0].model, results[0].version) == ("toy", "1")
        assert nothing_held(dataplane, model)
        await stop(dataplane, model)

    asyncio.run(scenario())


def test_a_bad_image_fails_its_request_naming_the_file_and_no_other():
    async def scenario() -> None:
        model = ToyModel()
        dataplane = await started(model)
        bad, good = await asyncio.gather(
            dataplane.infer(InferenceRequest("toy", Body(images(1, "garbage")), outputs=ranked())),
            dataplane.infer(InferenceRequest("toy", Body(images(2)), outputs=ranked())),
            return_exceptions=True,
        )
        assert isinstance(bad, InvalidImage) and bad.filename == "1.toy" and "not a toy image" in bad.message
        assert top_classes(good) == [2]
        assert nothing_held(dataplane, model)
        await stop(dataplane, model)

    asyncio.run(scenario())


def test_k_defaults_to_five_or_the_classes_and_is_checked_before_admission():
    async def scenario() -> None:
        model = ToyModel()
        dataplane = await started(model)
        result = await dataplane.infer(InferenceRequest("toy", Body(images(1)), outputs=ranked()))
        assert len(result.outputs[0].ranked[0]) == CLASSES  # min(5, 4 classes)
        for k in (0, CLASSES + 1):
            body = Body(images(1))
            with pytest.raises(InvalidParameter, match=rf"top_k must be between 1 and {CLASSES} .* got {k}"):
                await dataplane.infer(InferenceRequest("toy", body, outputs=ranked(k)))
            assert not body.received  # refused before its body was read
        # k asked in the body (V2's classification parameter) is checked once it is known
        with pytest.raises(InvalidParameter, match="classification must be between"):
            await dataplane.infer(
                InferenceRequest(
                    "toy",
                    Body(images(1), outputs=[RequestedOutput("logits", ranked=True, k=9, asked_as="classification")]),
                )
            )
        assert nothing_held(dataplane, model)
        await stop(dataplane, model)

    asyncio.run(scenario())


def test_logits_and_ranked_labels_in_one_request():
    async def scenario() -> None:
        model = ToyModel()
        dataplane = await started(model)
        result = await dataplane.infer(
            InferenceRequest("toy", Body(images(3, 1), outputs=[LOGITS, RequestedOutput("logits", ranked=True, k=2)]))
        )
        logits, labels = result.outputs
        assert logits.name == labels.name == "logits"
        assert logits.logits is not None and logits.logits.shape == (2, CLASSES)
        assert labels.ranked is not None and labels.ranked[0][0].index == 3
        await stop(dataplane, model)

    asyncio.run(scenario())


def test_versions_models_names_and_shapes_are_checked():
    async def scenario() -> None:
        model = ToyModel()
        dataplane = await started(model)
        assert top_classes(
            await dataplane.infer(InferenceRequest(None, Body(images(2)), version="1", outputs=ranked()))
        ) == [2]
        cases = [
            (InferenceRequest("toy", Body(images(1)), version="2"), ModelNotFound, "no version '2'"),
            (InferenceRequest("missing", Body(images(1))), ModelNotFound, "no model named 'missing'"),
            (
                InferenceRequest("toy", Body(EncodedImages([ImageUpload(b"class:1")], "pixels"))),
                InvalidTensor,
                "unknown input 'pixels'",
            ),
            (
                InferenceRequest("toy", Body(images(1), outputs=[RequestedOutput("probabilities")])),
                InvalidTensor,
                "unknown output 'probabilities'",
            ),
            (
                InferenceRequest("toy", Body(TensorBatch(np.zeros((1, 3, 2, 2), np.float32)))),
                InvalidTensor,
                r"must have shape \[N, 1, 2, 2\]",
            ),
            (InferenceRequest("toy", Body(EncodedImages([]))), InvalidParameter, "carries no image"),
            (InferenceRequest("toy", Body(images(0, 1, 2, 3, 0))), TooManyFiles, "the limit is 4"),
        ]
        for request, error, message in cases:
            with pytest.raises(error, match=message):
                await dataplane.infer(request)
            assert nothing_held(dataplane, model)
        batch = np.full((2, *SPEC.input_shape), 1.0, np.float32)
        result = await dataplane.infer(InferenceRequest("toy", Body(TensorBatch(batch, "input"))))
        assert result.images is None and np.argmax(result.outputs[0].logits, axis=1).tolist() == [1, 1]
        await stop(dataplane, model)

    asyncio.run(scenario())


def test_a_deadline_that_passes_while_queued_drops_the_image_unrun():
    async def scenario() -> None:
        model = ToyModel(max_batch_size=1)
        dataplane = await started(model)
        first = await hold_first_batch(dataplane, model)
        # The second request's client gives it 50 ms (gRPC's deadline); the gate holds the model far longer.
        with pytest.raises(DeadlineExceeded, match=r"client's deadline of 0\.05 s; its queued images were dropped"):
            await dataplane.infer(InferenceRequest("toy", Body(images(3)), outputs=ranked(), client_timeout_s=0.05))
        with pytest.raises(DeadlineExceeded, match=r"request's timeout parameter of 0\.05 s"):
            await dataplane.infer(
                InferenceRequest("toy", Body(images(3), parameters=RequestParameters(timeout_s=0.05)), outputs=ranked())
            )
        model.gate.set()
        assert top_classes(await first) == [0]
        await asyncio.sleep(0)
        assert [classes for batch in model.ran for classes in batch] == [0.0]  # the class-3 images never ran
        assert nothing_held(dataplane, model)
        await stop(dataplane, model)

    asyncio.run(scenario())


def test_a_client_that_leaves_has_its_queued_images_dropped():
    async def scenario() -> None:
        model = ToyModel(max_batch_size=1)
        dataplane = await started(model)
        first = await hold_first_batch(dataplane, model)
        gone = asyncio.Event()

        async def client_gone() -> None:
            await gone.wait()

        second = asyncio.ensure_future(
            dataplane.infer(InferenceRequest("toy", Body(images(2, 2), client_gone=client_gone), outputs=ranked()))
        )
        while model.batcher.queue_depth < 2:
            await asyncio.sleep(0.001)
        gone.set()
        with pytest.raises(ClientDisconnected):
            await second
        model.gate.set()
        await first
        assert [classes for batch in model.ran for classes in batch] == [0.0]
        assert nothing_held(dataplane, model)
        await stop(dataplane, model)

    asyncio.run(scenario())


def test_a_cancelled_call_releases_everything():
    """gRPC cancels the handler of a call whose client left: nothing stays reserved and nothing runs."""

    async def scenario() -> None:
        model = ToyModel(max_batch_size=1)
        dataplane = await started(model)
        first = await hold_first_batch(dataplane, model)
        call = asyncio.ensure_future(dataplane.infer(InferenceRequest("toy", Body(images(1)), outputs=ranked())))
        while model.batcher.queue_depth < 1:
            await asyncio.sleep(0.001)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        model.gate.set()
        await first
        assert [classes for batch in model.ran for classes in batch] == [0.0]
        assert nothing_held(dataplane, model)
        await stop(dataplane, model)

    asyncio.run(scenario())


def test_admission_refuses_when_there_is_no_room_and_holds_nothing_after():
    async def scenario() -> None:
        model = ToyModel(max_batch_size=1, max_queue_size=4)
        dataplane = await started(model)
        with pytest.raises(Overloaded, match="bytes of uploads in flight"):
            await dataplane.infer(
                InferenceRequest("toy", Body(images(1), declared=LIMITS.max_inflight_bytes + 1), outputs=ranked())
            )
        first = await hold_first_batch(dataplane, model)
        running = [
            first,
            *(
                asyncio.ensure_future(dataplane.infer(InferenceRequest("toy", Body(images(1, 1)), outputs=ranked())))
                for _ in range(2)
            ),
        ]
        while model.batcher.queue_depth < 4:
            await asyncio.sleep(0.001)
        with pytest.raises(Overloaded):
            await dataplane.infer(InferenceRequest("toy", Body(images(1, 1)), outputs=ranked()))
        model.gate.set()
        await asyncio.gather(*running)
        assert nothing_held(dataplane, model)
        await stop(dataplane, model)

    asyncio.run(scenario())


def test_not_ready_models_and_servers_are_refused_and_described():
    async def scenario() -> None:
        warming, ready = ToyModel("a-warming"), ToyModel("b-ready")
        dataplane = await started(warming, ready)
        warming.state = ModelState.WARMING_UP
        with pytest.raises(NotReady, match="model a-warming is not ready"):
            await dataplane.infer(InferenceRequest("a-warming", Body(images(1))))
        assert [(m.name, m.state, m.ready) for m in dataplane.models()] == [
            ("a-warming", ModelState.WARMING_UP, False),
            ("b-ready", ModelState.READY, True),
        ]
        assert not dataplane.model_ready("a-warming") and dataplane.model_ready("b-ready")
        assert dataplane.default_model == "a-warming" and not dataplane.ready
        with pytest.raises(ModelNotFound):
            dataplane.model_ready("b-ready", "7")
        await stop(dataplane, warming, ready)

    asyncio.run(scenario())


def test_a_body_must_take_the_admission():
    class Unadmitted:
        async def receive(self, admit: Admit) -> ReceivedBody:
            return ReceivedBody(images(1))

    async def scenario() -> None:
        model = ToyModel()
        dataplane = await started(model)
        with pytest.raises(RuntimeError, match="without admission"):
            await dataplane.infer(InferenceRequest("toy", Unadmitted()))
        await stop(dataplane, model)

    asyncio.run(scenario())


def test_a_lone_request_on_an_idle_model_is_decoded_and_inferred_in_one_hand_off():
    async def scenario() -> None:
        model = ToyModel()
        dataplane = await started(model)
        result = await dataplane.infer(InferenceRequest("toy", Body(images(2)), outputs=ranked()))
        assert top_classes(result) == [2] and result.timings.queue_wait_s == 0.0
        assert model.decoded_in == ["batcher-toy_0"]  # the model's own thread: no decode pool, no queue
        with pytest.raises(InvalidImage, match=r"0\.toy: not a toy image"):
            await dataplane.infer(InferenceRequest("toy", Body(images("garbage")), outputs=ranked()))
        two = await dataplane.infer(InferenceRequest("toy", Body(images(1, 3)), outputs=ranked()))
        assert top_classes(two) == [1, 3] and all(name.startswith("decode") for name in model.decoded_in[2:])
        assert nothing_held(dataplane, model)
        await stop(dataplane, model)

    asyncio.run(scenario())


def test_batching_takes_over_as_soon_as_work_overlaps():
    async def scenario() -> None:
        model = ToyModel(max_batch_size=4)
        dataplane = await started(model)
        first = await hold_first_batch(dataplane, model)  # a lone request, running alone and held
        waiting = [
            asyncio.ensure_future(dataplane.infer(InferenceRequest("toy", Body(images(c)), outputs=ranked())))
            for c in (1, 2, 3)
        ]
        while model.batcher.queue_depth < 3:
            await asyncio.sleep(0.001)
        model.gate.set()
        assert top_classes(await first) == [0]
        assert [top_classes(result) for result in await asyncio.gather(*waiting)] == [[1], [2], [3]]
        assert model.ran == [[0.0], [1.0, 2.0, 3.0]]  # the three that arrived meanwhile ran as one batch
        assert nothing_held(dataplane, model)
        await stop(dataplane, model)

    asyncio.run(scenario())
