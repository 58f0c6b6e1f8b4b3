"""The model that ships in git: it loads, describes itself, and is as accurate as its card says."""

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models import data
from service.modelspec import build_spec, fields_from_metadata_props

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "service" / "bundled_models" / "fashion-mnist-resnet20.onnx"
CARD = ROOT / "docs" / "MODEL_CARD.md"


def test_bundled_model_loads_its_metadata_parses_and_matches_the_card():
    session = ort.InferenceSession(str(BUNDLED), providers=["CPUExecutionProvider"])
    spec = build_spec(fields_from_metadata_props(session.get_modelmeta().custom_metadata_map), source=BUNDLED.name)
    assert spec.labels == data.LABELS and spec.color_mode == "L" and spec.architecture == "resnet20"
    assert spec.test_accuracy >= 0.94
    card_accuracy = float(
        re.search(r"Top-1 accuracy on the 10,000 test images: \*\*([\d.]+)%\*\*", CARD.read_text()).group(1)
    )
    assert card_accuracy == round(100 * spec.test_accuracy, 2)

    test = data.load_split("test")
    images = data.normalise(torch.from_numpy(test.images[:2000]), spec.mean[0], spec.std[0]).numpy()
    logits = np.concatenate([session.run(["logits"], {"input": images[i : i + 500]})[0] for i in range(0, 2000, 500)])
    accuracy = 100 * float((logits.argmax(1) == test.labels[:2000]).mean())
    assert abs(accuracy - card_accuracy) <= 1.0, f"{accuracy:.2f}% on the first 2,000 vs {card_accuracy}% on the card"


def test_bundled_model_is_small():
    assert BUNDLED.stat().st_size < 2_000_000
