"""Preprocessing against torchvision's reference pipeline, every supported format and mode, and hostile input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from service.modelspec import ModelSpec
from service.preprocess import (
    DecodeOptions,
    check_declared_type,
    draft_request,
    preprocess_image,
)

NO_DRAFT = DecodeOptions(max_image_pixels=50_000_000, jpeg_draft=False)
ONE_LEVEL = 1 / 255 + 1e-6  # one 8-bit level, plus float32 rounding


def spec(color_mode: str = "RGB", resize: int = 256, crop: int = 224, interpolation: str = "bilinear") -> ModelSpec:
    channels = 3 if color_mode == "RGB" else 1
    return ModelSpec(
        labels=["a", "b"],
        color_mode=color_mode,
        resize_size=resize,
        crop_size=crop,
        interpolation=interpolation,
        mean=[0.485, 0.456, 0.406][:channels],
        std=[0.229, 0.224, 0.225][:channels],
    )


def torchvision_reference(image: Image.Image, model: ModelSpec) -> np.ndarray:
    """torchvision's own pipeline, the one the models are trained and evaluated with."""
    modes = {
        "nearest": transforms.InterpolationMode.NEAREST,
        "bilinear": transforms.InterpolationMode.BILINEAR,
        "bicubic": transforms.InterpolationMode.BICUBIC,
    }
    pipeline = transforms.Compose(
        [
            transforms.Resize(model.resize_size, interpolation=modes[model.interpolation], antialias=True),
            transforms.CenterCrop(model.crop_size),
            transforms.ToTensor(),
            transforms.Normalize(model.mean, model.std),
        ]
    )
    with torch.no_grad():
        return pipeline(image.convert(model.color_mode)).numpy()


def max_pixel_diff(tensor: np.ndarray, reference: np.ndarray, model: ModelSpec) -> float:
    """Largest difference in [0, 1] pixel units (undoing the normalisation's division by std)."""
    std = np.asarray(model.std, dtype=np.float64)[:, None, None]
    return float(np.max(np.abs(tensor.astype(np.float64) - reference.astype(np.float64)) * std))


def encode(image: Image.Image, format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


SPECS = [
    pytest.param(spec("RGB", 256, 224, "bilinear"), id="rgb-256-224-bilinear"),
    pytest.param(spec("RGB", 36, 32, "bicubic"), id="rgb-36-32-bicubic"),
    pytest.param(spec("RGB", 101, 99, "nearest"), id="rgb-101-99-nearest"),
    pytest.param(spec("L", 28, 28, "bilinear"), id="gray-28-28-bilinear"),
    pytest.param(spec("L", 333, 250, "bicubic"), id="gray-333-250-bicubic"),
]


@pytest.mark.parametrize("model", SPECS)
@pytest.mark.parametrize("photo_name", ["astronaut", "chelsea", "coffee-portrait"])
@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_matches_torchvision_within_one_level(photos, model, photo_name, format):
    image = photos[photo_name.split("-")[0]]
    if photo_name.endswith("portrait"):
        image = image.transpose(Image.Transpose.ROTATE_90)
    data = encode(image, format, quality=90) if format == "JPEG" else encode(image, format)

    result = preprocess_image(data, model, NO_DRAFT, f"image/{format.lower()}")

    reference = torchvision_reference(Image.open(io.BytesIO(data)), model)
    assert result.tensor.shape == (model.channels, model.crop_size, model.crop_size)
    assert result.tensor.dtype == np.float32
    assert max_pixel_diff(result.tensor, reference, model) <= ONE_LEVEL
    assert (result.width, result.height) == image.size
    assert result.format == format


def test_wide_strip_matches_torchvision(photos):
    model = spec("RGB", 64, 56, "bilinear")
    strip = photos["coffee"].resize((3000, 12))
    result = preprocess_image(encode(strip, "PNG"), model, NO_DRAFT)
    assert max_pixel_diff(result.tensor, torchvision_reference(strip, model), model) <= ONE_LEVEL


def test_strip_whose_resize_would_be_huge_is_resampled_in_bounded_memory(photos):
    model = spec("RGB", 64, 56, "bilinear")
    strip = photos["coffee"].resize((4000, 8))  # resized: 32000 x 64, over the 1 Mpx budget below
    options = DecodeOptions(max_image_pixels=1_000_000, jpeg_draft=False)
    result = preprocess_image(encode(strip, "PNG"), model, options)
    reference = torchvision_reference(strip, model)
    assert max_pixel_diff(result.tensor, reference, model) <= 4 / 255


def test_tiny_image_is_upscaled_like_torchvision():
    model = spec("RGB", 32, 32, "bicubic")
    tiny = Image.fromarray(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 14, "RGB")
    result = preprocess_image(encode(tiny, "PNG"), model, NO_DRAFT)
    assert max_pixel_diff(result.tensor, torchvision_reference(tiny, model), model) <= ONE_LEVEL


@pytest.mark.parametrize(
    "format,params",
    [
        ("PNG", {}),
        ("JPEG", {"quality": 95}),
        ("WEBP", {"lossless": True}),
        ("GIF", {}),
        ("BMP", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
    ],
)
def test_every_supported_format_decodes_to_what_pil_decodes(photos, format, params):
    model = spec("RGB", 64, 64)
    data = encode(photos["chelsea"], format, **params)
    result = preprocess_image(data, model, NO_DRAFT)
    assert result.format == format
    assert max_pixel_diff(result.tensor, torchvision_reference(Image.open(io.BytesIO(data)), model), model) <= ONE_LEVEL


def test_gif_uses_the_first_frame():
    model = spec("L", 16, 16)
    black = Image.new("L", (16, 16), 0)
    white = Image.new("L", (16, 16), 255)
    data = encode(black, "GIF", save_all=True, append_images=[white], duration=100, loop=0)
    result = preprocess_image(data, model, NO_DRAFT)
    expected = (0.0 - model.mean[0]) / model.std[0]
    np.testing.assert_allclose(result.tensor, expected, atol=1e-6)


def test_exif_orientation_is_applied(photos):
    model = spec("RGB", 64, 64)
    upright = photos["chelsea"]  # landscape 451x300
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())

    result = preprocess_image(data, model, NO_DRAFT)

    assert (result.width, result.height) == upright.size
    shown = Image.open(io.BytesIO(data)).transpose(Image.Transpose.ROTATE_270)
    assert max_pixel_diff(result.tensor, torchvision_reference(shown, model), model) <= ONE_LEVEL


def _mode_cases(photo: Image.Image) -> dict[str, tuple[Image.Image, str]]:
    rgb = photo.resize((120, 80))
    return {
        "L": (rgb.convert("L"), "PNG"),
        "1": (rgb.convert("1"), "PNG"),
        "P": (rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "RGBA": (rgb.convert("RGBA"), "PNG"),
        "LA": (rgb.convert("LA"), "PNG"),
        "CMYK": (rgb.convert("CMYK"), "JPEG"),
        "CMYK-TIFF": (rgb.convert("CMYK"), "TIFF"),
    }


@pytest.mark.parametrize("target", ["RGB", "L"])
@pytest.mark.parametrize("case", ["L", "1", "P", "RGBA", "LA", "CMYK", "CMYK-TIFF"])
def test_any_mode_converts_to_the_model_mode_like_pil(photos, target, case):
    image, format = _mode_cases(photos["astronaut"])[case]
    model = spec(target, 40, 32)
    data = encode(image, format)
    result = preprocess_image(data, model, NO_DRAFT)
    assert result.tensor.shape == (model.channels, 32, 32)
    reference = torchvision_reference(Image.open(io.BytesIO(data)), model)
    assert max_pixel_diff(result.tensor, reference, model) <= ONE_LEVEL


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    model = spec("L", 8, 8)
    ramp8 = np.tile(np.arange(0, 256, 4, dtype=np.uint16), (64, 1))[:, :64]
    wide = Image.fromarray((ramp8 * 257).astype(np.uint16))  # 16-bit PNG, full range
    narrow = Image.fromarray(ramp8.astype(np.uint8), "L")
    assert wide.mode.startswith("I;16")
    result16 = preprocess_image(encode(wide, "PNG"), model, NO_DRAFT)
    result8 = preprocess_image(encode(narrow, "PNG"), model, NO_DRAFT)
    assert max_pixel_diff(result16.tensor, result8.tensor, model) <= ONE_LEVEL


def test_draft_request_keeps_at_least_twice_the_resize_size():
    assert draft_request(4000, 3000, 256) == (683, 512)
    assert draft_request(3000, 4000, 28) == (56, 75)
    assert draft_request(600, 400, 256) is None  # less than 2x margin: no draft
    assert draft_request(1000, 1000, 256) is None


@pytest.mark.parametrize("model", [spec("RGB", 256, 224), spec("L", 28, 28)], ids=["rgb-256-224", "gray-28-28"])
def test_draft_decoding_of_a_large_jpeg_stays_close_to_the_full_decode(photos, model):
    big = photos["coffee"].resize((4000, 3000), Image.Resampling.LANCZOS)
    data = encode(big, "JPEG", quality=90)
    full = preprocess_image(data, model, NO_DRAFT)
    drafted = preprocess_image(data, model, DecodeOptions(jpeg_draft=True))
    assert (drafted.width, drafted.height) == (full.width, full.height) == (4000, 3000)
    # docs/SERVICE.md reports the measured figures (python -m bench.jpeg_draft).
    assert 0 < max_pixel_diff(drafted.tensor, full.tensor, model) <= 16 / 255
    mean_levels = np.mean(np.abs(drafted.tensor - full.tensor) * np.asarray(model.std)[:, None, None]) * 255
    assert mean_levels < 1.0


def test_jpeg_draft_is_off_for_png(photos):
    model = spec("RGB", 64, 64)
    big = photos["coffee"].resize((1800, 1200))
    data = encode(big, "PNG")
    drafted = preprocess_image(data, model, DecodeOptions(jpeg_draft=True))
    exact = preprocess_image(data, model, NO_DRAFT)
    np.testing.assert_array_equal(drafted.tensor, exact.tensor)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with no real pixel data (a bomb's cheap disguise)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def test_pixel_limit_refuses_before_decoding():
    with pytest.raises(ImageTooLarge, match="6000x5000 = 30000000 pixels, over the limit of 20000000"):
        preprocess_image(_png_header_only(6000, 5000), spec(), DecodeOptions(max_image_pixels=20_000_000))


def test_decompression_bomb_beyond_pils_own_limit_is_too_large_not_a_crash():
    with pytest.raises(ImageTooLarge):
        preprocess_image(_png_header_only(50_000, 50_000), spec(), DecodeOptions(max_image_pixels=10**12))


def test_real_decompression_bomb_png_is_refused():
    model = spec("L", 28, 28)
    bomb = encode(Image.new("L", (8000, 8000), 0), "PNG", optimize=True)  # 64 Mpx in a few kB
    assert len(bomb) < 200_000
    with pytest.raises(ImageTooLarge, match="over the limit"):
        preprocess_image(bomb, model, DecodeOptions(max_image_pixels=40_000_000))


def test_empty_upload_is_invalid():
    with pytest.raises(InvalidImage, match="empty"):
        preprocess_image(b"", spec(), NO_DRAFT, "image/png")


def test_garbage_declared_as_png_is_invalid_image():
    with pytest.raises(InvalidImage, match="not a valid PNG"):
        preprocess_image(b"this is not a picture" * 10, spec(), NO_DRAFT, "image/png")


def test_garbage_without_a_declared_type_is_unsupported():
    with pytest.raises(UnsupportedMediaType, match="not a recognised image"):
        preprocess_image(b"%PDF-1.7 not an image" * 10, spec(), NO_DRAFT, "application/octet-stream")


def test_truncated_image_is_invalid_and_says_why(photos):
    data = encode(photos["chelsea"], "PNG")
    with pytest.raises(InvalidImage, match="cannot be decoded"):
        preprocess_image(data[: len(data) // 2], spec(), NO_DRAFT, "image/png")


def test_formats_pil_knows_but_we_do_not_serve_are_unsupported(photos):
    data = encode(photos["chelsea"], "PPM")
    with pytest.raises(UnsupportedMediaType):
        preprocess_image(data, spec(), NO_DRAFT, None)


@pytest.mark.parametrize("declared", ["text/plain", "application/pdf", "image/heic", "image/svg+xml"])
def test_declared_types_we_never_decode_are_refused(declared):
    with pytest.raises(UnsupportedMediaType):
        check_declared_type(declared)


@pytest.mark.parametrize(
    "declared,promised",
    [
        ("image/png", "PNG"),
        ("image/jpeg; charset=binary", "JPEG"),
        ("application/octet-stream", None),
        (None, None),
        ("IMAGE/WEBP", "WEBP"),
    ],
)
def test_declared_types_promise_a_format(declared, promised):
    assert check_declared_type(declared) == promised


@pytest.mark.parametrize("model", [spec("RGB", 256, 224), spec("L", 28, 28)], ids=["rgb-256-224", "gray-28-28"])
def test_the_tensor_is_torchvisions_bit_for_bit_and_contiguous(photos, model):
    # Scaling and normalising happen in place in one buffer; the float32 operations and their order are
    # torchvision's (ToTensor's x / 255, then Normalize's (x - mean) / std), so not a bit may differ.
    image = photos["chelsea"]
    result = preprocess_image(encode(image, "PNG"), model, NO_DRAFT)
    np.testing.assert_array_equal(result.tensor, torchvision_reference(image.convert(model.color_mode), model))
    assert result.tensor.flags.c_contiguous and result.tensor.dtype == np.float32
