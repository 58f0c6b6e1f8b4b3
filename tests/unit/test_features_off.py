"""Every feature of the operators' issue is off by default and then costs nothing: a server built with the default
settings imports none of their libraries (OpenTelemetry's SDK, `limits`, `ssl` for the listeners' certificates) and
its request path's hooks return at once."""

from __future__ import annotations

import subprocess
import sys

from service import tracing
from service.auth import current_key


def test_a_default_server_imports_no_feature_library():
    code = (
        "import sys\n"
        "from service.model_server import ModelServer\n"
        "from service.server import http_protocol_class\n"
        "server = ModelServer()\n"
        "server.http_app()\n"
        "print(sorted(name for name in ('opentelemetry.sdk', 'limits', 'service.tls', 'service.rate_windows') "
        "if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr


def test_the_tracing_hooks_do_nothing_when_tracing_is_off():
    assert not tracing.enabled()
    assert tracing.link() is None
    assert tracing.start_request("GET /", {}, "id") is None
    with tracing.stage("decode") as inside:
        assert inside is None
    assert tracing.traced("admission", print) is print
    tracing.ran(0.0, 0.0, 0.0)
    tracing.batch_ran("m", [None], 0.0, 1.0)
    tracing.end_request(None)
    assert current_key.get() is None
