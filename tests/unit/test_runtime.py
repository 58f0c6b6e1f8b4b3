"""The ONNX Runtime wrapper: CPU counting, provider choice, session options, running a real model."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from service.modelspec import ModelSpec
from service.runtime import OnnxModelRuntime, available_cpus, cgroup_cpu_limit, resolve_providers


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_along_the_process_path(tmp_path):
    write(tmp_path / "proc_cgroup", "0::/kubepods/pod1/ctr\n")
    write(tmp_path / "fs" / "kubepods" / "cpu.max", "max 100000\n")
    write(tmp_path / "fs" / "kubepods" / "pod1" / "cpu.max", "250000 100000\n")
    write(tmp_path / "fs" / "kubepods" / "pod1" / "ctr" / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(tmp_path / "fs", tmp_path / "proc_cgroup") == 1.5


def test_cgroup_v2_inside_a_container_reads_the_namespace_root(tmp_path):
    write(tmp_path / "proc_cgroup", "0::/host/path/not/visible\n")
    write(tmp_path / "fs" / "cpu.max", "50000 100000\n")
    assert cgroup_cpu_limit(tmp_path / "fs", tmp_path / "proc_cgroup") == 0.5


def test_cgroup_v1_quota(tmp_path):
    write(tmp_path / "proc_cgroup", "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n")
    write(tmp_path / "fs" / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "300000\n")
    write(tmp_path / "fs" / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path / "fs", tmp_path / "proc_cgroup") == 3.0


def test_unlimited_cgroups_have_no_limit(tmp_path):
    write(tmp_path / "proc_cgroup", "0::/\n1:cpu:/\n")
    write(tmp_path / "fs" / "cpu.max", "max 100000\n")
    write(tmp_path / "fs" / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "fs" / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path / "fs", tmp_path / "proc_cgroup") is None


def test_available_cpus_respects_the_affinity_mask():
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_providers_fall_back_to_cpu_and_say_so(caplog):
    available = ["CPUExecutionProvider"]
    with caplog.at_level(logging.WARNING, logger="service.runtime"):
        assert resolve_providers(["cuda", "cpu"], available) == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider is not available" in caplog.text
    assert resolve_providers(["auto"], available) == ["CPUExecutionProvider"]
    assert resolve_providers(["auto"], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert resolve_providers(["cuda"], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_runtime_runs_a_real_model_like_onnxruntime_itself(tiny_model_dir, rgb_spec):
    path = tiny_model_dir / "tiny-rgb.onnx"
    runtime = OnnxModelRuntime(path, providers=["cpu"], intra_op_threads=1)
    batch = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    direct = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"input": batch})[0]
    np.testing.assert_allclose(runtime.run(batch), direct, rtol=1e-5, atol=1e-5)
    assert runtime.provider == "CPUExecutionProvider"
    assert runtime.supports_batches()
    runtime.check_compatible(rgb_spec)
    runtime.warm_up([1, 2, 4], (3, 32, 32))


def test_session_does_not_spin_and_uses_the_requested_threads(tiny_model_dir):
    runtime = OnnxModelRuntime(tiny_model_dir / "tiny-rgb.onnx", intra_op_threads=3)
    options = runtime.session_options
    assert options.intra_op_num_threads == 3
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_threads_default_to_the_available_cpus(tiny_model_dir):
    assert OnnxModelRuntime(tiny_model_dir / "tiny-rgb.onnx").intra_op_threads == available_cpus()


def test_metadata_props_carry_the_embedded_spec(tiny_model_dir):
    props = OnnxModelRuntime(tiny_model_dir / "tiny-gray.onnx").metadata_props
    assert props["modelspec.color_mode"] == '"L"'


def test_incompatible_spec_is_described(tiny_model_dir, rgb_spec):
    runtime = OnnxModelRuntime(tiny_model_dir / "tiny-rgb.onnx")
    wrong = ModelSpec(
        **{
            **rgb_spec.model_dump(),
            "color_mode": "L",
            "mean": [0.5],
            "std": [0.5],
            "crop_size": 28,
            "input_name": "pixels",
        }
    )
    with pytest.raises(ValueError, match="input") as error:
        runtime.check_compatible(wrong)
    message = str(error.value)
    assert "graph input is named 'input', metadata says 'pixels'" in message
    assert "input axis 1 is 3, metadata implies 1" in message
    assert "input axis 2 is 32, metadata implies 28" in message


def test_fixed_batch_of_one_is_reported(tmp_path, make_classifier, gray_spec):
    path = make_classifier(tmp_path / "fixed.onnx", gray_spec, fixed_batch=1)
    runtime = OnnxModelRuntime(path)
    runtime.check_compatible(gray_spec)
    assert not runtime.supports_batches()


# In a process of its own: the test run's process holds 1.6 GB from earlier tests, and what its other threads
# allocate or free meanwhile moved its RSS by tens of MB (a CI run read 51 MB kept of an 87 MB batch).
_RELEASE_SCRIPT = """
import json, sys
import numpy as np
from service.config import BUNDLED_MODEL_DIR
from service.memory import resident_memory_bytes
from service.runtime import OnnxModelRuntime
from service.server import return_freed_memory_to_the_os

assert return_freed_memory_to_the_os()  # as the server does: large blocks are their own mappings
runtime = OnnxModelRuntime(next(BUNDLED_MODEL_DIR.glob("*.onnx")), intra_op_threads=1)
shape = runtime.input_shape[1:]
runtime.run(np.zeros((1, *shape), dtype=np.float32))  # as warm-up does: batch 1 first
at_batch_1 = resident_memory_bytes()
big = runtime.run(np.zeros((512, *shape), dtype=np.float32))
after_batch = resident_memory_bytes()
runtime.release_batch_memory(shape)
released = resident_memory_bytes()
again = runtime.run(np.zeros((512, *shape), dtype=np.float32))
same = bool(np.allclose(again, big, rtol=1e-5, atol=1e-5))
json.dump({"at_batch_1": at_batch_1, "after_batch": after_batch, "released": released, "same": same}, sys.stdout)
"""


def test_releasing_batch_memory_gives_back_what_a_large_batch_left_in_the_arena():
    done = subprocess.run(
        [sys.executable, "-c", _RELEASE_SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    rss = json.loads(done.stdout)
    assert rss["after_batch"] - rss["at_batch_1"] > 40 * 2**20, rss  # the arena kept the batch's activations
    assert rss["released"] - rss["at_batch_1"] < 10 * 2**20, rss
    assert rss["same"]  # and the next batch allocates it again, with the same answers
