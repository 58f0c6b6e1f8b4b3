"""Helpers for tests that change the model repository under a running server."""

from __future__ import annotations

import socket
from pathlib import Path

from bench.servers import process_memory


def stage_version(folder: Path, make_classifier, spec, version: int, *, seed: int | None = None) -> Path:
    """`folder/.<version>.staging/model.onnx`, labelled `v<version>-class-<i>` so that every answer says which
    version gave it: written beside its place, not yet a version (`publish` renames it into place)."""
    labelled = spec.model_copy(update={"labels": [f"v{version}-class-{i}" for i in range(spec.num_classes)]})
    staging = folder / f".{version}.staging"
    staging.mkdir(parents=True, exist_ok=True)
    make_classifier(staging / "model.onnx", labelled, seed=seed if seed is not None else version)
    return staging


def publish(staging: Path) -> Path:
    """Rename a staged version into place, as docs/SERVICE.md tells a publisher to."""
    version = staging.name.removeprefix(".").removesuffix(".staging")
    staging.rename(staging.parent / version)
    return staging.parent / version / "model.onnx"


def write_version(folder: Path, make_classifier, spec, version: int, *, seed: int | None = None) -> Path:
    return publish(stage_version(folder, make_classifier, spec, version, seed=seed))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a server and its worker processes."""
    return process_memory(pid).rss_bytes
