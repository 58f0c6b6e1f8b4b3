"""`ModelServer`: what a serving process's start-up leaves behind."""

from __future__ import annotations

import subprocess
import sys


def test_a_process_started_without_the_collector_has_it_again_once_the_models_are_warm():
    # The entry points turn the collector off for start-up; the server must turn it back on (and keep what start-up
    # made out of its sight), or the process would run for good without one. In a fresh process: the collector is
    # process-wide, and the test run's own must not be touched.
    code = (
        "import asyncio, gc\n"
        "from service.model_server import ModelServer\n"
        "async def main():\n"
        "    server = ModelServer()\n"
        "    async with server.running(warm_before_serving=True):\n"
        "        print(gc.isenabled(), gc.get_freeze_count() > 10_000, server.lifecycle.ready)\n"
        "gc.disable()\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["True", "True", "True"], done.stdout + done.stderr[-3000:]
