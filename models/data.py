"""Fashion-MNIST from its gzipped IDX files, and the batch augmentation used for training.

The data comes from the Debian package `dataset-fashion-mnist` (nothing is downloaded at run time). Images stay
uint8 until a batch is drawn, so the whole training set fits on any device.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_DATA_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Per-pixel statistics of the 60,000 training images scaled to [0, 1] (computed by `compute_mean_std`).
MEAN = 0.2860
STD = 0.3530

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_HOW_TO_GET = "install it with `apt-get install dataset-fashion-mnist` or pass --data-dir / set FASHION_MNIST_DIR"
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DatasetError(RuntimeError):
    """The data set is missing or unreadable; the message says how to get it."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped when its name ends in .gz) into an array of its declared type and shape."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} not found; {_HOW_TO_GET}")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path} is corrupt ({exc}); reinstall it: {_HOW_TO_GET}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number); reinstall it: {_HOW_TO_GET}")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated (header); reinstall it: {_HOW_TO_GET}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path} is truncated or corrupt: {len(raw) - header} data bytes for shape {shape}, expected {expected}; "
            f"reinstall it: {_HOW_TO_GET}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, [N, 28, 28]
    labels: np.ndarray  # int64, [N]

    def __len__(self) -> int:
        return len(self.labels)


def load_split(split: str, data_dir: str | Path | None = None) -> Split:
    """The 'train' (60,000) or 'test' (10,000) split."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    image_file, label_file = _FILES[split]
    images = read_idx(folder / image_file)
    labels = read_idx(folder / label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
    return Split(images=images, labels=labels.astype(np.int64))


def compute_mean_std(split: Split) -> tuple[float, float]:
    scaled = split.images.astype(np.float64) / 255.0
    return float(scaled.mean()), float(scaled.std())


def normalise(images_uint8: torch.Tensor, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """uint8 [N, H, W] -> float32 [N, 1, H, W], as ToTensor followed by Normalize."""
    return ((images_uint8.float() / 255.0) - mean).div_(std).unsqueeze(1)


def augment(
    batch: torch.Tensor,
    generator: torch.Generator,
    *,
    fill: float,
    padding: int = 2,
    flip: bool = True,
    erase_probability: float = 0.0,
) -> torch.Tensor:
    """Random crop with padding, random horizontal flip and optional random erasing, on a normalised [N, C, H, W]
    batch, drawn from `generator` so training is reproducible for a seed. `fill` is the normalised value of a black
    pixel, so padding looks as it would had it been added before Normalize."""
    n, _, h, w = batch.shape
    device = batch.device
    draw = lambda *size, high: torch.randint(0, high, size, generator=generator, device="cpu").to(device)  # noqa: E731
    padded = F.pad(batch, (padding, padding, padding, padding), value=fill)
    top, left = draw(n, high=2 * padding + 1), draw(n, high=2 * padding + 1)
    rows = (top[:, None] + torch.arange(h, device=device))[:, :, None]
    cols = (left[:, None] + torch.arange(w, device=device))[:, None, :]
    index = torch.arange(n, device=device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)
    # Draw the flips even when unused so a seed gives the same crops with and without --no-flip.
    flips = draw(n, high=2).bool()[:, None, None, None]
    out = torch.where(flips, cropped.flip(-1), cropped) if flip else cropped
    if erase_probability > 0:
        out = _random_erase(out, generator, erase_probability, value=0.0)
    return out.contiguous()


def _random_erase(batch: torch.Tensor, generator: torch.Generator, probability: float, *, value: float) -> torch.Tensor:
    """Zhong et al.'s random erasing: a rectangle of 2%-33% of the area, aspect 0.3-3.3, filled with `value`
    (0.0 is the data set's mean after normalisation)."""
    n, _, h, w = batch.shape
    device = batch.device
    u = torch.rand((n, 4), generator=generator).to(device)
    area = (0.02 + u[:, 0] * (0.33 - 0.02)) * h * w
    log_ratio = np.log(0.3) + u[:, 1] * (np.log(1 / 0.3) - np.log(0.3))
    ratio = torch.exp(log_ratio)
    eh = torch.sqrt(area * ratio).round().clamp(1, h)
    ew = torch.sqrt(area / ratio).round().clamp(1, w)
    top = (u[:, 2] * (h - eh + 1)).floor()
    left = (u[:, 3] * (w - ew + 1)).floor()
    apply = (torch.rand(n, generator=generator) < probability).to(device)
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    inside = (
        (ys >= top[:, None, None])
        & (ys < (top + eh)[:, None, None])
        & (xs >= left[:, None, None])
        & (xs < (left + ew)[:, None, None])
    )
    mask = (inside & apply[:, None, None])[:, None]
    return torch.where(mask, torch.full_like(batch, value), batch)
