"""Export a ResNet to a self-describing ONNX file the service can serve as it is.

    python -m models.export --checkpoint runs/resnet20/checkpoint.pt --output service/bundled_models/fashion-mnist-resnet20.onnx
    python -m models.export --torchvision resnet50 --weights resnet50.pth --output resnet50.onnx
    python -m models.export --checkpoint runs/resnet20/checkpoint.pt --quantize int8 --output resnet20-int8.onnx
    python -m models.export --torchvision resnet50 --output resnet50.onnx --serving max_batch_size=8 --serving max_batch_delay_ms=2

The file gets a dynamic batch axis, input `input`, output `logits`, opset 18, and the labels and preprocessing in its
`metadata_props` (schema: service/modelspec.py), and with `--serving NAME=VALUE` the model's own serving
settings (batch size, delay, queue, wait bound, threads; validated as the server's flags are). Before the file is written, ONNX Runtime's output is checked
against PyTorch's on real preprocessed images at batch sizes 1 and 5 (max |logit difference| <= 1e-4, same top-1);
the export fails otherwise. For Fashion-MNIST checkpoints the test accuracy is measured and stored.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image

from models import data
from models.resnet import TORCHVISION_ARCHS, CifarResNet, CifarResNetConfig, imagenet_categories, torchvision_resnet
from service.modelspec import (
    INPUT_NAME,
    OUTPUT_NAME,
    ModelSpec,
    ModelSpecError,
    ServingOverrides,
    build_serving_overrides,
    serving_to_metadata_props,
    to_metadata_props,
)

OPSET = 18
PARITY_ATOL = 1e-4
PARITY_BATCH_SIZES = (1, 5)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Photos that scikit-image ships, used as real images for parity checks and INT8 calibration of RGB models.
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "colorwheel",
    "retina",
)


class ExportError(RuntimeError):
    """The export cannot produce a correct model; the message says what failed."""


@dataclass
class Exportable:
    """A model ready to export, with its spec and the real images used to check it."""

    model: torch.nn.Module
    spec: ModelSpec
    check_images: np.ndarray  # float32 [N>=5, C, H, W], preprocessed
    calibration_images: np.ndarray  # float32, preprocessed, for INT8 calibration
    test_set: tuple[np.ndarray, np.ndarray] | None = None  # preprocessed images and labels, to measure accuracy
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m models.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint written by `python -m models.train`")
    source.add_argument("--torchvision", choices=TORCHVISION_ARCHS, help="a torchvision ImageNet ResNet")
    p.add_argument(
        "--weights",
        default=None,
        help="with --torchvision: a local state_dict file, or a torchvision weights name such as "
        "IMAGENET1K_V2 (downloads; needs internet); omitted: random initialisation",
    )
    p.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="write an INT8 model (static quantization, calibrated on real training images)",
    )
    p.add_argument("--fp16", action="store_true", help="write an fp16 model for GPU serving (float32 inputs/outputs)")
    p.add_argument("--calibration-images", type=int, default=512, help="training images used for INT8 calibration")
    p.add_argument("--resize-size", type=int, default=None, help="override the resize size stored in the metadata")
    p.add_argument("--crop-size", type=int, default=None, help="override the crop (input) size stored in the metadata")
    p.add_argument("--data-dir", type=Path, default=None, help="Fashion-MNIST IDX folder")
    p.add_argument(
        "--accuracy-limit",
        type=int,
        default=None,
        help="measure test accuracy on the first N test images only (default: all 10,000)",
    )
    p.add_argument("--opset", type=int, default=OPSET)
    p.add_argument(
        "--serving",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a serving setting the server uses for this model instead of its flag, repeatable: "
        f"{', '.join(ServingOverrides.model_fields)} (for example max_batch_size=8)",
    )
    args = p.parse_args(argv)
    args.serving_overrides = parse_serving(p, args.serving)
    if args.weights and not args.torchvision:
        p.error("--weights goes with --torchvision")
    if args.quantize and args.fp16:
        p.error("choose one of --quantize int8 and --fp16")
    return args


def parse_serving(parser: argparse.ArgumentParser, pairs: list[str]) -> ServingOverrides:
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            parser.error(f"--serving takes NAME=VALUE, got {pair!r}")
        values[name.strip()] = value.strip()
    try:
        return build_serving_overrides(None, values, source="--serving")
    except ModelSpecError as exc:
        parser.error(str(exc))


# ---------------------------------------------------------------------------------------------- sources


def from_checkpoint(path: Path, args: argparse.Namespace) -> Exportable:
    if not path.is_file():
        raise ExportError(f"checkpoint {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ExportError(f"{path} is not a checkpoint written by models.train")
    if "config" not in state:
        raise ExportError(
            f"{path} has no model config; for a torchvision state_dict use --torchvision ARCH --weights FILE"
        )
    config = CifarResNetConfig(**state["config"])
    model = CifarResNet(config)
    model.load_state_dict(state["state_dict"])
    size = int(state.get("image_size", 28))
    spec = ModelSpec(
        labels=list(state["labels"]),
        color_mode="L" if config.in_channels == 1 else "RGB",
        resize_size=args.resize_size or size,
        crop_size=args.crop_size or size,
        interpolation="bilinear",
        mean=list(state["mean"]),
        std=list(state["std"]),
        architecture=config.name,
        dataset=state.get("dataset", "fashion-mnist"),
    )
    test = data.load_split("test", args.data_dir)
    train = data.load_split("train", args.data_dir)
    limit = args.accuracy_limit

    def prep(images: np.ndarray) -> np.ndarray:
        return data.normalise(torch.from_numpy(images), spec.mean[0], spec.std[0]).numpy()

    rng = np.random.default_rng(0)
    calibration = train.images[rng.choice(len(train), size=min(args.calibration_images, len(train)), replace=False)]
    return Exportable(
        model=model,
        spec=spec,
        check_images=prep(test.images[:8]),
        calibration_images=prep(calibration),
        test_set=(prep(test.images[:limit]), test.labels[:limit]),
    )


def from_torchvision(args: argparse.Namespace) -> Exportable:
    model = torchvision_resnet(args.torchvision, args.weights)
    num_classes = model.fc.out_features
    labels = (
        imagenet_categories(args.torchvision) if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]
    )
    resize, crop = 256, 224
    if args.weights and not Path(args.weights).exists() and not str(args.weights).endswith((".pt", ".pth", ".bin")):
        # Named torchvision weights carry their own eval transforms (e.g. V2 weights resize to 232).
        from models.resnet import torchvision_weights_enum

        transforms = torchvision_weights_enum(args.torchvision)[str(args.weights)].transforms()
        resize, crop = int(transforms.resize_size[0]), int(transforms.crop_size[0])
    spec = ModelSpec(
        labels=labels,
        color_mode="RGB",
        resize_size=args.resize_size or resize,
        crop_size=args.crop_size or crop,
        interpolation="bilinear",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        architecture=args.torchvision,
        dataset="imagenet-1k" if num_classes == 1000 else "unknown",
    )
    photos = preprocess_photos(spec)
    notes = (
        ["INT8 calibration used scikit-image's sample photos (no ImageNet training images here)"]
        if args.quantize
        else []
    )
    return Exportable(model=model, spec=spec, check_images=photos, calibration_images=photos, notes=notes)


def preprocess_photos(spec: ModelSpec) -> np.ndarray:
    """scikit-image's photos through torchvision's reference pipeline for this spec."""
    import skimage.data
    from torchvision import transforms as T

    pipeline = T.Compose(
        [
            T.Resize(spec.resize_size, interpolation=T.InterpolationMode(spec.interpolation), antialias=True),
            T.CenterCrop(spec.crop_size),
            T.ToTensor(),
            T.Normalize(spec.mean, spec.std),
        ]
    )
    images = [Image.fromarray(getattr(skimage.data, name)()).convert(spec.color_mode) for name in SKIMAGE_PHOTOS]
    return torch.stack([pipeline(image) for image in images]).numpy()


# ---------------------------------------------------------------------------------------------- export


def export_fp32(model: torch.nn.Module, spec: ModelSpec, path: Path, opset: int) -> None:
    model.eval()
    example = torch.zeros(2, spec.channels, spec.crop_size, spec.crop_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter narrates every stage on stdout; keep our own output readable.
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    program.save(str(path))


def write_metadata(path: Path, spec: ModelSpec, serving: ServingOverrides | None = None) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    props = {**to_metadata_props(spec), **serving_to_metadata_props(serving or ServingOverrides())}
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = f"{spec.architecture} ({spec.precision}) trained on {spec.dataset}; exported by models.export"
    model.producer_name = "resnet-serve models.export"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(sess: ort.InferenceSession, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    return np.concatenate(
        [
            sess.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch_size]})[0]
            for i in range(0, len(images), batch_size)
        ]
    )


def check_parity(model: torch.nn.Module, sess: ort.InferenceSession, images: np.ndarray, atol: float) -> float:
    """Raise ExportError unless ONNX Runtime matches PyTorch at every parity batch size; return the max diff."""
    worst = 0.0
    with torch.no_grad():
        for size in PARITY_BATCH_SIZES:
            batch = images[:size]
            expected = model(torch.from_numpy(batch)).numpy()
            actual = sess.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
            if actual.shape != expected.shape:
                raise ExportError(f"parity check failed at batch {size}: ONNX shape {actual.shape} != {expected.shape}")
            diff = float(np.abs(actual - expected).max())
            worst = max(worst, diff)
            if diff > atol or not np.array_equal(actual.argmax(1), expected.argmax(1)):
                raise ExportError(
                    f"parity check failed at batch {size}: max |logit difference| {diff:.3g} (limit {atol:g}), "
                    f"top-1 ONNX {actual.argmax(1).tolist()} vs PyTorch {expected.argmax(1).tolist()}"
                )
    return worst


def accuracy(sess: ort.InferenceSession, test_set: tuple[np.ndarray, np.ndarray]) -> float:
    images, labels = test_set
    return float((run_onnx(sess, images).argmax(1) == labels).mean())


class _Calibration:
    """Feeds calibration batches to ONNX Runtime's quantizer (its CalibrationDataReader protocol)."""

    def __init__(self, images: np.ndarray, batch_size: int = 32) -> None:
        self._batches = iter([images[i : i + batch_size] for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(fp32_path: Path, out_path: Path, calibration_images: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out_path.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    # U8 activations with S8 weights: the combination x86's VNNI and AMX integer units run fastest.
    quantize_static(
        str(prepared),
        str(out_path),
        _Calibration(calibration_images),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
    )
    prepared.unlink(missing_ok=True)


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(model, str(out_path))


def export(exportable: Exportable, args: argparse.Namespace) -> dict:
    """Write the requested model to args.output after checking it; return what was measured."""
    started = time.monotonic()
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {"output": str(output), "architecture": exportable.spec.architecture, "notes": exportable.notes}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        export_fp32(exportable.model, exportable.spec, fp32_path, args.opset)
        fp32 = session(fp32_path)
        report["parity_max_abs_diff"] = check_parity(exportable.model, fp32, exportable.check_images, PARITY_ATOL)
        spec = exportable.spec
        if exportable.test_set is not None:
            report["fp32_test_accuracy"] = accuracy(fp32, exportable.test_set)
            spec = spec.model_copy(update={"test_accuracy": report["fp32_test_accuracy"]})
        final_path = fp32_path
        if args.quantize == "int8":
            final_path = Path(tmp) / "int8.onnx"
            quantize_int8(fp32_path, final_path, exportable.calibration_images)
            spec = spec.model_copy(update={"precision": "int8", "test_accuracy": None})
        elif args.fp16:
            final_path = Path(tmp) / "fp16.onnx"
            convert_fp16(fp32_path, final_path)
            spec = spec.model_copy(update={"precision": "fp16", "test_accuracy": None})
        if final_path != fp32_path:
            reduced = session(final_path)
            reference = run_onnx(fp32, exportable.check_images)
            got = run_onnx(reduced, exportable.check_images)
            report[f"{spec.precision}_max_abs_diff_vs_fp32"] = float(np.abs(got - reference).max())
            report[f"{spec.precision}_top1_agreement_vs_fp32"] = float((got.argmax(1) == reference.argmax(1)).mean())
            if exportable.test_set is not None:
                report[f"{spec.precision}_test_accuracy"] = accuracy(reduced, exportable.test_set)
                spec = spec.model_copy(update={"test_accuracy": report[f"{spec.precision}_test_accuracy"]})
        write_metadata(final_path, spec, args.serving_overrides)
        final_path.replace(output)
    report["precision"] = spec.precision
    report["size_bytes"] = output.stat().st_size
    report["seconds"] = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        exportable = from_checkpoint(args.checkpoint, args) if args.checkpoint else from_torchvision(args)
        report = export(exportable, args)
    except (ExportError, data.DatasetError, FileNotFoundError) as exc:
        sys.exit(f"export failed: {exc}")
    for key, value in report.items():
        if key.endswith(("accuracy", "agreement_vs_fp32")):
            value = f"{100 * value:.2f}%"
        print(f"{key:32s} {value}")
    return report


if __name__ == "__main__":
    main()
