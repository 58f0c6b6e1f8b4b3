"""The model repository: discovery, embedded metadata, sidecar files, the default model."""

from __future__ import annotations

import json

import pytest

from service.modelspec import ModelSpecError
from service.repository import RepositoryError, choose_default_model, discover, read_spec
from service.runtime import OnnxModelRuntime


def test_discover_finds_models_sorted_by_name_with_their_sidecars(tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "zebra.onnx", gray_spec)
    make_classifier(tmp_path / "alpha.onnx", gray_spec)
    (tmp_path / "alpha.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("not a model")
    models = discover(tmp_path)
    assert [m.name for m in models] == ["alpha", "zebra"]
    assert models[0].sidecar == tmp_path / "alpha.json"
    assert models[1].sidecar is None


def test_missing_or_empty_folder_is_an_error(tmp_path):
    with pytest.raises(RepositoryError, match="does not exist"):
        discover(tmp_path / "nowhere")
    with pytest.raises(RepositoryError, match=r"no \*\.onnx model files"):
        discover(tmp_path)


def test_model_names_must_be_url_safe(tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "my model.onnx", gray_spec)
    with pytest.raises(RepositoryError, match="may only use letters"):
        discover(tmp_path)


def test_embedded_metadata_is_the_spec(tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "m.onnx", gray_spec)
    (model,) = discover(tmp_path)
    assert read_spec(model, OnnxModelRuntime(model.path)) == gray_spec


def test_sidecar_overrides_embedded_fields(tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "m.onnx", gray_spec)
    labels = [f"renamed-{i}" for i in range(10)]
    (tmp_path / "m.json").write_text(json.dumps({"labels": labels, "dataset": "mine"}))
    (model,) = discover(tmp_path)
    spec = read_spec(model, OnnxModelRuntime(model.path))
    assert spec.labels == labels
    assert spec.dataset == "mine"
    assert spec.crop_size == gray_spec.crop_size


def test_sidecar_alone_can_describe_a_model_exported_elsewhere(tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "foreign.onnx", gray_spec, embed_metadata=False)
    (tmp_path / "foreign.json").write_text(gray_spec.model_dump_json())
    (model,) = discover(tmp_path)
    assert read_spec(model, OnnxModelRuntime(model.path)) == gray_spec


def test_model_with_neither_metadata_nor_sidecar_names_what_is_missing(tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "bare.onnx", gray_spec, embed_metadata=False)
    (model,) = discover(tmp_path)
    with pytest.raises(ModelSpecError) as error:
        read_spec(model, OnnxModelRuntime(model.path))
    message = str(error.value)
    assert message.startswith("bare.onnx: missing model metadata field(s) labels, color_mode, resize_size")
    assert "sidecar JSON file" in message


def test_broken_sidecar_is_reported(tmp_path, make_classifier, gray_spec):
    make_classifier(tmp_path / "m.onnx", gray_spec)
    (tmp_path / "m.json").write_text("{not json")
    (model,) = discover(tmp_path)
    with pytest.raises(ModelSpecError, match=r"m\.json: sidecar is not valid JSON"):
        read_spec(model, OnnxModelRuntime(model.path))


def test_default_model_is_the_requested_one_or_the_first_by_name():
    assert choose_default_model(["b", "a"], None) == "a"
    assert choose_default_model(["only"], None) == "only"
    assert choose_default_model(["b", "a"], "b") == "b"
    with pytest.raises(RepositoryError, match="default model 'c' is not in the repository"):
        choose_default_model(["b", "a"], "c")


def test_serving_overrides_come_from_metadata_and_the_sidecar_wins(tmp_path, make_classifier, gray_spec):
    import onnx

    from service.modelspec import ServingOverrides, serving_to_metadata_props
    from service.repository import read_metadata

    path = make_classifier(tmp_path / "m.onnx", gray_spec)
    model = onnx.load(str(path))
    for key, value in serving_to_metadata_props(ServingOverrides(max_batch_size=8, intra_op_threads=1)).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    (tmp_path / "m.json").write_text(json.dumps({"serving": {"max_batch_size": 4, "max_batch_delay_ms": 2}}))
    (found,) = discover(tmp_path)
    metadata = read_metadata(found, OnnxModelRuntime(found.path))
    assert metadata.serving.as_dict() == {"max_batch_size": 4, "max_batch_delay_ms": 2.0, "intra_op_threads": 1}
    assert metadata.spec == gray_spec  # the serving section is not a spec field


@pytest.mark.parametrize(
    "section,message",
    [
        ({"max_queue_wait_ms": 0}, "m.json: serving.max_queue_wait_ms: Input should be greater than 0"),
        (
            {"max_batch_size": 2000},
            "m.json: serving.max_batch_size: Value error, must be between 1 and 1024, or 'auto'",
        ),
        ([1, 2], "m.json: 'serving' must be a JSON object"),
    ],
)
def test_invalid_serving_overrides_name_the_file_and_field(tmp_path, make_classifier, gray_spec, section, message):
    from service.repository import read_metadata

    make_classifier(tmp_path / "m.onnx", gray_spec)
    (tmp_path / "m.json").write_text(json.dumps({"serving": section}))
    (found,) = discover(tmp_path)
    with pytest.raises(ModelSpecError) as error:
        read_metadata(found, OnnxModelRuntime(found.path))
    assert message in str(error.value)
