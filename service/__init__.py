"""resnet-serve: an image-classification inference server (FastAPI, ONNX Runtime, dynamic batching). No torch."""
