import json
import subprocess
import sys

import torch

from models import train


def test_run_writes_checkpoint_metrics_and_plot(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["arch"] == "resnet8" and len(metrics["history"]) == 1
    assert set(metrics["history"][0]) >= {"train_loss", "train_accuracy", "test_accuracy", "train_seconds"}
    assert (tiny_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = torch.load(tiny_run / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert checkpoint["format"] == train.CHECKPOINT_FORMAT and checkpoint["epoch"] == 1


def _run(out, *extra):
    train.main(
        [
            "--arch",
            "resnet8",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--limit-train",
            "192",
            "--limit-test",
            "32",
            "--threads",
            "2",
            "--out",
            str(out),
            *extra,
        ]
    )
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)


def test_same_seed_is_deterministic_and_resume_continues_bit_for_bit(tmp_path):
    straight = _run(tmp_path / "a")
    again = _run(tmp_path / "b")
    _run(tmp_path / "c", "--stop-after-epoch", "1")
    resumed = _run(tmp_path / "c", "--resume")
    for other in (again, resumed):
        assert all(
            torch.equal(a, b)
            for a, b in zip(straight["state_dict"].values(), other["state_dict"].values(), strict=False)
        )
    assert [h["train_loss"] for h in straight["history"]] == [h["train_loss"] for h in again["history"]]


def test_missing_data_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "models.train", "--data-dir", str(tmp_path), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "apt-get install dataset-fashion-mnist" in result.stderr
