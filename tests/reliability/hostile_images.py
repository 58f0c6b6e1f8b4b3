"""Images built to hurt a decoder: small on the wire, huge in memory, lying headers, truncated data.

PNGs are assembled chunk by chunk (a signature, then length, type, data and CRC per chunk), so a header can
declare whatever size it likes; the pixel data of the big ones is all zeros and compresses about a thousand to
one, so a 7000x7000 image costs ~150 KB to send and ~150 MB to decode.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRAY, RGB = 0, 2
"""PNG colour types."""


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(
    width: int, height: int, pixel_data: bytes, *, color_type: int = GRAY, bit_depth: int = 8, before_data: bytes = b""
) -> bytes:
    """A PNG with this header and IDAT payload (zlib stream of filtered rows); `before_data`: extra chunks."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + before_data
        + png_chunk(b"IDAT", pixel_data)
        + png_chunk(b"IEND", b"")
    )


@functools.cache
def zero_rows(width: int, height: int, bytes_per_pixel: int) -> bytes:
    """The compressed pixel data of an all-zero image: each row a filter byte and zeros (run-length deflate: as
    small as the best compression, several times faster to make)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    row = bytes(1 + width * bytes_per_pixel)
    return b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()


def declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height while carrying a few hundred bytes of data."""
    return png(width, height, zlib.compress(bytes(1024)))


def zeros_rgb(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG: ~150 KB on the wire for 7000x7000, 147 MB of pixels once decoded."""
    return png(width, height, zero_rows(width, height, 3), color_type=RGB)


def truncated_rgb(width: int, height: int) -> bytes:
    """A valid header and the first third of the pixel data: the decoder allocates the whole image, then starves."""
    data = zero_rows(width, height, 3)
    return png(width, height, data[: len(data) // 3], color_type=RGB)


def rotated_rgb(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG whose EXIF orientation (6: rotate 90 degrees) asks the decoder for a rotated copy
    as big as the image itself."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif_bytes = exif.tobytes()
    exif_bytes = exif_bytes.removeprefix(b"Exif\x00\x00")
    return png(width, height, zero_rows(width, height, 3), color_type=RGB, before_data=png_chunk(b"eXIf", exif_bytes))


def text_bomb(decompressed_bytes: int = 64 << 20) -> bytes:
    """A small valid 28x28 PNG with a zTXt comment that inflates to `decompressed_bytes` (a zip bomb in metadata)."""
    comment = b"Comment\x00\x00" + zlib.compress(bytes(decompressed_bytes), 9)
    return png(28, 28, zero_rows(28, 28, 1), before_data=png_chunk(b"zTXt", comment))


def gray16(width: int, height: int) -> bytes:
    """A valid 16-bit greyscale PNG with a sparse grid of bright pixels: ~100 KB on the wire at 7000x7000, 98 MB
    of pixels decoded (2 bytes each)."""
    pixels = np.zeros((height, width), dtype=np.uint16)
    pixels[::7, ::3] = 40000
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_rgb(width: int, height: int, seed: int = 0) -> bytes:
    """A valid RGB PNG of random pixels: about width x height x 3 bytes on the wire. Noise does not compress, so
    its rows are stored uncompressed (deflate level 0), which makes the same file as level 1 in a tenth the time."""
    row_bytes = 1 + width * 3
    rows = np.frombuffer(np.random.default_rng(seed).bytes(height * row_bytes), dtype=np.uint8)
    rows = rows.reshape(height, row_bytes).copy()
    rows[:, 0] = 0  # filter type None
    return png(width, height, zlib.compress(rows.tobytes(), 0), color_type=RGB)
