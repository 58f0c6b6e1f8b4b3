"""What a per-key rate costs a request: `KeyRateLimits.admit` for a key with a rate, with the counters in anonymous
memory (one process) and in the shared file the worker processes use, against a key without a rate.

    python -m bench.ratelimit            # about 2 seconds; prints microseconds per request

The figure is one process's, hitting alone: with several workers, hits at the same instant wait for each other's
`flock` (a few microseconds each).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

from service.auth import ApiKey
from service.errors import RateLimited
from service.ratelimit import KeyRateLimits


def microseconds_per_admit(limits: KeyRateLimits, key: ApiKey, count: int) -> float:
    limits.admit(key)  # makes the storage
    started = time.perf_counter()
    for _ in range(count):
        with contextlib.suppress(RateLimited):
            limits.admit(key)
    return (time.perf_counter() - started) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args(argv)
    key = ApiKey("bench", rate=f"{args.count * 100}/hour")  # never reached: every hit is counted and let in
    with tempfile.TemporaryDirectory() as folder:
        rows = [
            ("key without a rate", microseconds_per_admit(KeyRateLimits(), ApiKey("free"), args.count)),
            ("rate, one process (anonymous memory)", microseconds_per_admit(KeyRateLimits(), key, args.count)),
            (
                "rate, workers' shared file (flock)",
                microseconds_per_admit(KeyRateLimits(Path(folder)), key, args.count),
            ),
        ]
    for name, micros in rows:
        print(f"{name:40s} {micros:7.2f} µs per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
