import os
import subprocess
import sys


def _telemetry_setting(env: dict[str, str]) -> str:
    code = "import service, os; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_importing_the_service_turns_onnxruntime_telemetry_off_unless_the_operator_opted_in():
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    assert _telemetry_setting(env) == "1"
    assert _telemetry_setting({**env, "ORT_DISABLE_TELEMETRY": "0"}) == "0"


def test_the_serving_path_never_imports_torch():
    code = "import sys, service.app, service.__main__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_the_models_load_before_the_web_stack_is_imported():
    # service.model_server starts loading (ModelServer.begin_loading) while the worker goes on to import the front
    # ends: creating a session releases the GIL, so the two overlap. Importing a front end here would undo that.
    code = (
        "import sys, service.model_server; "
        "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'grpc') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
