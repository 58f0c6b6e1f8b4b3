"""Triton's model configuration and statistics extensions, in the JSON shape Triton's HTTP endpoints answer with.

Both front ends send the same content: HTTP as this JSON, gRPC parsed into the matching messages (Triton's
`ModelConfigResponse` and `ModelStatisticsResponse`, whose field names these are), so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.contract import ModelDescription
from service.statistics import ModelStatistics
from service.v2 import codec

_MICROSECONDS = 1_000_000


def model_config(model: ModelDescription, *, request_timeout_s: float) -> dict[str, Any]:
    """Triton's `ModelConfig` of a model version: its platform, its batching and queue settings as they are in
    effect, and its tensors without the batch dimension (Triton's convention when max_batch_size > 0)."""
    spec = model.spec
    serving = model.serving
    max_batch_size = serving.max_batch_size if isinstance(serving.max_batch_size, int) else 0
    gpu = model.execution_provider not in ("CPUExecutionProvider", "")
    parameters = {
        "labels": ",".join(spec.labels),
        "encoded_images": "the input also takes BYTES [-1]: encoded images the server decodes and preprocesses",
        "color_mode": spec.color_mode,
        "resize_size": str(spec.resize_size),
        "crop_size": str(spec.crop_size),
        "interpolation": spec.interpolation,
        "mean": ",".join(f"{value:g}" for value in spec.mean),
        "std": ",".join(f"{value:g}" for value in spec.std),
        "execution_provider": model.execution_provider,
        "intra_op_threads": str(model.intra_op_threads),
        "max_queue_wait_ms": "" if serving.max_queue_wait_ms is None else f"{serving.max_queue_wait_ms:g}",
        "batch_size_source": model.batch_size_source,
    }
    return {
        "name": model.name,
        "platform": codec.PLATFORM,
        "backend": "onnxruntime",
        "version_policy": {"specific": {"versions": [int(version) for version in model.versions]}},
        "max_batch_size": max_batch_size,
        "input": [
            {
                "name": spec.input_name,
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NCHW",
                "dims": list(spec.input_shape),
            }
        ],
        "output": [{"name": spec.output_name, "data_type": "TYPE_FP32", "dims": [spec.num_classes]}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(serving.max_batch_delay_ms * 1000),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(request_timeout_s * _MICROSECONDS),
                "max_queue_size": serving.max_queue_size,
            },
        },
        "instance_group": [
            {"name": model.name, "kind": "KIND_GPU" if gpu else "KIND_CPU", "count": 1},
        ],
        "parameters": {name: {"string_value": value} for name, value in parameters.items()},
    }


def statistics(models: Sequence[ModelStatistics]) -> dict[str, Any]:
    """Triton's `ModelStatisticsResponse`."""
    return {"model_stats": [model.as_triton() for model in models]}
