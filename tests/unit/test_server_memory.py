"""The allocator setting the server makes at start-up (service.server.return_freed_memory_to_the_os).

Each check runs in a process of its own: mallopt changes the whole process, and page faults and RSS are the
process's."""

from __future__ import annotations

import json
import subprocess
import sys

_SCRIPT = """
import json, resource, sys
import numpy as np
from service.memory import resident_memory_bytes
from service.server import return_freed_memory_to_the_os

assert return_freed_memory_to_the_os()
request_sized = 3 * 224 * 224  # float32: a ResNet-50 input tensor, 602 kB
for _ in range(5):
    np.ones(request_sized, dtype=np.float32)
faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
for _ in range(200):
    np.ones(request_sized, dtype=np.float32)  # allocated, written, freed: as each request's buffers are
request_faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults

idle = resident_memory_bytes()
large = [np.ones(32 * 2**20, dtype=np.uint8) for _ in range(4)]  # four 32 MiB uploads at the limit
held = resident_memory_bytes()
del large
json.dump({"request_faults": request_faults, "held": held - idle, "after": resident_memory_bytes() - idle}, sys.stdout)
"""


def test_request_sized_buffers_are_reused_and_large_ones_go_back_to_the_os():
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    # At a 128 KiB threshold each of the 200 buffers was a new mapping, faulted in page by page: 147 faults each.
    assert measured["request_faults"] < 200, measured
    assert measured["held"] > 120 * 2**20, measured
    assert measured["after"] < 8 * 2**20, measured
