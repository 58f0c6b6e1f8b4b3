import os

from service import logs


def test_valid_client_ids_are_kept_and_others_replaced():
    assert logs.request_id_from("trace-1.a:b_C") == "trace-1.a:b_C"
    for bad in (None, "", "has spaces", "x" * 129, "semi;colon"):
        assert logs.request_id_from(bad) != bad


def test_made_ids_never_repeat_in_a_process_or_across_a_fork():
    made = {logs.request_id_from(None) for _ in range(1000)}
    assert len(made) == 1000
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child's IDs must not retrace the parent's sequence
        os.write(write, logs.request_id_from(None).encode())
        os._exit(0)
    os.waitpid(child, 0)
    from_child = os.read(read, 200).decode()
    os.close(read), os.close(write)
    assert from_child not in made and from_child.split("-")[0] != next(iter(made)).split("-")[0]


def test_a_native_line_keeps_the_level_its_library_gave_it():
    import logging

    assert logs.native_level("E1202 21:01:03.985966    5775 add_port.cc:83] Failed to add port") == logging.ERROR
    assert (
        logs.native_level("W0000 00:00:1733 fork_posix.cc:71] Other threads are currently calling") == logging.WARNING
    )
    assert logs.native_level("I1202 21:01:03.9 chttp2_transport.cc:1] something") == logging.INFO
    assert logs.native_level("[W:onnxruntime:, graph.cc:5809 CleanUnusedInitializers] Removing") == logging.WARNING
    assert logs.native_level("[E:onnxruntime:, session.cc:1] failed") == logging.ERROR
    assert logs.native_level("Traceback (most recent call last):") == logging.WARNING  # no marker: a warning


def _log_then_exit(path: str, lines: int) -> None:
    import logging
    import sys

    with open(path, "w") as sys.stderr:  # (pytest's capture, inherited, would hold the lines otherwise)
        logs.configure("INFO", "text")
        for number in range(lines):
            logging.getLogger("service").info("line %d", number)
        try:
            sys.exit(0)
        finally:
            logs.stop()  # as service.workers.worker_main does


def test_a_forked_worker_writes_every_line_it_logged_before_it_exits(tmp_path):
    # multiprocessing ends a forked child with os._exit, skipping atexit: without logs.stop the background writer
    # is cut off with lines still queued (a worker's "cannot start" reason went missing so).
    import multiprocessing

    path, lines = tmp_path / "stderr.txt", 20_000
    child = multiprocessing.get_context("fork").Process(target=_log_then_exit, args=(str(path), lines))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    written = [line for line in path.read_text().splitlines() if " INFO service: line " in line]
    assert len(written) == lines
    assert written[-1].endswith(f"line {lines - 1}")
