"""resnet-serve: image classification with ONNX Runtime and dynamic batching."""

import os

__version__ = "0.1.0"

# ONNX Runtime 1.29+ uploads usage telemetry on Linux and writes a device ID to disk unless this is set before it
# initialises; an inference server should do neither unless its operator asks. Setting it to 0 opts back in.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
