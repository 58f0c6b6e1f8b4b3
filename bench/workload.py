"""What the benchmark serves and sends: ONNX models (exported when missing) and real photos at four sizes.

Models live in the cache folder, one sub-folder per model, because the server serves every ``*.onnx`` file of its
``--model-dir``. Exports go through the project's own CLI (``python -m models.export``), so what is measured is
what a user would deploy; torchvision weights are random (speed does not depend on them).
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger("bench")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = REPO_ROOT / "bench" / ".cache"
BUNDLED_MODEL = REPO_ROOT / "service" / "bundled_models" / "fashion-mnist-resnet20.onnx"
BUNDLED_CHECKPOINT = REPO_ROOT / "runs" / "resnet20" / "checkpoint.pt"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

PHOTOS = ("coffee", "chelsea", "astronaut")
"""scikit-image sample photos; each image size is made from each of them, and a load run cycles through them."""
JPEG_QUALITY = 90


@dataclass(frozen=True)
class ImageSize:
    """One kind of upload: its pixel size and encoding."""

    key: str
    width: int
    height: int
    format: str  # PIL format name

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height} {self.format}"

    @property
    def content_type(self) -> str:
        return "image/jpeg" if self.format == "JPEG" else "image/png"

    @property
    def extension(self) -> str:
        return "jpg" if self.format == "JPEG" else "png"


IMAGE_SIZES = (
    ImageSize("small-jpeg", 500, 375, "JPEG"),
    ImageSize("hd-jpeg", 1920, 1080, "JPEG"),
    ImageSize("12mp-jpeg", 4000, 3000, "JPEG"),
    ImageSize("1mp-png", 1000, 1000, "PNG"),
)
SIZES_BY_KEY = {size.key: size for size in IMAGE_SIZES}


@dataclass(frozen=True)
class EncodedImage:
    name: str
    data: bytes
    size: ImageSize


@dataclass(frozen=True)
class ModelCase:
    """A model the benchmark serves: a name (its file stem, hence its URL), a folder holding only it, a label."""

    key: str
    name: str
    title: str
    precision: str
    folder: Path

    @property
    def path(self) -> Path:
        return self.folder / f"{self.name}.onnx"


MODEL_TITLES = {
    "resnet50": "ResNet-50 fp32",
    "resnet50-int8": "ResNet-50 INT8",
    "resnet18": "ResNet-18 fp32",
    "bundled": "Fashion-MNIST ResNet-20 fp32 (bundled)",
    "bundled-int8": "Fashion-MNIST ResNet-20 INT8",
}
MODEL_NAMES = {
    "resnet50": "resnet50",
    "resnet50-int8": "resnet50-int8",
    "resnet18": "resnet18",
    "bundled": "fashion-mnist-resnet20",
    "bundled-int8": "fashion-mnist-resnet20-int8",
}


BENCH_MODELS = ("bundled", "resnet18", "resnet50", "resnet50-int8")
"""The models the per-model targets are judged on (concurrency 1 against the naive server, auto batch sizes)."""


def model_case(key: str, cache_dir: Path) -> ModelCase:
    name = MODEL_NAMES[key]
    return ModelCase(
        key, name, MODEL_TITLES[key], "int8" if key.endswith("int8") else "fp32", cache_dir / "models" / name
    )


def int8_key(key: str) -> str | None:
    """The INT8 counterpart of a model key, if the benchmark knows how to make one."""
    candidate = f"{key}-int8"
    return candidate if candidate in MODEL_NAMES else None


class WorkloadError(RuntimeError):
    """A model or image the run needs cannot be made; the message says why."""


def _run_export(args: list[str]) -> None:
    command = [sys.executable, "-m", "models.export", *args]
    logger.info("exporting: %s", " ".join(command[1:]))
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if completed.returncode != 0:
        raise WorkloadError(
            f"`{' '.join(command[1:])}` failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
        )
    logger.info("export done:\n%s", completed.stdout.strip())


def _quantize_bundled_without_checkpoint(target: Path) -> None:
    """INT8 from the bundled ONNX file itself, with the export CLI's quantizer and calibration recipe.

    Used only when the training checkpoint is absent (a fresh clone): the CLI needs the checkpoint to re-export.
    """
    import onnxruntime as ort

    from models import data
    from models.export import quantize_int8, write_metadata
    from service.modelspec import build_spec, fields_from_metadata_props

    session = ort.InferenceSession(str(BUNDLED_MODEL), providers=["CPUExecutionProvider"])
    spec = build_spec(
        fields_from_metadata_props(session.get_modelmeta().custom_metadata_map), source=BUNDLED_MODEL.name
    )
    train = data.load_split("train", FASHION_MNIST_DIR)
    rng = np.random.default_rng(0)
    chosen = train.images[rng.choice(len(train), size=512, replace=False)]
    calibration = ((chosen.astype(np.float32) / 255.0 - spec.mean[0]) / spec.std[0]).reshape(-1, 1, 28, 28)
    quantize_int8(BUNDLED_MODEL, target, calibration.astype(np.float32))
    write_metadata(target, spec.model_copy(update={"precision": "int8", "test_accuracy": None}))


def ensure_model(case: ModelCase) -> ModelCase:
    """Make `case.path` exist: link the bundled model, or export with ``python -m models.export``."""
    if case.path.is_file():
        return case
    case.folder.mkdir(parents=True, exist_ok=True)
    partial = case.folder / f".{case.name}.partial.onnx"
    if case.key == "bundled":
        if not BUNDLED_MODEL.is_file():
            raise WorkloadError(f"the bundled model {BUNDLED_MODEL} is missing")
        case.path.symlink_to(BUNDLED_MODEL)
        return case
    if case.key == "bundled-int8":
        if BUNDLED_CHECKPOINT.is_file():
            _run_export(["--checkpoint", str(BUNDLED_CHECKPOINT), "--quantize", "int8", "--output", str(partial)])
        else:
            logger.info("no %s: quantizing the bundled ONNX file directly", BUNDLED_CHECKPOINT)
            _quantize_bundled_without_checkpoint(partial)
    else:
        arch = case.key.removesuffix("-int8")
        extra = ["--quantize", "int8"] if case.precision == "int8" else []
        _run_export(["--torchvision", arch, *extra, "--output", str(partial)])
    partial.replace(case.path)
    return case


def _photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def encode_image(photo: Image.Image, size: ImageSize) -> bytes:
    """The photo cropped to the size's aspect ratio, resized (up or down) and encoded."""
    fitted = ImageOps.fit(photo, (size.width, size.height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if size.format == "JPEG":
        fitted.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        fitted.save(buffer, format="PNG")
    return buffer.getvalue()


def ensure_images(
    cache_dir: Path, sizes: tuple[ImageSize, ...] = IMAGE_SIZES, photos: tuple[str, ...] = PHOTOS
) -> dict[str, list[EncodedImage]]:
    """The test images per size key, encoded once and cached as files."""
    folder = cache_dir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    images: dict[str, list[EncodedImage]] = {}
    for size in sizes:
        encoded = []
        for photo_name in photos:
            path = folder / f"{photo_name}-{size.width}x{size.height}.{size.extension}"
            if not path.is_file():
                partial = path.with_name("." + path.name + ".partial")
                partial.write_bytes(encode_image(_photo(photo_name), size))
                partial.replace(path)
            encoded.append(EncodedImage(path.name, path.read_bytes(), size))
        images[size.key] = encoded
    return images


def fashion_mnist_test_set() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 Fashion-MNIST test images (uint8, N x 28 x 28) and labels, from the Debian package's IDX files."""
    from models.data import load_split

    split = load_split("test", FASHION_MNIST_DIR)
    return np.asarray(split.images).reshape(-1, 28, 28), np.asarray(split.labels)
