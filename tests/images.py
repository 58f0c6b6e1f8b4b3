"""Test images encoded in memory."""

import io

import numpy as np
from PIL import Image


def encode_png(pixels: np.ndarray) -> bytes:
    """A uint8 array (H x W grayscale or H x W x 3 RGB) as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def random_png(seed: int, size: int = 28) -> bytes:
    """A distinct random grayscale PNG per seed."""
    return encode_png(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8))
