"""Pure preprocessing: uploaded bytes -> validated image -> float32 CHW tensor, as the model's spec says.

The pipeline reproduces torchvision's reference ``Resize(resize_size, interpolation, antialias=True)`` on a PIL
image, ``CenterCrop(crop_size)``, ``ToTensor()`` and ``Normalize(mean, std)`` with the same PIL calls, so the
tensors agree to float rounding (JPEG draft decoding, when on, is the one deliberate difference).

Nothing here touches global PIL state: the pixel limit is checked against the header before decoding, and PIL's
own decompression-bomb warning/error is caught and reported the same way.
"""

from __future__ import annotations

import io
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.decode_memory import HIGH_DEPTH_MODES, DecodeMemory, decode_cost_bytes
from service.errors import ImageTooLarge, InvalidImage, ServiceError, UnsupportedMediaType
from service.modelspec import ModelSpec

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""PIL format names we decode; others are refused even when PIL could open them (smaller attack surface)."""

SUPPORTED_MEDIA_TYPES = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "image/bmp": "BMP",
    "image/x-bmp": "BMP",
    "image/x-ms-bmp": "BMP",
    "image/tiff": "TIFF",
    "image/tiff-fx": "TIFF",
}
"""Declared content types and the format they promise."""

GENERIC_MEDIA_TYPES = ("", "application/octet-stream", "image/*")
"""Declared types that promise nothing; the bytes decide."""

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

_SUPPORTED_LIST = "JPEG, PNG, WebP, GIF, BMP or TIFF"
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageUpload:
    """One image as received, before decoding."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class DecodeOptions:
    """Limits and speed-ups of decoding, from the settings."""

    max_image_pixels: int = 50_000_000
    jpeg_draft: bool = True
    memory: DecodeMemory | None = field(default=None, compare=False)
    """The process's decode memory budget; None: unbounded (tools and tests)."""


@dataclass(frozen=True)
class PreprocessedImage:
    tensor: np.ndarray
    """float32, shape (channels, crop_size, crop_size), normalised."""
    width: int
    """Width of the uploaded image after EXIF orientation, before any resizing."""
    height: int
    format: str
    """PIL format name, for example 'PNG'."""
    seconds: float
    """Time spent decoding and preprocessing this image (monotonic clock)."""


def check_declared_type(content_type: str | None) -> str | None:
    """The image format a declared Content-Type promises (None: no promise); refuses types we never decode."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in GENERIC_MEDIA_TYPES:
        return None
    if media_type in SUPPORTED_MEDIA_TYPES:
        return SUPPORTED_MEDIA_TYPES[media_type]
    raise UnsupportedMediaType(f"content type {media_type!r} is not supported; send a {_SUPPORTED_LIST} image")


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(int) output (width, height): the shorter side becomes `size`, the longer is truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int]:
    """torchvision's CenterCrop offsets (left, top) for a crop x crop square out of width x height."""
    return round((width - crop) / 2.0), round((height - crop) / 2.0)


def draft_request(width: int, height: int, resize_size: int) -> tuple[int, int] | None:
    """The size to ask JPEG draft mode for so the shorter side stays >= 2 x resize_size; None when not worth it."""
    target_short = 2 * resize_size
    short, long = min(width, height), max(width, height)
    if short < 2 * target_short:
        return None  # draft could not even halve the image
    target_long = -(-long * target_short // short)  # ceiling, in integers
    return (target_short, target_long) if width <= height else (target_long, target_short)


def _open(data: bytes, declared_format: str | None, options: DecodeOptions) -> Image.Image:
    if not data:
        raise InvalidImage("the file is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        if declared_format is not None:
            raise InvalidImage(f"the data is not a valid {declared_format} image (it cannot be decoded)") from None
        raise UnsupportedMediaType(f"not a recognised image; send a {_SUPPORTED_LIST} image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"the image is too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"the image header cannot be read ({exc})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"the image has an empty size {width}x{height}")
    if width * height > options.max_image_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height} pixels, over the limit of {options.max_image_pixels}"
        )
    return image


def _to_model_mode(image: Image.Image, color_mode: str) -> Image.Image:
    """Convert any decoded 8-bit mode (palette, alpha, CMYK, 1-bit, ...) to 'RGB' or 'L' as `Image.convert` does.

    High-depth modes are left as they are: converting a 7000x7000 16-bit image to 8 bits at full size costs far
    more memory than the image itself, and `image_to_tensor` brings them to 8 bits after the resize instead."""
    if image.mode in HIGH_DEPTH_MODES or image.mode == color_mode:
        return image
    return image.convert(color_mode)


def _eight_bit_scale(image: Image.Image) -> float:
    """The factor that brings a high-depth image's pixels to 0..255: 16-bit images (and 32-bit ones that use more
    than 8 bits) are scaled from their full range, as Pillow would otherwise clip them; float ones are not."""
    if image.mode == "F":
        return 1.0
    if image.mode.startswith("I;16"):
        return 255.0 / 65535.0
    _, high = image.getextrema()  # computed by Pillow over the image, without a copy
    assert not isinstance(high, tuple)  # the high-depth modes have a single band
    return 255.0 / 65535.0 if high > 255 else 1.0


def _header_orientation(image: Image.Image) -> int:
    """The EXIF orientation an opened image's header already carries, without decoding anything: Pillow's
    `getexif()` on a PNG whose eXIf chunk is not before its pixels would decode the whole image to look further."""
    if "exif" not in image.info:
        return 1
    return _orientation(image)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:
        return 1


def open_image(
    data: bytes, spec: ModelSpec, options: DecodeOptions, content_type: str | None = None
) -> tuple[Image.Image, str, tuple[int, int]]:
    """Read the header of `data` (nothing is decoded yet) and choose a JPEG draft scale.

    Returns the opened image, its format and its full size before orientation.
    Raises InvalidImage (400), ImageTooLarge (413) or UnsupportedMediaType (415)."""
    declared_format = check_declared_type(content_type)
    image = _open(data, declared_format, options)
    image_format = image.format or "unknown"
    full_size = image.size
    try:
        if image_format in ("JPEG", "MPO") and options.jpeg_draft:  # MPO: a phone camera's multi-picture JPEG
            request = draft_request(*image.size, spec.resize_size)
            if request is not None:
                # A grayscale model skips chroma decoding altogether: libjpeg hands out the stored luma (Y) plane.
                draft_mode = "L" if spec.color_mode == "L" and image.mode == "RGB" else image.mode
                image.draft(draft_mode, request)
    except Exception as exc:
        raise InvalidImage(f"the {image_format} image cannot be decoded ({type(exc).__name__}: {exc})") from None
    return image, image_format, full_size


def decode_opened(
    image: Image.Image, image_format: str, full_size: tuple[int, int], spec: ModelSpec
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode an opened image into the spec's colour mode (high-depth modes stay as they are), EXIF orientation
    applied; returns it and its full oriented size (width, height). Raises InvalidImage or ImageTooLarge."""
    try:
        image.seek(0)  # GIF/TIFF: the first frame
        image.load()
        orientation = _orientation(image)
        if orientation in range(2, 9):
            image = ImageOps.exif_transpose(image)
            if orientation >= 5:  # 5 to 8 swap the axes
                full_size = (full_size[1], full_size[0])
        image = _to_model_mode(image, spec.color_mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"the image is too large to decode safely ({exc})") from None
    except Exception as exc:
        raise InvalidImage(f"the {image_format} image cannot be decoded ({type(exc).__name__}: {exc})") from None
    return image, full_size


def image_to_tensor(image: Image.Image, spec: ModelSpec, max_resized_pixels: int | None = None) -> np.ndarray:
    """Resize the shorter side, centre-crop, scale to [0, 1] and normalise: float32 (C, crop, crop).

    This is torchvision's resize-then-crop, bit for bit. Only when the resized image would exceed
    `max_resized_pixels` (a strip thousands of times wider than tall) does PIL resample just the crop's source box
    instead: same filter, same bounded memory, within a few levels of the exact result. A high-depth image (16-bit,
    32-bit or float grey) is resized in its own mode and brought to 8 bits after the crop, so its memory stays a
    small multiple of the decoded image; the result is within a level of converting first.
    """
    width, height = image.size
    new_width, new_height = resized_size(width, height, spec.resize_size)
    crop = spec.crop_size
    left, top = center_crop_box(new_width, new_height, crop)
    resample = _RESAMPLING[spec.interpolation]
    if max_resized_pixels is None or new_width * new_height <= max_resized_pixels:
        resized = image.resize((new_width, new_height), resample)
        cropped = resized.crop((left, top, left + crop, top + crop))
    else:
        scale_x, scale_y = width / new_width, height / new_height
        box = (left * scale_x, top * scale_y, min(width, (left + crop) * scale_x), min(height, (top + crop) * scale_y))
        cropped = image.resize((crop, crop), resample, box=box)
    pixels = np.asarray(cropped)
    if cropped.mode in HIGH_DEPTH_MODES:
        pixels = np.clip(np.rint(pixels.astype(np.float32) * np.float32(_eight_bit_scale(image))), 0, 255)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    # One float buffer, filled in (C, H, W) order and then scaled and normalised in place: the same float32
    # operations in the same order as torchvision's x / 255, then (x - mean) / std, so the same bits. A new array
    # per step cost four more 600 kB buffers per ResNet-50 image, each freshly mapped and faulted in by the kernel.
    tensor = np.empty((spec.channels, crop, crop), dtype=np.float32)
    np.copyto(tensor, pixels.transpose(2, 0, 1))  # broadcasts a grey high-depth image to an RGB model's channels
    tensor /= np.float32(255.0)
    tensor -= np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    tensor /= np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return tensor


def preprocess_upload(upload: ImageUpload, *, spec: ModelSpec, options: DecodeOptions) -> PreprocessedImage:
    """The model contract's decode stage: one upload -> its tensor; errors name the upload's file."""
    try:
        return preprocess_image(upload.data, spec, options, upload.content_type)
    except ServiceError as exc:
        raise exc.for_file(upload.filename) from None


def preprocess_image(
    data: bytes, spec: ModelSpec, options: DecodeOptions, content_type: str | None = None
) -> PreprocessedImage:
    """Bytes of one upload -> the model's input tensor and what the client should hear about the image."""
    started = time.perf_counter()
    opened, image_format, full_size = open_image(data, spec, options, content_type)
    cost = decode_cost_bytes(
        opened.mode,
        opened.size,
        spec.color_mode,
        _header_orientation(opened),
        resize_size=spec.resize_size,
        crop_size=spec.crop_size,
        max_resized_pixels=options.max_image_pixels,
    )
    failure: ServiceError | None = None
    with options.memory.hold(cost) if options.memory is not None else nullcontext():
        try:
            image, (width, height) = decode_opened(opened, image_format, full_size, spec)
            tensor = image_to_tensor(image, spec, options.max_image_pixels)
            del image
        except (OSError, ValueError, MemoryError) as exc:
            failure = InvalidImage(f"the {image_format} image cannot be resized ({exc})")
        except ServiceError as exc:
            failure = exc
        if failure is not None:
            # The traceback's frames (and the exception a decoder raised first) hold the decoded pixels: drop them
            # before the budget is given back.
            failure.__traceback__ = failure.__context__ = failure.__cause__ = None
        del opened
    if failure is not None:
        raise failure
    return PreprocessedImage(tensor, width, height, image_format, time.perf_counter() - started)
