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


def decode_cost_bytes(mode: str, size: tuple[int, int], color_mode: str, orientation: int = 1) -> int:
    """What decoding an image of `mode` and (draft-reduced) `size` allocates at its peak: the decoded pixels, the
    converted copy in the model's mode, a rotated copy when EXIF asks for one, and the first resize pass."""
    pixels = size[0] * size[1]
    decoded = _BYTES_PER_PIXEL.get(mode, 4)
    converted = 0 if mode in HIGH_DEPTH_MODES or mode == color_mode else _BYTES_PER_PIXEL.get(color_mode, 4)
    rotated = decoded if orientation in range(2, 9) else 0
    return pixels * (decoded + converted + rotated) + 4 * max(size) * 1024


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
