"""The model repository on disk: which models and versions there are, how each wants to be served, which to load.

Two layouts, side by side in one folder:

    flat.onnx                  model "flat", version 1 (a sidecar flat.json beside it, as before)
    resnet50/                  model "resnet50", in Triton's and KServe's layout:
      config.json              optional: its `serving` section, `version_policy` and `default_version`
      1/model.onnx             version 1 (a sidecar 1/model.json beside it)
      2/model.onnx             version 2

Versions are positive integers (folder names without leading zeros). The version policy says which versions are
served, in Triton's words: ``{"latest": {"num_versions": N}}`` (the default, with N = 1), ``{"all": {}}`` or
``{"specific": {"versions": [1, 3]}}``; ``default_version`` pins the version that answers requests naming none
(otherwise the highest ready one). A model's labels and preprocessing come from the `ModelSpec` embedded in each
version's ONNX metadata; a version's sidecar may supply or override any field. Serving settings: the ONNX
metadata's ``serving.*`` keys, then config.json's ``serving``, then the version sidecar's ``serving`` win in turn.

Each version file carries a `FileStamp` (inode, size, modification time): a version is new, changed or gone when
its stamp is, and the poller loads only a file whose stamp has stayed the same for a whole poll interval, so a
file still being written is never loaded half (publish with write-then-rename, docs/SERVICE.md).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,17}$")
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"


class RepositoryError(Exception):
    """The model folder, or one model in it, cannot be served; the message says what to fix."""


class MetadataSource(Protocol):
    """What the repository needs from an opened model: its ONNX metadata_props."""

    @property
    def metadata_props(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class FileStamp:
    """What says a file changed: another inode (a rename over it), another size or modification time."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        stat = os.stat(path)
        return cls(stat.st_ino, stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class ModelFile:
    """One model version found on disk."""

    name: str
    path: Path
    sidecar: Path | None
    version: int = 1
    stamp: FileStamp | None = field(default=None, compare=False)
    config: Path | None = None
    """The model's config.json, whose `serving` section applies to every version."""


class _LatestPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_versions: int = Field(default=1, ge=1)


class _SpecificPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    versions: list[int] = Field(min_length=1)


class VersionPolicy(BaseModel):
    """Which versions of a model are served (Triton's `version_policy`): exactly one of the three."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latest: _LatestPolicy | None = None
    all: dict[str, Any] | None = None
    specific: _SpecificPolicy | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        if sum(kind is not None for kind in (self.latest, self.all, self.specific)) > 1:
            raise ValueError("give one of latest, all or specific")
        return self

    def select(self, available: Iterable[int]) -> list[int]:
        """The versions to serve among those on disk, ascending."""
        versions = sorted(set(available))
        if self.all is not None:
            return versions
        if self.specific is not None:
            return [version for version in versions if version in self.specific.versions]
        latest = self.latest.num_versions if self.latest is not None else 1
        return versions[-latest:]

    def describe(self) -> str:
        if self.all is not None:
            return "all"
        if self.specific is not None:
            return "specific " + ", ".join(map(str, self.specific.versions))
        return f"latest {self.latest.num_versions if self.latest is not None else 1}"


class ModelConfig(BaseModel):
    """A model folder's config.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    serving: dict[str, Any] | None = None
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    default_version: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class ModelEntry:
    """A model on disk: its versions, its config and which versions its policy serves."""

    name: str
    versions: dict[int, ModelFile]
    config: ModelConfig = field(default_factory=ModelConfig)
    config_path: Path | None = None

    @property
    def selected(self) -> list[ModelFile]:
        """The version files the policy serves, ascending."""
        return [self.versions[version] for version in self.config.version_policy.select(self.versions)]


def _version_files(folder: Path, name: str, config: Path | None) -> dict[int, ModelFile]:
    found: dict[int, ModelFile] = {}
    for child in sorted(folder.iterdir()):
        if not child.is_dir() or not VERSION_PATTERN.match(child.name):
            continue  # other files and folders (a version still being copied under a temporary name) are not versions
        path = child / MODEL_FILE
        if not path.is_file():
            continue
        sidecar = child / "model.json"
        found[int(child.name)] = ModelFile(
            name=name,
            path=path,
            sidecar=sidecar if sidecar.is_file() else None,
            version=int(child.name),
            stamp=FileStamp.of(path),
            config=config,
        )
    return found


def read_config(path: Path) -> ModelConfig:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        return ModelConfig.model_validate(content)
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path.parent.name}/{path.name}: cannot read it: {exc}") from None
    except json.JSONDecodeError as exc:
        raise RepositoryError(f"{path.parent.name}/{path.name}: not valid JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'config'}: {error['msg']}" for error in exc.errors()
        )
        raise RepositoryError(f"{path.parent.name}/{path.name}: {problems}") from None


def scan_model(model_dir: Path, name: str) -> ModelEntry | None:
    """One model as it is on disk now (None: not there); RepositoryError for a layout or config it cannot serve."""
    if not MODEL_NAME_PATTERN.match(name):
        raise RepositoryError(
            f"{name}: model names may only use letters, digits, '.', '_' and '-' and must start with a letter or digit"
        )
    folder = Path(model_dir)
    flat = folder / f"{name}.onnx"
    nested = folder / name
    if flat.is_file() and nested.is_dir():
        raise RepositoryError(f"{name}: both {flat.name} and a folder {name}/: keep one layout per model")
    if flat.is_file():
        sidecar = flat.with_suffix(".json")
        return ModelEntry(
            name, {1: ModelFile(name, flat, sidecar if sidecar.is_file() else None, 1, FileStamp.of(flat))}
        )
    if not nested.is_dir():
        return None
    config_path = nested / CONFIG_FILE
    config = read_config(config_path) if config_path.is_file() else ModelConfig()
    versions = _version_files(nested, name, config_path if config_path.is_file() else None)
    if not versions:
        return None
    return ModelEntry(name, versions, config, config_path if config_path.is_file() else None)


def model_names(model_dir: Path) -> list[str]:
    """The names of the models in `model_dir` (flat files and model folders), sorted; hidden entries skipped."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise RepositoryError(f"model directory {folder} does not exist (set --model-dir or RESNET_SERVE_MODEL_DIR)")
    names = set()
    for child in folder.iterdir():
        if child.name.startswith("."):
            continue
        if child.is_file() and child.suffix == ".onnx":
            if not MODEL_NAME_PATTERN.match(child.stem):
                raise RepositoryError(
                    f"{child.name}: model names (file stems) may only use letters, digits, '.', '_' and '-' "
                    f"and must start with a letter or digit"
                )
            names.add(child.stem)
        elif child.is_dir() and MODEL_NAME_PATTERN.match(child.name):
            names.add(child.name)  # a folder that holds no version is skipped by scan_model
    return sorted(names)


def scan(model_dir: Path) -> dict[str, ModelEntry]:
    """Every model in the folder, by name; RepositoryError for the first that cannot be served."""
    models = {}
    for name in model_names(model_dir):
        entry = scan_model(model_dir, name)
        if entry is not None:
            models[name] = entry
    return models


def discover(model_dir: Path) -> list[ModelFile]:
    """The model versions to serve at start-up (each model's policy), sorted by name and version; RepositoryError
    when there are none."""
    models = scan(model_dir)
    found = [version for entry in models.values() for version in entry.selected]
    if not found:
        raise RepositoryError(f"no *.onnx model files in {model_dir} (nor <name>/<version>/model.onnx)")
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


def _config_serving(model: ModelFile) -> dict[str, Any]:
    return dict(read_config(model.config).serving or {}) if model.config is not None else {}


def _display(model: ModelFile) -> str:
    return model.path.name if model.path.name != MODEL_FILE else f"{model.name}/{model.version}/{MODEL_FILE}"


def read_metadata(model: ModelFile, opened: MetadataSource) -> ModelMetadata:
    """The model's spec and serving overrides: embedded metadata, overridden by config.json's serving section,
    then field by field by the sidecar."""
    props = opened.metadata_props
    sidecar = read_sidecar(model.sidecar) if model.sidecar else {}
    sidecar_serving = sidecar.pop(SERVING_SIDECAR_KEY, None)
    config_serving = _config_serving(model)
    if sidecar_serving is not None and not isinstance(sidecar_serving, Mapping):
        serving_section: Any = sidecar_serving
    else:
        serving_section = {**config_serving, **(sidecar_serving or {})} if config_serving or sidecar_serving else None
    if model.sidecar and sidecar_serving is not None:
        source = model.sidecar.name
    elif config_serving and model.config is not None:
        source = f"{model.name}/{CONFIG_FILE}"
    else:
        source = _display(model)
    return ModelMetadata(
        spec=build_spec(fields_from_metadata_props(props), sidecar or None, source=_display(model)),
        serving=build_serving_overrides(props, serving_section, source=source),
        serving_source=source,
    )


def sidecar_serving(model: ModelFile) -> ServingOverrides:
    """The serving overrides of config.json and the sidecar alone: known before the model is opened (its thread
    count)."""
    section = dict(_config_serving(model))
    source = f"{model.name}/{CONFIG_FILE}" if section else _display(model)
    if model.sidecar is not None:
        own = read_sidecar(model.sidecar).get(SERVING_SIDECAR_KEY)
        if own is not None:
            source = model.sidecar.name
            if not isinstance(own, Mapping):
                return build_serving_overrides(None, own, source=source)
            section.update(own)
    return build_serving_overrides(None, section or None, source=source)


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
