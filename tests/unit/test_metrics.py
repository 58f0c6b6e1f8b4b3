"""The metrics registry: per app, named consistently, documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from service.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "SERVICE.md"


def families(metrics: ServiceMetrics) -> dict[str, str]:
    """Metric families by name and type, without prometheus-client's automatic *_created timestamps."""
    return {
        f.name: f.type
        for f in text_string_to_metric_families(metrics.render().decode())
        if not f.name.endswith("_created")
    }


def test_two_apps_in_one_process_have_separate_registries():
    first, second = ServiceMetrics(), ServiceMetrics()
    first.images_classified.labels("m", "1").inc(3)
    second.register_model("m")
    assert 'resnet_serve_images_classified_total{model="m",version="1"} 3.0' in first.render().decode()
    assert 'resnet_serve_images_classified_total{model="m",version="1"} 0.0' in second.render().decode()


def test_every_metric_is_prefixed_and_documented():
    metrics = ServiceMetrics()
    observer = metrics.register_model("m")
    observer.queue_changed(2)
    observer.batch_ran(4, 0.01)
    observer.item_dequeued(0.002)
    observer.items_dropped("timeout", 1)
    doc = DOC.read_text()
    names = families(metrics)
    assert len(names) >= 12
    for name, kind in names.items():
        assert name.startswith("resnet_serve_")
        exposed = name + "_total" if kind == "counter" else name
        assert f"`{exposed}`" in doc, f"docs/SERVICE.md does not list {exposed}"


def test_queue_depth_follows_the_batcher():
    metrics = ServiceMetrics()
    observer = metrics.register_model("m")
    observer.queue_changed(7)
    assert 'resnet_serve_queue_depth{model="m",version="1"} 7.0' in metrics.render().decode()


def test_every_rejection_reason_starts_at_zero():
    text = ServiceMetrics().render().decode()
    for reason in ("overloaded", "invalid_image", "too_large", "unsupported_type", "timeout"):
        assert f'resnet_serve_rejections_total{{reason="{reason}"}} 0.0' in text


def test_every_error_class_reason_is_counted_and_an_unknown_reason_fails():
    import pytest

    from service import errors

    metrics = ServiceMetrics()
    classes = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.ServiceError)]
    assert len(classes) >= 15
    for cls in classes:
        metrics.count_rejection(cls("x"))  # raises if the reason were missing from the list
    assert "internal_error" in metrics.rejection_reasons

    # An error class the list was not derived from (defined after the registry was built) is refused loudly.
    class Unlisted(errors.ServiceError):
        reason = "never_listed"

    with pytest.raises(ValueError, match="never_listed"):
        metrics.count_rejection(Unlisted("x"))


def test_readiness_withheld_is_remembered_and_written_when_published_again():
    metrics = ServiceMetrics()
    metrics.withhold_readiness()
    metrics.register_model("m")
    assert "resnet_serve_model_ready{" not in metrics.render().decode()  # a worker not yet serving has no say
    metrics.set_model_ready("m", "1", True)
    metrics.publish_readiness()
    assert 'resnet_serve_model_ready{model="m",version="1"} 1.0' in metrics.render().decode()
    metrics.withhold_readiness()
    metrics.set_model_ready("m", "1", False)  # a retiring worker unloads: the others still serve the model
    assert 'resnet_serve_model_ready{model="m",version="1"} 1.0' in metrics.render().decode()


WORKER_SCRAPE = """
import sys
from pathlib import Path
from service.metrics import ServiceMetrics

folder = Path(sys.argv[1])
metrics = ServiceMetrics()
metrics.images_classified.labels("m", "1").inc(3)
# A worker that created its file and died before sizing it (or is about to size it): 0 bytes.
(folder / "counter_4194304.db").touch()
(folder / "gauge_livesum_4194304.db").touch()
sys.stdout.write(metrics.render().decode())
"""


def test_a_scrape_with_worker_processes_reads_past_a_file_not_yet_sized(tmp_path):
    # prometheus-client picks its file-backed values at import, so the workers' mode needs a process of its own.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", WORKER_SCRAPE, str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert 'resnet_serve_images_classified_total{model="m",version="1"} 3.0' in done.stdout
