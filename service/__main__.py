"""``python -m service`` / ``resnet-serve``: run the server with uvicorn.

Every `Settings` field is a flag (``--max-batch-size 32``) and an environment variable
(``RESNET_SERVE_MAX_BATCH_SIZE=32``); a flag wins over the environment.

Serving itself (uvicorn, the protocol guard, the SIGTERM drain) is `service.server`.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import typing
from collections.abc import Sequence

from pydantic import ValidationError

from service import logs
from service.config import ENV_PREFIX, Settings
from service.cpus import available_cpus

EXIT_STARTUP_FAILED = 3


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
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        elif typing.get_origin(field.annotation) is typing.Literal:
            parser.add_argument(
                flag, dest=name, choices=typing.get_args(field.annotation), default=argparse.SUPPRESS, help=help_text
            )
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


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(argv)
    if settings.workers != 1:
        # The supervisor stays light (no numpy, onnxruntime or web stack, no thread): it forks the workers.
        logs.configure(settings.log_level, settings.log_format, background=False)
        from service import workers

        return workers.run(settings, available_cpus())
    gc.disable()  # until the models are warm (ModelServer._warm_up says why)
    logs.configure(settings.log_level, settings.log_format)
    from service.model_server import ModelServer
    from service.registry import StartupError

    try:
        server = ModelServer(settings)
    except StartupError as exc:
        logging.getLogger("service").error("cannot start: %s", exc)
        return EXIT_STARTUP_FAILED
    server.begin_loading()
    from service.server import serve  # the web stack, imported while the models load

    if not serve(server):
        return EXIT_STARTUP_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
