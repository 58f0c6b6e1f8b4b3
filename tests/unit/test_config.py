"""Settings: environment variables, command-line flags, validation, documentation."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.__main__ import build_parser, load_settings
from service.config import BUNDLED_MODEL_DIR, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_defaults_serve_the_bundled_repository():
    settings = Settings()
    assert settings.model_dir == REPO_ROOT / "service" / "bundled_models" == BUNDLED_MODEL_DIR
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.providers == ["cpu"]
    assert settings.jpeg_draft is True


def test_every_setting_is_documented_and_has_a_flag():
    help_text = build_parser().format_help()
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no docstring"
        assert "--" + name.replace("_", "-") in help_text
        assert "RESNET_SERVE_" + name.upper() in help_text


def test_environment_variables_use_the_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNET_SERVE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("RESNET_SERVE_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("RESNET_SERVE_PROVIDERS", "cuda, cpu")
    monkeypatch.setenv("RESNET_SERVE_JPEG_DRAFT", "false")
    settings = Settings()
    assert settings.max_batch_size == 7
    assert settings.model_dir == tmp_path
    assert settings.providers == ["cuda", "cpu"]
    assert settings.jpeg_draft is False


def test_flags_parse_and_win_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNET_SERVE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("RESNET_SERVE_PORT", "9000")
    settings = load_settings(
        [
            "--max-batch-size",
            "32",
            "--max-batch-delay-ms",
            "2.5",
            "--max-queue-size",
            "64",
            "--request-timeout-s",
            "3",
            "--intra-op-threads",
            "2",
            "--providers",
            "auto",
            "--model-dir",
            str(tmp_path),
            "--no-jpeg-draft",
            "--host",
            "0.0.0.0",
        ]
    )
    assert settings.max_batch_size == 32
    assert settings.port == 9000  # not given as a flag: the environment still applies
    assert settings.max_batch_delay_ms == 2.5
    assert settings.max_batch_delay_s == 0.0025
    assert settings.max_queue_size == 64
    assert settings.request_timeout_s == 3.0
    assert settings.intra_op_threads == 2
    assert settings.providers == ["auto"]
    assert settings.model_dir == tmp_path
    assert settings.jpeg_draft is False
    assert settings.host == "0.0.0.0"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--max-batch-size", "0"], "max_batch_size"),
        (["--port", "http"], "port"),
        (["--providers", "quantum"], "unknown execution provider 'quantum'"),
        (["--max-queue-size", "4", "--max-files-per-request", "8"], "must be at least max_files_per_request"),
    ],
)
def test_invalid_flags_exit_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        load_settings(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_every_setting_is_in_the_operations_doc():
    doc = (REPO_ROOT / "docs" / "SERVICE.md").read_text()
    for name in Settings.model_fields:
        assert f"`RESNET_SERVE_{name.upper()}`" in doc, f"docs/SERVICE.md does not document {name}"


def test_cors_origins_are_a_comma_separated_list_of_origins(monkeypatch):
    monkeypatch.setenv("RESNET_SERVE_CORS_ORIGINS", "https://app.example.com, http://127.0.0.1:5173")
    assert Settings().cors_origins == ["https://app.example.com", "http://127.0.0.1:5173"]
    assert Settings(cors_origins="*").cors_origins == ["*"]
    assert Settings().model_copy(update={"cors_origins": []}).cors_origins == []
    with pytest.raises(ValueError, match="is not an origin: write a scheme and a host"):
        Settings(cors_origins="https://app.example.com/path")
    with pytest.raises(ValueError, match="is not an origin"):
        Settings(cors_origins="app.example.com")
