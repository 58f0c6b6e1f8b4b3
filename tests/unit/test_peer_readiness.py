import os
import subprocess
import sys

from service import peer_readiness
from service.lifecycle import Lifecycle


def test_a_live_warming_worker_keeps_the_others_unready_until_it_is_ready(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        peer_readiness.mark_warming(tmp_path, other.pid)
        lifecycle = Lifecycle(tmp_path)
        lifecycle.mark_ready()
        assert lifecycle.ready and not lifecycle.ready_everywhere
        peer_readiness.clear_mark(tmp_path, other.pid)
        assert lifecycle.ready_everywhere
    finally:
        other.kill()
        other.wait()


def test_a_worker_is_not_held_back_by_its_own_mark_nor_by_a_dead_workers(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    peer_readiness.mark_warming(tmp_path, dead.pid)
    assert not peer_readiness.others_warming(tmp_path, os.getpid())
    peer_readiness.mark_warming(tmp_path, os.getpid())
    assert not peer_readiness.others_warming(tmp_path, os.getpid())


def test_a_worker_takes_its_mark_away_when_ready_and_when_it_drains(tmp_path):
    for finish in ("mark_ready", "begin_drain"):
        peer_readiness.mark_warming(tmp_path, os.getpid())
        getattr(Lifecycle(tmp_path), finish)()
        assert not (tmp_path / "warming" / str(os.getpid())).exists()


def test_serving_alone_no_folder_is_read():
    lifecycle = Lifecycle()
    assert not lifecycle.ready_everywhere
    lifecycle.mark_ready()
    assert lifecycle.ready_everywhere
