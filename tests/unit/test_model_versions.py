"""Model versions: the repository layout and its policies, and the registry loading, routing, swapping and
unloading versions of real tiny ONNX models (and refusing what it cannot serve) while what serves goes on."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from service import repository
from service.config import Settings
from service.contract import ModelState
from service.errors import ModelNotFound, NotReady
from service.metrics import ServiceMetrics
from service.registry import LoadFailed, ModelRegistry, StartupError


def write_version(folder: Path, make_classifier, spec, version: int, *, seed: int | None = None) -> Path:
    """`folder/<version>/model.onnx` with labels that say which version gave an answer."""
    labelled = spec.model_copy(update={"labels": [f"v{version}-class-{i}" for i in range(spec.num_classes)]})
    target = folder / str(version) / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(".model.onnx.partial")
    make_classifier(partial, labelled, seed=seed if seed is not None else version)
    partial.replace(target)  # write, then rename: what a publisher should do
    return target


# --- the layout ----------------------------------------------------------------------------------------------------


def test_flat_files_and_version_folders_side_by_side(tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "flat.onnx", gray_spec)
    for version in (1, 2, 3):
        write_version(tmp_path / "nested", make_classifier, gray_spec, version)
    (tmp_path / "nested" / "0").mkdir()  # not a version: versions are positive integers
    (tmp_path / "nested" / "4-upload").mkdir()  # a copy under way under another name: not a version yet
    (tmp_path / ".hidden").mkdir()
    models = repository.scan(tmp_path)
    assert sorted(models) == ["flat", "nested"]
    assert sorted(models["nested"].versions) == [1, 2, 3]
    assert [f.version for f in models["nested"].selected] == [3]  # latest 1 by default
    assert [(f.name, f.version) for f in repository.discover(tmp_path)] == [("flat", 1), ("nested", 3)]


@pytest.mark.parametrize(
    "policy,expected",
    [
        ({"latest": {"num_versions": 2}}, [2, 3]),
        ({"all": {}}, [1, 2, 3]),
        ({"specific": {"versions": [1, 3, 9]}}, [1, 3]),
    ],
)
def test_version_policies_select_as_triton_does(tmp_path, make_classifier, gray_spec, policy, expected):
    for version in (1, 2, 3):
        write_version(tmp_path / "m", make_classifier, gray_spec, version)
    (tmp_path / "m" / "config.json").write_text(json.dumps({"version_policy": policy, "default_version": 2}))
    entry = repository.scan_model(tmp_path, "m")
    assert entry is not None and [f.version for f in entry.selected] == expected
    assert entry.config.default_version == 2


@pytest.mark.parametrize(
    "config,message",
    [
        ({"version_policy": {"latest": {"num_versions": 0}}}, "num_versions"),
        ({"version_policy": {"latest": {}, "all": {}}}, "give one of latest, all or specific"),
        ({"default_version": "two"}, "default_version"),
        ({"versions": 3}, "versions"),
    ],
)
def test_a_bad_config_names_the_file_and_the_field(tmp_path, make_classifier, gray_spec, config, message):
    write_version(tmp_path / "m", make_classifier, gray_spec, 1)
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(repository.RepositoryError, match=rf"m/config.json: .*{message}"):
        repository.scan_model(tmp_path, "m")


def test_both_layouts_for_one_name_is_an_error(tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "m.onnx", gray_spec)
    write_version(tmp_path / "m", make_classifier, gray_spec, 1)
    with pytest.raises(repository.RepositoryError, match="keep one layout per model"):
        repository.scan(tmp_path)


def test_a_rewritten_file_has_another_stamp(tmp_path, make_classifier, gray_spec):
    path = write_version(tmp_path / "m", make_classifier, gray_spec, 1)
    before = repository.FileStamp.of(path)
    write_version(tmp_path / "m", make_classifier, gray_spec, 1, seed=99)
    assert repository.FileStamp.of(path) != before


# --- the registry ----------------------------------------------------------------------------------------------------


def registry_for(folder: Path, **settings) -> ModelRegistry:
    registry = ModelRegistry(Settings(model_dir=folder, max_batch_size=4, **settings), ServiceMetrics())
    registry.load()
    return registry


def label_of(registry: ModelRegistry, name: str, version: str | None = None) -> str:
    return registry.get(name, version).spec.labels[0].split("-")[0]


def test_swapping_versions_routes_new_requests_to_the_new_one_and_closes_the_old_after_its_last(
    tmp_path, make_classifier, gray_spec
):
    write_version(tmp_path / "m", make_classifier, gray_spec, 1)
    registry = registry_for(tmp_path)

    async def scenario() -> None:
        assert await registry.warm_up_and_start()
        old = registry.get("m")
        assert label_of(registry, "m") == "v1"
        old.request_started()  # a request admitted on version 1, still running
        write_version(tmp_path / "m", make_classifier, gray_spec, 2)
        await registry.reconcile("m")
        assert label_of(registry, "m") == "v2"  # new requests: version 2
        assert old.state is ModelState.UNLOADING and old.batcher.running  # the held one is not closed under it
        assert [(s.version, s.state) for s in registry.index()] == [("1", "UNLOADING"), ("2", "READY")]
        with pytest.raises(ModelNotFound, match="has no version '1'"):
            registry.get("m", "1")
        old.request_finished()
        for _ in range(500):
            if not old.batcher.running:
                break
            await asyncio.sleep(0.01)
        assert not old.batcher.running
        assert [(s.version, s.state) for s in registry.index()] == [("1", "UNAVAILABLE"), ("2", "READY")]
        await registry.close()

    asyncio.run(scenario())


def test_a_corrupt_new_version_leaves_the_serving_one_and_says_why(tmp_path, make_classifier, gray_spec):
    write_version(tmp_path / "m", make_classifier, gray_spec, 1)
    registry = registry_for(tmp_path)

    async def scenario() -> None:
        assert await registry.warm_up_and_start()
        (tmp_path / "m" / "2").mkdir()
        (tmp_path / "m" / "2" / "model.onnx").write_bytes(b"not an onnx file")
        with pytest.raises(LoadFailed, match=r"m version 2: model\.onnx: ONNX Runtime cannot load the model"):
            await registry.reconcile("m")
        assert label_of(registry, "m") == "v1" and registry.ready
        index = {s.version: s for s in registry.index()}
        assert index["1"].state == "READY"
        assert index["2"].state == "UNAVAILABLE" and "cannot load the model" in index["2"].reason
        with pytest.raises(NotReady, match="version 2 is unavailable"):
            registry.get("m", "2")
        await registry.close()

    asyncio.run(scenario())


def test_an_incompatible_version_is_refused_with_the_reason(tmp_path, make_classifier, gray_spec, rgb_spec):
    write_version(tmp_path / "m", make_classifier, gray_spec, 1)
    registry = registry_for(tmp_path)

    async def scenario() -> None:
        assert await registry.warm_up_and_start()
        write_version(tmp_path / "m", make_classifier, gray_spec, 2)
        (tmp_path / "m" / "2" / "model.json").write_text(json.dumps({"crop_size": 20, "resize_size": 20}))
        with pytest.raises(LoadFailed, match="does not match its metadata"):
            await registry.reconcile("m")
        assert label_of(registry, "m") == "v1"
        await registry.close()

    asyncio.run(scenario())


def test_pinning_an_older_version_is_the_rollback(tmp_path, make_classifier, gray_spec):
    for version in (1, 2):
        write_version(tmp_path / "m", make_classifier, gray_spec, version)
    (tmp_path / "m" / "config.json").write_text(json.dumps({"version_policy": {"all": {}}}))
    registry = registry_for(tmp_path)

    async def scenario() -> None:
        assert await registry.warm_up_and_start()
        assert label_of(registry, "m") == "v2" and label_of(registry, "m", "1") == "v1"
        await registry.reconcile("m", default_version=1)
        assert label_of(registry, "m") == "v1" and label_of(registry, "m", "2") == "v2"
        (tmp_path / "m" / "config.json").write_text(json.dumps({"version_policy": {"all": {}}, "default_version": 2}))
        await registry.reconcile("m")
        assert label_of(registry, "m") == "v1"  # the pin given through the API stays until another replaces it
        await registry.close()

    asyncio.run(scenario())


def test_a_model_gone_from_disk_is_unloaded_and_unloading_keeps_nothing(tmp_path, make_classifier, gray_spec):
    write_version(tmp_path / "a", make_classifier, gray_spec, 1)
    write_version(tmp_path / "b", make_classifier, gray_spec, 1)
    registry = registry_for(tmp_path)

    async def scenario() -> None:
        assert await registry.warm_up_and_start()
        for path in (tmp_path / "a").rglob("*"):
            if path.is_file():
                path.unlink()
        await registry.reconcile("a")
        with pytest.raises(ModelNotFound):
            registry.get("a")
        await registry.unload_model("b")
        assert registry.names == [] and not registry.ready
        with pytest.raises(ModelNotFound, match="no model named 'b' is loaded"):
            await registry.unload_model("b")
        await registry.close()

    asyncio.run(scenario())


def test_a_load_past_the_memory_budget_is_refused_with_the_numbers(tmp_path, make_classifier, gray_spec):
    write_version(tmp_path / "m", make_classifier, gray_spec, 1)
    registry = registry_for(tmp_path, memory_budget_mb=1.0)  # below what any Python process holds

    async def scenario() -> None:
        assert await registry.warm_up_and_start()
        write_version(tmp_path / "m", make_classifier, gray_spec, 2)
        with pytest.raises(
            LoadFailed, match=r"needs about \d+ MiB beside the \d+ MiB .* memory budget of 1 MiB"
        ) as refused:
            await registry.reconcile("m")
        assert refused.value.insufficient_memory  # which the repository API answers with 507
        assert label_of(registry, "m") == "v1"
        await registry.close()

    asyncio.run(scenario())


def test_a_new_model_that_cannot_load_takes_no_readiness_away(tmp_path, make_classifier, gray_spec):
    write_version(tmp_path / "m", make_classifier, gray_spec, 1)
    registry = registry_for(tmp_path)

    async def scenario() -> None:
        assert await registry.warm_up_and_start()
        (tmp_path / "new" / "1").mkdir(parents=True)
        (tmp_path / "new" / "1" / "model.onnx").write_bytes(b"not an onnx file")
        with pytest.raises(LoadFailed, match="cannot load the model"):
            await registry.reconcile("new")
        assert registry.ready  # the server serves what it served; the index says why the new one does not
        assert [(s.name, s.state) for s in registry.index()] == [("m", "READY"), ("new", "UNAVAILABLE")]
        with pytest.raises(NotReady, match="version 1 is unavailable"):
            registry.get("new", "1")
        write_version(tmp_path / "new", make_classifier, gray_spec, 1)  # fixed: it serves, and now counts
        await registry.reconcile("new")
        assert label_of(registry, "new") == "v1" and registry.ready
        for name in ("m", "new"):
            await registry.unload_model(name)
        (tmp_path / "new" / "1" / "model.onnx").write_bytes(b"broken again")
        with pytest.raises(LoadFailed):
            await registry.reconcile("new")
        assert not registry.ready  # nothing serves: a failed model alone is not a ready server
        await registry.close()

    asyncio.run(scenario())


def test_start_up_still_fails_on_a_model_it_cannot_serve(tmp_path, make_classifier, gray_spec):
    write_version(tmp_path / "m", make_classifier, gray_spec, 1)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"broken")
    with pytest.raises(StartupError, match=r"model\.onnx: ONNX Runtime cannot load the model"):
        registry_for(tmp_path)
    assert os.path.exists(tmp_path / "m" / "1" / "model.onnx")
