"""Fixtures shared by unit and integration tests: small real ONNX classifiers, real images, Fashion-MNIST."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.modelspec import ModelSpec, to_metadata_props

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

GRAY_SPEC = ModelSpec(
    labels=[f"gray-class-{i}" for i in range(10)],
    color_mode="L",
    resize_size=28,
    crop_size=28,
    mean=[0.286],
    std=[0.353],
    architecture="tiny-conv",
    dataset="none (random weights)",
)
RGB_SPEC = ModelSpec(
    labels=["red", "green", "blue", "cyan", "magenta"],
    color_mode="RGB",
    resize_size=36,
    crop_size=32,
    interpolation="bicubic",
    mean=[0.485, 0.456, 0.406],
    std=[0.229, 0.224, 0.225],
    architecture="tiny-conv",
    dataset="none (random weights)",
)


@pytest.fixture(autouse=True)
def _no_server_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set what they need; a RESNET_SERVE_* variable in the caller's shell must not change them."""
    for name in list(os.environ):
        if name.startswith("RESNET_SERVE_"):
            monkeypatch.delenv(name)


def build_classifier_onnx(
    path: Path, spec: ModelSpec, *, seed: int = 0, embed_metadata: bool = True, fixed_batch: int | None = None
) -> Path:
    """Write a small real classifier (Conv -> Relu -> Flatten -> Gemm, random weights) for `spec` to `path`.

    Every input pixel reaches every logit, so distinct images get distinct scores.
    """
    rng = np.random.default_rng(seed)
    channels, side, classes = spec.channels, spec.crop_size, spec.num_classes
    conv_w = rng.normal(0, 0.5, (4, channels, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, (4,)).astype(np.float32)
    fc_w = rng.normal(0, 0.05, (classes, 4 * side * side)).astype(np.float32)
    fc_b = rng.normal(0, 0.1, (classes,)).astype(np.float32)
    batch: str | int = "batch" if fixed_batch is None else fixed_batch
    graph = helper.make_graph(
        [
            helper.make_node("Conv", [spec.input_name, "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], [spec.output_name], transB=1),
        ],
        "tiny_classifier",
        [helper.make_tensor_value_info(spec.input_name, TensorProto.FLOAT, [batch, channels, side, side])],
        [helper.make_tensor_value_info(spec.output_name, TensorProto.FLOAT, [batch, classes])],
        initializer=[
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(conv_b, "conv_b"),
            numpy_helper.from_array(fc_w, "fc_w"),
            numpy_helper.from_array(fc_b, "fc_b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    if embed_metadata:
        for key, value in to_metadata_props(spec).items():
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def make_classifier() -> Callable[..., Path]:
    """`make_classifier(path, spec, seed=0, embed_metadata=True, fixed_batch=None)` writes a tiny ONNX model."""
    return build_classifier_onnx


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with two tiny models: 'tiny-gray' (1x28x28, 10 classes) and 'tiny-rgb' (3x32x32, 5 classes)."""
    folder = tmp_path_factory.mktemp("tiny-models")
    build_classifier_onnx(folder / "tiny-gray.onnx", GRAY_SPEC, seed=1)
    build_classifier_onnx(folder / "tiny-rgb.onnx", RGB_SPEC, seed=2)
    return folder


def photo(name: str = "astronaut") -> Image.Image:
    """A real photograph from scikit-image (astronaut, chelsea, coffee, ...) as a PIL RGB image."""
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    return {name: photo(name) for name in ("astronaut", "chelsea", "coffee")}


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as stream:
        raw = stream.read()
    magic = int.from_bytes(raw[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte data
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="session")
def fashion_mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST test split: uint8 images (10000, 28, 28) and labels (10000,)."""
    images = _read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    return images, labels


@pytest.fixture(scope="session")
def gray_spec() -> ModelSpec:
    return GRAY_SPEC


@pytest.fixture(scope="session")
def rgb_spec() -> ModelSpec:
    return RGB_SPEC
