"""``python -m service`` / ``resnet-serve``: run the server with uvicorn.

Every `Settings` field is a flag (``--max-batch-size 32``) and an environment variable
(``RESNET_SERVE_MAX_BATCH_SIZE=32``); a flag wins over the environment.

One process, one event loop, one copy of each model: scale out with more processes behind a load balancer,
not with uvicorn workers (each would hold its own model copy and split the batches).

Shutdown: the first SIGTERM (or Ctrl-C) starts a drain: /readyz answers 503 and new requests are refused with
503 while the server keeps listening, requests already in flight (uploading, queued or running) finish, then
uvicorn stops and the process exits 0. The drain lasts at most ``shutdown_grace_s``; a second signal stops at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import typing
from collections.abc import Sequence
from types import FrameType

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.config import ENV_PREFIX, Settings
from service.lifecycle import Lifecycle

logger = logging.getLogger("service")

EXIT_STARTUP_FAILED = 3
_GRACEFUL_CONNECTION_CLOSE_S = 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-serve",
        description="Serve every ONNX classifier in a model folder over HTTP, with dynamic batching.",
        epilog=f"Every flag can also be set as an environment variable {ENV_PREFIX}<NAME> "
        f"(for example {ENV_PREFIX}MAX_BATCH_SIZE=32); flags win.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = ENV_PREFIX + name.upper()
        default = field.default
        if isinstance(default, list):
            default = ",".join(default)
        elif default is None:
            default = "unset"
        help_text = f"{field.description} [env {env}; default: {default}]".replace("%", "%%")
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif typing.get_origin(field.annotation) is typing.Literal:
            parser.add_argument(flag, dest=name, choices=typing.get_args(field.annotation), default=argparse.SUPPRESS,
                                help=help_text)
        else:
            # Strings go to pydantic, which validates and converts them exactly as it does environment values.
            parser.add_argument(flag, dest=name, metavar=name.upper(), default=argparse.SUPPRESS, help=help_text)
    return parser


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    parser = build_parser()
    flags = vars(parser.parse_args(argv))
    try:
        return Settings(**flags)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}" for error in exc.errors()
        )
        parser.error(f"invalid settings: {problems}")


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains in-flight work before stopping, then exits cleanly."""

    def __init__(self, config: uvicorn.Config, *, lifecycle: Lifecycle, grace_s: float) -> None:
        super().__init__(config)
        self._lifecycle = lifecycle
        self._grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_requested = False
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_requested or self._loop is None:
            # A second signal: uvicorn's own behaviour (stop now; a further Ctrl-C forces the exit).
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        # A signal handler may interrupt the loop anywhere; hand the work to the loop instead of doing it here.
        self._loop.call_soon_threadsafe(self._begin_drain, signal.Signals(sig).name)

    def _begin_drain(self, signal_name: str) -> None:
        logger.info(
            "%s received: draining (readiness 503, new requests refused); %d request(s) in flight, grace %g s",
            signal_name, self._lifecycle.in_flight, self._grace_s,
        )
        self._lifecycle.begin_drain()
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        if await self._lifecycle.wait_idle(self._grace_s):
            logger.info("drained: no request in flight; stopping")
        else:
            logger.warning(
                "grace period of %g s is over with %d request(s) still in flight; stopping anyway",
                self._grace_s, self._lifecycle.in_flight,
            )
        self.should_exit = True


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        lifespan="on",
        timeout_graceful_shutdown=_GRACEFUL_CONNECTION_CLOSE_S,
    )
    server = DrainingServer(config, lifecycle=app.state.lifecycle, grace_s=settings.shutdown_grace_s)
    server.run()
    if not server.started:
        return EXIT_STARTUP_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
