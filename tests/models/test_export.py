import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models import export
from models.resnet import cifar_resnet
from service.modelspec import build_spec, fields_from_metadata_props


def served_spec(path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session, build_spec(
        fields_from_metadata_props(session.get_modelmeta().custom_metadata_map), source=str(path)
    )


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    report = export.main(
        [
            "--checkpoint",
            str(tiny_run / "checkpoint.pt"),
            "--output",
            str(out),
            "--accuracy-limit",
            "200",
            "--serving",
            "max_batch_size=4",
            "--serving",
            "max_batch_delay_ms=1.5",
        ]
    )
    return out, report


def test_export_round_trip_metadata_is_readable_by_the_service_schema(exported):
    path, report = exported
    _, spec = served_spec(path)
    assert spec.architecture == "resnet8" and spec.color_mode == "L" and spec.crop_size == 28
    assert spec.labels[0] == "T-shirt/top" and len(spec.labels) == 10
    assert spec.test_accuracy == pytest.approx(report["fp32_test_accuracy"])
    assert report["parity_max_abs_diff"] <= export.PARITY_ATOL


def test_export_writes_the_models_own_serving_settings(exported):
    from service.modelspec import build_serving_overrides

    session, _ = served_spec(exported[0])
    overrides = build_serving_overrides(session.get_modelmeta().custom_metadata_map, source="tiny.onnx")
    assert overrides.as_dict() == {"max_batch_size": 4, "max_batch_delay_ms": 1.5}


@pytest.mark.parametrize(
    "pair,message",
    [
        ("max_batch_size=0", "--serving: serving.max_batch_size: Value error, must be between 1 and 1024"),
        ("batch=4", "--serving: serving.batch: Extra inputs are not permitted"),
        ("max_batch_size", "--serving takes NAME=VALUE"),
    ],
)
def test_export_refuses_an_invalid_serving_setting(pair, message, capsys):
    with pytest.raises(SystemExit):
        export.parse_args(["--torchvision", "resnet18", "--output", "x.onnx", "--serving", pair])
    assert message in capsys.readouterr().err


def test_exported_graph_has_dynamic_batch_named_io_and_opset(exported):
    path, _ = exported
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    assert not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17


@pytest.mark.parametrize("batch", [1, 5])
def test_exported_model_runs_at_batch_1_and_5(exported, batch):
    session, spec = served_spec(exported[0])
    images = np.random.default_rng(batch).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    (logits,) = session.run(["logits"], {"input": images})
    assert logits.shape == (batch, spec.num_classes)


def test_parity_check_fails_loudly_on_a_mismatch(exported):
    session, _ = served_spec(exported[0])
    images = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    torch.manual_seed(123)
    other = cifar_resnet(8).eval()
    with pytest.raises(export.ExportError, match="parity check failed at batch 1"):
        export.check_parity(other, session, images, export.PARITY_ATOL)


def test_int8_export_runs_and_reports_accuracy_next_to_fp32(tiny_run, tmp_path):
    out = tmp_path / "tiny-int8.onnx"
    report = export.main(
        [
            "--checkpoint",
            str(tiny_run / "checkpoint.pt"),
            "--output",
            str(out),
            "--quantize",
            "int8",
            "--calibration-images",
            "64",
            "--accuracy-limit",
            "200",
        ]
    )
    session, spec = served_spec(out)
    assert spec.precision == "int8" and spec.test_accuracy == report["int8_test_accuracy"]
    assert "fp32_test_accuracy" in report
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(out)).graph.node)
    assert session.run(["logits"], {"input": np.zeros((5, 1, 28, 28), np.float32)})[0].shape == (5, 10)


def test_fp16_export_keeps_float32_io(tiny_run, tmp_path):
    out = tmp_path / "tiny-fp16.onnx"
    export.main(
        ["--checkpoint", str(tiny_run / "checkpoint.pt"), "--output", str(out), "--fp16", "--accuracy-limit", "100"]
    )
    session, spec = served_spec(out)
    assert spec.precision == "fp16"
    assert session.get_inputs()[0].type == "tensor(float)"


def test_torchvision_resnet18_state_dict_exports(tmp_path):
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    out = tmp_path / "resnet18.onnx"
    report = export.main(
        ["--torchvision", "resnet18", "--weights", str(tmp_path / "resnet18.pth"), "--output", str(out)]
    )
    _, spec = served_spec(out)
    assert spec.architecture == "resnet18" and spec.color_mode == "RGB" and spec.num_classes == 1000
    assert spec.labels[0] == "tench" and (spec.resize_size, spec.crop_size) == (256, 224)
    assert report["parity_max_abs_diff"] <= export.PARITY_ATOL


def test_missing_checkpoint_fails_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"checkpoint .* not found"):
        export.main(["--checkpoint", str(tmp_path / "nope.pt"), "--output", str(tmp_path / "x.onnx")])
    assert not (tmp_path / "x.onnx").exists()
