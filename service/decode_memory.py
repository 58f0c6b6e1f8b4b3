"""Memory bounded in bytes, not only in pixels: what a decode will allocate, and one budget for all decodes.

A 7000x7000 16-bit PNG is 100 kB on the wire and 98 MB decoded; an RGBA PNG converted to RGB needs twice its
pixels. `decode_cost_bytes` estimates a decode's peak from the image header (mode, draft-reduced size, EXIF
rotation) before anything is decoded, and `DecodeMemory` makes every decode thread of the process reserve that much
from one budget first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from service.errors import ImageTooLarge

HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
"""16-bit, 32-bit integer and float pixels: resized as they are, brought to 8 bits only after the resize."""

_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
"""Bytes Pillow keeps per pixel for each mode; every other mode (RGB, RGBA, LA, CMYK, YCbCr, I, F, ...) takes 4."""


_FILTER_ROWS = 6
"""Source rows (at the target scale) a resampling filter reads beyond its box: bicubic's support is 2 on each side."""


def decode_cost_bytes(
    mode: str,
    size: tuple[int, int],
    color_mode: str,
    orientation: int = 1,
    *,
    resize_size: int = 256,
    crop_size: int = 224,
    max_resized_pixels: int = 50_000_000,
) -> int:
    """What decoding an image of `mode` and (draft-reduced) `size` allocates at its peak: the decoded pixels, the
    converted copy in the model's mode, a rotated copy when EXIF asks for one, and the resize (`resize_cost_bytes`,
    from the model's resize and crop sizes)."""
    pixels = size[0] * size[1]
    decoded = _BYTES_PER_PIXEL.get(mode, 4)
    converted = 0 if mode in HIGH_DEPTH_MODES or mode == color_mode else _BYTES_PER_PIXEL.get(color_mode, 4)
    rotated = decoded if orientation in range(2, 9) else 0
    oriented = (size[1], size[0]) if orientation in range(5, 9) else size
    resized_mode = mode if mode in HIGH_DEPTH_MODES else color_mode
    resize = resize_cost_bytes(
        oriented, resize_size, crop_size, max_resized_pixels, _BYTES_PER_PIXEL.get(resized_mode, 4)
    )
    return pixels * (decoded + converted + rotated) + resize


def resize_cost_bytes(
    size: tuple[int, int], resize_size: int, crop_size: int, max_resized_pixels: int, bytes_per_pixel: int
) -> int:
    """What `preprocess.image_to_tensor` allocates for an image of `size` (width, height): Pillow resamples in two
    passes, the horizontal one writing the target width over the source rows the vertical one reads, then the
    resized image, then the float32 crop and its normalised copies. A strip whose full resize would pass
    `max_resized_pixels` is resampled from the crop's box only, so it costs a few rows, not its length (a 1x100000
    PNG is about 100 kB decoded and resized, not hundreds of MiB)."""
    width, height = size
    if width <= height:
        new_width, new_height = resize_size, max(1, resize_size * height // width)
    else:
        new_width, new_height = max(1, resize_size * width // height), resize_size
    if new_width * new_height <= max_resized_pixels:
        out_width, out_height, rows = new_width, new_height, height
    else:
        out_width = out_height = crop_size
        rows = min(height, -(-(crop_size + _FILTER_ROWS) * height // new_height) + 1)
    floats = crop_size * crop_size * 4 * 4 * 3  # float32 pixels, up to 4 channels, three copies
    return (out_width * rows + out_width * out_height) * bytes_per_pixel + floats


class DecodeMemory:
    """Bytes that the decodes in progress may hold together, shared by every decode thread of the process.

    A decode first reserves what it will allocate (estimated from the image header by `decode_cost_bytes`) and
    waits while others hold too much; an image that alone needs more than the limit is refused (413)."""

    def __init__(self, limit_bytes: int, on_change: Callable[[int], None] | None = None) -> None:
        self.limit_bytes = limit_bytes
        self.in_use = 0
        self._changed = threading.Condition()
        self._on_change = on_change

    @contextmanager
    def hold(self, count: int) -> Iterator[None]:
        if count > self.limit_bytes:
            raise ImageTooLarge(
                f"decoding the image would take about {count / 2**20:.0f} MiB of memory, over the server's limit of "
                f"{self.limit_bytes / 2**20:.0f} MiB for decoding; send a smaller image or a JPEG"
            )
        with self._changed:
            while self.in_use + count > self.limit_bytes:
                self._changed.wait()
            self.in_use += count
            if self._on_change:
                self._on_change(self.in_use)
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= count
                self._changed.notify_all()
                if self._on_change:
                    self._on_change(self.in_use)
