"""The baseline: an image classifier served the way a tutorial writes it, to compare ours against.

    python -m bench.naive_server --model resnet50.onnx --port 8001

What makes it naive is on purpose and is what a user typically writes: a plain `def` endpoint (FastAPI runs it in
its thread pool, so up to 40 requests run ONNX Runtime at once), one image per request and batch 1, a default
`InferenceSession` (threads sized from the host, spinning while they wait), full-size PIL decoding, no queue limit
and no admission control. The preprocessing itself is correct: the model's own resize, crop and normalisation,
read once from its metadata, so both servers compute the same thing.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image


def create_app(model_path: str) -> FastAPI:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    spec = {
        key.removeprefix("modelspec."): json.loads(value) for key, value in meta.items() if key.startswith("modelspec.")
    }
    labels = spec["labels"]
    resize, crop = spec["resize_size"], spec["crop_size"]
    mean = np.array(spec["mean"], dtype=np.float32)
    std = np.array(spec["std"], dtype=np.float32)
    resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[spec["interpolation"]]

    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/v1/models/{name}/classify")
    def classify(name: str, file: UploadFile = File(...)) -> dict:  # noqa: B008 - FastAPI's own idiom
        image = Image.open(file.file).convert(spec["color_mode"])
        width, height = image.size
        if width < height:
            image = image.resize((resize, int(resize * height / width)), resample)
        else:
            image = image.resize((int(resize * width / height), resize), resample)
        left = round((image.width - crop) / 2)
        top = round((image.height - crop) / 2)
        image = image.crop((left, top, left + crop, top + crop))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        tensor = ((pixels - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
        logits = session.run(None, {"input": tensor})[0][0]
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        best = np.argsort(probabilities)[::-1][:5]
        return {"model": name, "results": [{"label": labels[i], "score": float(probabilities[i])} for i in best]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="A naive FastAPI image classifier (the benchmark's baseline).")
    parser.add_argument("--model", required=True, help="ONNX file exported by models.export")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(create_app(args.model), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
