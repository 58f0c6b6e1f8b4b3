"""What JPEG draft decoding costs in accuracy and saves in time, on a 12-megapixel photo.

    python -m bench.jpeg_draft [--repeats 15]

Builds a 4243x2828 (12.0 Mpx) JPEG (quality 90) from scikit-image's 'coffee' photo, then times
`preprocess_image` with draft decoding off and on for two model specs, and reports the largest and mean
per-pixel difference of the model input (in 8-bit levels, normalisation undone). Needs scikit-image (test extra).
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time

import numpy as np
from PIL import Image

from service.modelspec import ModelSpec
from service.preprocess import DecodeOptions, preprocess_image

SPECS = {
    "RGB resize 256 crop 224 (ImageNet-style)": ModelSpec(
        labels=["x"],
        color_mode="RGB",
        resize_size=256,
        crop_size=224,
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
    ),
    "L resize 28 crop 28 (Fashion-MNIST-style)": ModelSpec(
        labels=["x"],
        color_mode="L",
        resize_size=28,
        crop_size=28,
        mean=[0.286],
        std=[0.353],
    ),
}


def twelve_megapixel_jpeg() -> bytes:
    import skimage.data

    photo = Image.fromarray(skimage.data.coffee()).resize((4243, 2828), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _median_seconds(data: bytes, spec: ModelSpec, options: DecodeOptions, repeats: int) -> float:
    preprocess_image(data, spec, options)  # warm caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        preprocess_image(data, spec, options)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    data = twelve_megapixel_jpeg()
    print(
        f"JPEG: 4243x2828 = {4243 * 2828 / 1e6:.1f} Mpx, {len(data) / 1e6:.2f} MB, quality 90; "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"Pillow {Image.__version__}"
    )
    print("| model input | full decode (ms) | draft (ms) | speed-up | max diff (levels) | mean diff (levels) |")
    print("|---|---|---|---|---|---|")
    for name, spec in SPECS.items():
        full_options = DecodeOptions(jpeg_draft=False)
        draft_options = DecodeOptions(jpeg_draft=True)
        full = preprocess_image(data, spec, full_options).tensor
        drafted = preprocess_image(data, spec, draft_options).tensor
        std = np.asarray(spec.std, dtype=np.float64)[:, None, None]
        levels = np.abs(full.astype(np.float64) - drafted.astype(np.float64)) * std * 255
        full_s = _median_seconds(data, spec, full_options, args.repeats)
        draft_s = _median_seconds(data, spec, draft_options, args.repeats)
        print(
            f"| {name} | {full_s * 1e3:.1f} | {draft_s * 1e3:.1f} | {full_s / draft_s:.1f}x | "
            f"{levels.max():.1f} | {levels.mean():.2f} |"
        )


if __name__ == "__main__":
    main()
