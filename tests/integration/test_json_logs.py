"""JSON logs carry nothing but JSON: real servers started with --log-format json are made to warn from Python
(numpy's RuntimeWarning, from a valid-but-extreme request) and from C++ (gRPC core's own error line when its port
is taken), and to meet hostile bytes on the gRPC port; every line of their output must parse as one JSON object
with the log's fields."""

from __future__ import annotations

import json
import signal
import socket

import grpc
import httpx
import pytest

from tests.integration.conftest import ServerProcess, free_port

EXTREME = 7.017038286703837e36
"""A finite float32 that drives the bundled model's logits to +inf and -inf, so that its softmax warns."""


def json_entries(server: ServerProcess) -> list[dict]:
    entries = []
    for number, line in enumerate(server.log().splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} of the JSON log is not JSON: {line!r}") from None
        assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= entry.keys(), line
        assert entry["level"] in ("debug", "info", "warning", "error", "critical"), line
        entries.append(entry)
    return entries


def test_python_warnings_reach_the_json_log_as_json(start_server):
    server = start_server("--workers", "1", "--log-format", "json").wait_ready()
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [EXTREME] * 784}],
        "outputs": [{"name": "logits", "parameters": {"classification": 3}}],
    }
    answer = httpx.post(server.url + "/v2/models/fashion-mnist-resnet20/infer", json=body, timeout=60)
    assert answer.status_code == 200  # valid JSON out, scores that are not numbers included
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    warnings = [entry for entry in json_entries(server) if entry["logger"] == "py.warnings"]
    assert any("RuntimeWarning" in entry["message"] and entry["level"] == "warning" for entry in warnings), warnings


def test_what_grpc_core_writes_from_cpp_is_wrapped_as_json(start_server):
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        server = start_server("--workers", "1", "--log-format", "json", "--grpc-port", str(taken.getsockname()[1]))
        assert server.wait_exit() == 3
    finally:
        taken.close()
    native = [entry for entry in json_entries(server) if entry["logger"] == "stderr"]
    assert any("add_port" in entry["message"] and entry["level"] == "error" for entry in native), native


def test_hostile_bytes_and_malformed_calls_on_the_grpc_port_leave_only_json(start_server):
    port = free_port()
    server = start_server("--workers", "1", "--log-format", "json", "--grpc-port", str(port)).wait_ready()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 64)  # not HTTP/2 at all
        raw.settimeout(30)
        try:
            while raw.recv(4096):
                pass
        except OSError:
            pass
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\xff\xff", timeout=30)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    json_entries(server)
