"""The torch side of resnet-serve: ResNet definitions, training, export and experiments."""

import service  # noqa: F401  (its import turns ONNX Runtime telemetry off before onnxruntime loads)
