"""The model registry: loading a repository into served models, the model contract's stages, states."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from service.config import Settings
from service.contract import ModelContract, ModelState
from service.errors import InvalidImage, ModelNotFound
from service.metrics import ServiceMetrics
from service.preprocess import ImageUpload
from service.registry import ModelRegistry, StartupError
from tests.images import random_png


def loaded(folder, **settings) -> ModelRegistry:
    registry = ModelRegistry(Settings(model_dir=folder, **settings), ServiceMetrics())
    registry.load()
    return registry


def test_each_stage_of_the_contract_is_callable_alone(tiny_model_dir):
    registry = loaded(tiny_model_dir)
    model = registry.get("tiny-gray")
    assert isinstance(model, ModelContract)
    image = model.preprocess(ImageUpload(random_png(3), "a.png"))
    assert image.tensor.shape == (1, 28, 28) and image.tensor.dtype == np.float32
    logits = model.run_batch([image.tensor, image.tensor])
    assert logits.shape == (2, 10)
    ranked = model.postprocess(logits, 3)
    assert [len(row) for row in ranked] == [3, 3]
    assert ranked[0] == ranked[1]
    assert ranked[0][0].label == model.spec.labels[ranked[0][0].index]
    assert ranked[0][0].score >= ranked[0][1].score >= ranked[0][2].score


def test_preprocess_errors_name_the_upload(tiny_model_dir):
    model = loaded(tiny_model_dir).get("tiny-gray")
    with pytest.raises(InvalidImage, match=r"^scan\.png: the file is empty"):
        model.preprocess(ImageUpload(b"", "scan.png"))


def test_default_model_unknown_names_and_states(tiny_model_dir):
    registry = loaded(tiny_model_dir, default_model="tiny-rgb")
    assert registry.get(None).name == "tiny-rgb"
    assert [m.name for m in registry.models] == ["tiny-gray", "tiny-rgb"]
    with pytest.raises(ModelNotFound, match="no model named 'x'; served models: tiny-gray, tiny-rgb"):
        registry.get("x")
    assert all(m.state is ModelState.LOADED for m in registry.models) and not registry.ready

    async def start_and_close() -> list[ModelState]:
        assert await registry.warm_up_and_start()
        states = [m.state for m in registry.models]
        assert registry.ready
        await registry.close()
        return states

    assert asyncio.run(start_and_close()) == [ModelState.READY, ModelState.READY]
    assert not registry.ready


def test_a_models_own_thread_count_opens_its_session_with_it(tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "m.onnx", gray_spec)
    (tmp_path / "m.json").write_text(json.dumps({"serving": {"intra_op_threads": 1, "max_batch_size": 3}}))
    model = loaded(tmp_path, intra_op_threads=2).get("m")
    description = model.describe()
    assert description.intra_op_threads == 1
    assert model.runtime.session_options.intra_op_num_threads == 1
    assert description.serving.max_batch_size == 3
    assert set(description.overridden) == {"intra_op_threads", "max_batch_size"}


def test_a_bad_repository_is_a_startup_error(tmp_path):
    with pytest.raises(StartupError, match="does not exist"):
        loaded(tmp_path / "missing")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    with pytest.raises(StartupError, match=r"broken\.onnx: ONNX Runtime cannot load the model"):
        loaded(tmp_path)


def test_auto_batch_size_is_tuned_while_serving_and_shown(tiny_model_dir):
    registry = loaded(tiny_model_dir, max_batch_size="auto")
    model = registry.get("tiny-gray")
    assert model.describe().batch_size_source == "auto (not measured yet)"

    async def warm() -> None:
        assert await registry.warm_up_and_start()
        assert model.ready and model.batcher.max_batch_size == 1  # serving at once, at batch 1
        for _ in range(6000):
            if model.describe().batch_size_source == "auto":
                break
            await asyncio.sleep(0.01)
        await registry.close()

    asyncio.run(warm())
    description = model.describe()
    curve = description.batch_curve
    assert description.batch_size_source == "auto" and curve is not None
    sizes = [t.batch_size for t in curve.timings]
    assert sizes == [2**i for i in range(len(sizes))]  # 1, 2, 4, ... in doubling order
    assert curve.chosen in sizes and description.serving.max_batch_size == curve.chosen
    assert model.batcher.seconds_per_image is not None  # the wait estimate is seeded from the measurement


def test_a_fixed_batch_size_warms_powers_of_two_and_the_maximum():
    from service.registry import warm_up_sizes

    assert warm_up_sizes(1) == [1]
    assert warm_up_sizes(16) == [1, 2, 4, 8, 16]
    assert warm_up_sizes(24) == [1, 2, 4, 8, 16, 24]
