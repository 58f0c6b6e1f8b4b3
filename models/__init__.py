"""The torch side of resnet-serve: ResNet definitions, training, export and experiments.

Not part of the serving package: run from a checkout (``python -m models.train``) with the ``train`` extra.
"""

import os

# As in the service package: ONNX Runtime 1.29+ uploads usage telemetry on Linux unless this is set before it
# initialises; export and experiments open sessions too. Setting it to 0 opts back in.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
