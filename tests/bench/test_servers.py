"""How the bench starts each server: the command lines it runs."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.servers import GRANIAN, NAIVE, OURS, compile_bytecode
from bench.workload import ModelCase


def case(tmp_path: Path) -> ModelCase:
    return ModelCase("bundled", "fashion-mnist-resnet20", "bundled", "fp32", tmp_path / "fashion-mnist-resnet20")


def test_granian_serves_our_app_factory_with_the_model_and_settings_from_the_environment(tmp_path):
    command = GRANIAN.command(case(tmp_path), 8123, ("--backlog", "64"))
    assert command[0] == "env"
    assert f"RESNET_SERVE_MODEL_DIR={tmp_path / 'fashion-mnist-resnet20'}" in command
    assert "RESNET_SERVE_ACCESS_LOG=false" in command
    module = command.index("-m")
    assert command[module - 1] == sys.executable and command[module + 1] == "granian"
    assert command[command.index("--interface") + 1] == "asgi" and "--factory" in command
    assert command[command.index("--port") + 1] == "8123"
    assert command[command.index("--workers") + 1] == "1"
    assert command[-3:] == ["--backlog", "64", "service.app:create_app"]
    assert GRANIAN.readiness_path == OURS.readiness_path == "/readyz"


def test_ours_and_the_naive_server_keep_their_own_commands(tmp_path):
    ours = OURS.command(case(tmp_path), 8124, ())
    assert ours[1:3] == ["-m", "service"] and "--no-access-log" in ours
    naive = NAIVE.command(case(tmp_path), 8125, ())
    assert naive[1:3] == ["-m", "bench.naive_server"]


def test_our_package_gets_bytecode_before_a_start_even_where_python_writes_none(tmp_path, monkeypatch):
    # This project's machines set PYTHONDONTWRITEBYTECODE: without compile_bytecode every start of ours would compile
    # its modules from source, which the naive server (one script) hardly pays.
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    package = tmp_path / "service"
    (package / "api").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "api" / "schemas.py").write_text("X = 1\n")
    compile_bytecode(tmp_path)
    tag = sys.implementation.cache_tag
    assert (package / "__pycache__" / f"__init__.{tag}.pyc").is_file()
    assert (package / "api" / "__pycache__" / f"schemas.{tag}.pyc").is_file()
