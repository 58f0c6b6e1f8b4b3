"""The model repository: a folder whose ``*.onnx`` files are served, each named by its file stem.

A model's labels and preprocessing come from the `ModelSpec` embedded in its ONNX metadata (read through ONNX
Runtime's ``get_modelmeta().custom_metadata_map``); a sidecar ``<stem>.json`` beside it may supply or override
any field, so ONNX files exported elsewhere can be served. A model with neither fails start-up with a message
naming the missing fields. The sidecar's ``serving`` object (and ``serving.*`` metadata keys) set the model's own
serving settings (`ServingOverrides`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from service.modelspec import (
    SERVING_SIDECAR_KEY,
    ModelSpec,
    ModelSpecError,
    ServingOverrides,
    build_serving_overrides,
    build_spec,
    fields_from_metadata_props,
)

MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RepositoryError(Exception):
    """The model folder cannot be served; the message says what to fix."""


class MetadataSource(Protocol):
    """What the repository needs from an opened model: its ONNX metadata_props."""

    @property
    def metadata_props(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class ModelFile:
    """One model found on disk."""

    name: str
    path: Path
    sidecar: Path | None


def discover(model_dir: Path) -> list[ModelFile]:
    """The models in `model_dir`, sorted by name; raises RepositoryError when there are none."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise RepositoryError(f"model directory {folder} does not exist (set --model-dir or RESNET_SERVE_MODEL_DIR)")
    found: list[ModelFile] = []
    for path in sorted(folder.glob("*.onnx")):
        if not path.is_file():
            continue
        name = path.stem
        if not MODEL_NAME_PATTERN.match(name):
            raise RepositoryError(
                f"{path.name}: model names (file stems) may only use letters, digits, '.', '_' and '-' "
                f"and must start with a letter or digit"
            )
        sidecar = path.with_suffix(".json")
        found.append(ModelFile(name=name, path=path, sidecar=sidecar if sidecar.is_file() else None))
    if not found:
        raise RepositoryError(f"no *.onnx model files in {folder}")
    return found


def read_sidecar(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelSpecError(f"{path.name}: cannot read sidecar file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ModelSpecError(f"{path.name}: sidecar is not valid JSON: {exc}") from None
    if not isinstance(content, dict):
        raise ModelSpecError(f"{path.name}: sidecar must be a JSON object of model spec fields")
    return content


@dataclass(frozen=True)
class ModelMetadata:
    """What a model file says about itself, after its sidecar's overrides."""

    spec: ModelSpec
    serving: ServingOverrides
    serving_source: str
    """The file the serving overrides come from, for error messages (the sidecar when it has a section)."""


def read_metadata(model: ModelFile, opened: MetadataSource) -> ModelMetadata:
    """The model's spec and serving overrides: embedded metadata, overridden field by field by the sidecar."""
    props = opened.metadata_props
    sidecar = read_sidecar(model.sidecar) if model.sidecar else {}
    serving_section = sidecar.pop(SERVING_SIDECAR_KEY, None)
    source = model.sidecar.name if model.sidecar and serving_section is not None else model.path.name
    return ModelMetadata(
        spec=build_spec(fields_from_metadata_props(props), sidecar or None, source=model.path.name),
        serving=build_serving_overrides(props, serving_section, source=source),
        serving_source=source,
    )


def sidecar_serving(model: ModelFile) -> ServingOverrides:
    """The serving overrides of the sidecar alone: known before the model is opened (its thread count)."""
    if model.sidecar is None:
        return ServingOverrides()
    section = read_sidecar(model.sidecar).get(SERVING_SIDECAR_KEY)
    return build_serving_overrides(None, section, source=model.sidecar.name)


def read_spec(model: ModelFile, opened: MetadataSource) -> ModelSpec:
    """The model's spec alone (see `read_metadata`)."""
    return read_metadata(model, opened).spec


def choose_default_model(names: list[str], requested: str | None) -> str:
    """The model POST /v1/classify uses: `requested` if given (must exist), else the first name in sorted order."""
    if requested is not None:
        if requested not in names:
            raise RepositoryError(f"default model {requested!r} is not in the repository (models: {', '.join(names)})")
        return requested
    return sorted(names)[0]
