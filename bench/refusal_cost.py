"""``python -m bench.refusal_cost``: the server's CPU per refused request, measured alone (under a minute).

A server (`python -m service`, one worker, no access log, gRPC off) gets one upload that declares the whole byte
budget and never sends its body, so that every later upload is refused at admission with 503 ``overloaded``, as
in a burst. Then `--count` complete /v1 uploads of a small PNG are sent back to back by `--clients` clients of
the bench's own load generator (keep-alive, reconnecting when the server closes). The server's CPU time over the
refusals (utime + stime from /proc) divided by their number is the cost of one refusal, beside the client's own.

    python -m bench.refusal_cost                    # 2000 refusals, 4 clients
    python -m bench.refusal_cost --count 5000 --clients 8
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from bench.loadgen import HttpConnection, multipart_request

REPO_ROOT = Path(__file__).resolve().parents[1]
BUDGET_BYTES = 1 << 20


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_server() -> tuple[subprocess.Popen[bytes], int]:
    flags = ["--workers", "1", "--port", "0", "--grpc-port", "0", "--no-access-log"]
    budget = ["--max-upload-bytes", str(BUDGET_BYTES), "--max-inflight-bytes", str(BUDGET_BYTES)]
    process = subprocess.Popen(
        [sys.executable, "-m", "service", *flags, *budget],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert process.stderr is not None
    seen = b""
    give_up = time.monotonic() + 120
    while time.monotonic() < give_up:
        seen += process.stderr.readline()
        if b"all 1 model(s) ready" in seen:
            port = re.search(rb"running on http://127\.0\.0\.1:(\d+)", seen)
            assert port is not None
            return process, int(port.group(1))
    process.kill()
    raise SystemExit(f"the server did not get ready:\n{seen.decode(errors='replace')}")


async def _refusals(port: int, count: int, clients: int, request: bytes) -> Counter[int]:
    statuses: Counter[int] = Counter()
    remaining = count

    async def client() -> None:
        nonlocal remaining
        connection = HttpConnection("127.0.0.1", port)
        while remaining > 0:
            remaining -= 1
            statuses[(await connection.send(request)).status] += 1
        connection.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--py-spy", metavar="FILE", help="also record the server with py-spy (collapsed stacks)")
    args = parser.parse_args()
    server, port = _start_server()
    try:
        holder = socket.create_connection(("127.0.0.1", port))
        holder.sendall(
            f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {BUDGET_BYTES}\r\n\r\n".encode()
        )
        request = multipart_request("127.0.0.1", port, "/v1/classify", _png(), "x.png", "image/png")
        asyncio.run(_refusals(port, 50, 1, request))  # the first requests warm the paths up
        spy = None
        if args.py_spy:
            spy_bin = Path(sys.executable).with_name("py-spy")
            spy = subprocess.Popen(
                [str(spy_bin), "record", "-p", str(server.pid), "-o", args.py_spy, "-f", "raw", "-r", "250", "-n"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # py-spy attaches
        server_before, client_before = _cpu_s(server.pid), resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        statuses = asyncio.run(_refusals(port, args.count, args.clients, request))
        elapsed = time.monotonic() - started
        server_s = _cpu_s(server.pid) - server_before
        after = resource.getrusage(resource.RUSAGE_SELF)
        client_s = after.ru_utime + after.ru_stime - client_before.ru_utime - client_before.ru_stime
        holder.close()
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
    finally:
        server.kill()
        server.wait()
    print(f"statuses: {dict(statuses)} in {elapsed:.1f} s ({args.count / elapsed:.0f} refusals/s)")
    print(
        f"server CPU per refusal: {server_s / args.count * 1000:.3f} ms; client CPU per request: "
        f"{client_s / args.count * 1000:.3f} ms"
    )


if __name__ == "__main__":
    main()
