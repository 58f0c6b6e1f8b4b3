"""`python -m bench.ready`: real cold starts of both servers, and a clear refusal of what it cannot measure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.ready import main
from bench.workload import REPO_ROOT


def test_an_unknown_model_or_no_start_is_refused_with_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--models", "resnet1000"], ["--starts", "0"]):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
        assert "--models takes some of" in capsys.readouterr().err


def test_it_starts_each_server_and_prints_its_starts_beside_the_session_load(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.ready", "--models", "bundled", "--starts", "2", "--cache-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    rows = [line.strip("|").split("|") for line in completed.stdout.splitlines() if line.startswith("| Fashion")]
    assert [cells[1].strip() for cells in rows] == ["ours", "naive"]
    for cells in rows:
        starts = [float(start) for start in cells[2].split(",")]
        median, session_load = float(cells[3]), float(cells[4])
        assert len(starts) == 2 and all(0 < start < 60 for start in starts)
        assert median == min(starts)  # the lower middle of two
        assert 0 < session_load < median  # a process cannot be ready before its session could be made
