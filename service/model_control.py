"""Models that change without a restart: the control modes, the repository poller, and agreement among workers.

- ``none``: what is loaded at start stays; the repository API's load and unload are refused.
- ``poll``: every `repository_poll_s` each model is brought in line with the repository (`ModelRegistry.
  reconcile`): a new or changed version file is loaded once its `FileStamp` has stayed the same for a whole
  interval (a file still being written is never loaded half), removed versions and models are unloaded. Load and
  unload through the API are refused, as Triton refuses them while it polls.
- ``explicit``: changes come only through the API (`load`, `unload`).

Several worker processes (service/workers.py) each hold their own sessions, so each must make every change. In
poll mode each worker polls on its own: a change reaches all of them within two poll intervals plus its load
time. In explicit mode the worker that takes an API call appends the command to a log in a folder the supervisor
shares with its workers (`CONTROL_DIR_ENV`), applies it, and answers only once every live worker has written that
it applied it too (each follows the log every `FOLLOW_INTERVAL_S`); a worker that starts later replays the log
before it serves. So once a load or unload is answered, no worker answers with the state before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service import repository
from service.config import Settings
from service.contract import VersionStatus
from service.errors import (
    DeadlineExceeded,
    InsufficientMemory,
    ModelControlOff,
    ModelControlRefused,
    ModelLoadFailed,
    ModelNotFound,
)
from service.registry import LoadFailed, ModelRegistry

logger = logging.getLogger("service")

CONTROL_DIR_ENV = "RESNET_SERVE_CONTROL_DIR"
"""Set by the worker supervisor for its workers: where explicit model commands are logged and acknowledged."""
FOLLOW_INTERVAL_S = 0.2
"""How often a worker looks for commands another worker took."""
ACK_PATIENCE_S = 600.0
"""How long an API call waits for every worker to have applied its change (loading a large model takes a while)."""
_LOG = "commands.jsonl"


@dataclass(frozen=True)
class Caller:
    """Who asks for a change: their API key's name and role, when keys are on."""

    key_name: str | None = None
    role: str | None = None


class _CommandLog:
    """The log of explicit commands shared by the workers of one server, and each worker's acknowledgement."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._log = folder / _LOG
        self._ack = folder / f"ack-{os.getpid()}"

    def append(self, command: dict[str, Any]) -> int:
        with open(self._log, "a+", encoding="utf-8") as log:
            fcntl.flock(log, fcntl.LOCK_EX)
            log.seek(0)
            sequence = sum(1 for _ in log) + 1
            log.write(json.dumps({**command, "seq": sequence}) + "\n")
            log.flush()
        return sequence

    def read_after(self, sequence: int) -> list[dict[str, Any]]:
        try:
            with open(self._log, encoding="utf-8") as log:
                fcntl.flock(log, fcntl.LOCK_SH)
                lines = log.readlines()
        except FileNotFoundError:
            return []
        commands = [json.loads(line) for line in lines if line.strip()]
        return [command for command in commands if command["seq"] > sequence]

    def acknowledge(self, sequence: int) -> None:
        partial = self._ack.with_name(self._ack.name + ".partial")
        partial.write_text(str(sequence))
        partial.replace(self._ack)

    def laggards(self, sequence: int) -> list[int]:
        """Live workers (pids) that have not applied `sequence` yet."""
        behind = []
        for ack in self.folder.glob("ack-*"):
            if ack.name.endswith(".partial"):
                continue
            pid = int(ack.name.removeprefix("ack-"))
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
            with contextlib.suppress(OSError, ValueError):
                if int(ack.read_text() or 0) >= sequence:
                    continue
            behind.append(pid)
        return behind


class ModelControl:
    """The server's model control: its mode, its poller, the explicit commands, the index."""

    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        *,
        api_keys_enabled: Callable[[], bool],
        control_dir: Path | None = None,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._keys_enabled = api_keys_enabled
        self.mode = settings.model_control_mode
        folder = (
            control_dir
            if control_dir is not None
            else (Path(os.environ[CONTROL_DIR_ENV]) if CONTROL_DIR_ENV in os.environ else None)
        )
        self._log = _CommandLog(folder) if folder is not None else None
        self._applied = 0
        self._pins: dict[str, int | None] = {}
        self._seen: dict[tuple[str, int], repository.FileStamp | None] = {}
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------------------ life

    async def start(self) -> None:
        """Replay the commands other workers took before this one started, then follow them (explicit), or start
        polling (poll)."""
        if self.mode == "explicit" and self._log is not None:
            await self._follow_once()
            self._task = asyncio.get_running_loop().create_task(self._follow(), name="model-commands")
        elif self.mode == "poll":
            self._remember(repository.scan(self._settings.model_dir))
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="repository-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # ------------------------------------------------------------------------------------------ the API

    def index(self) -> list[VersionStatus]:
        return self._registry.index()

    async def load(self, name: str, caller: Caller, *, default_version: int | None = None) -> None:
        """Load (or reload) a model as the repository and its policy say, swapping versions without a gap."""
        self._authorise(caller, "load")
        if repository.scan_model(self._settings.model_dir, name) is None:
            raise ModelNotFound(f"no model named {name!r} in the repository")
        await self._command({"action": "load", "name": name, "default_version": default_version})

    async def unload(self, name: str, caller: Caller) -> None:
        self._authorise(caller, "unload")
        self._registry.get(name)  # ModelNotFound for a model that is not loaded
        await self._command({"action": "unload", "name": name})

    def _authorise(self, caller: Caller, what: str) -> None:
        if self.mode != "explicit":
            raise ModelControlOff(
                f"models cannot be {what}ed through the API: the server's model control mode is {self.mode!r} "
                f"(start it with --model-control-mode explicit)"
            )
        if self._keys_enabled():
            if caller.role != "admin":
                raise ModelControlRefused(
                    f"the API key {caller.key_name!r} may not {what} models: that needs a key with role=admin"
                )
        elif not self._settings.allow_model_control_without_keys:
            raise ModelControlRefused(
                f"this server does not let anyone {what} models: set API keys with an admin key "
                f"(role=admin), or start it with --allow-model-control-without-keys"
            )

    async def _command(self, command: dict[str, Any]) -> None:
        if self._log is None:
            await self._apply(command)
            return
        sequence = self._log.append(command)
        failure: ModelLoadFailed | InsufficientMemory | None = None
        try:
            await self._catch_up()  # applies this command, after any earlier one
        except (ModelLoadFailed, InsufficientMemory) as exc:
            failure = exc  # answered once every worker has tried too, so that all of them say why
        give_up = time.monotonic() + ACK_PATIENCE_S
        while laggards := self._log.laggards(sequence):
            if time.monotonic() > give_up:
                raise DeadlineExceeded(
                    f"the change was made in this worker, but workers {', '.join(map(str, laggards))} had not made it "
                    f"after {ACK_PATIENCE_S:g} s; see their logs"
                )
            await asyncio.sleep(FOLLOW_INTERVAL_S)
        if failure is not None:
            raise failure

    async def _apply(self, command: dict[str, Any]) -> None:
        name = command["name"]
        if command["action"] == "unload":
            with contextlib.suppress(Exception):  # already gone in this worker: nothing to do
                await self._registry.unload_model(name)
            return
        try:
            await self._registry.reconcile(name, default_version=command.get("default_version"))
        except LoadFailed as exc:
            refusal = InsufficientMemory if exc.insufficient_memory else ModelLoadFailed
            raise refusal(f"cannot load {name}: {exc}; the versions that served go on serving") from None

    # ------------------------------------------------------------------------------------------ followers

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL_S)
            try:
                await self._follow_once()
            except Exception:
                logger.exception("following the model commands failed; retrying")

    async def _follow_once(self) -> None:
        try:
            await self._catch_up()
        except (ModelLoadFailed, InsufficientMemory) as exc:
            logger.error("%s", exc.message)

    async def _catch_up(self) -> None:
        assert self._log is not None
        failure: ModelLoadFailed | InsufficientMemory | None = None
        for command in self._log.read_after(self._applied):
            try:
                await self._apply(command)
            except (ModelLoadFailed, InsufficientMemory) as exc:
                failure = exc
            self._applied = command["seq"]
            self._log.acknowledge(self._applied)
        if self._applied == 0:
            self._log.acknowledge(0)
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------------------------------ the poller

    def _remember(self, disk: dict[str, repository.ModelEntry]) -> None:
        self._seen = {
            (name, number): version.stamp for name, entry in disk.items() for number, version in entry.versions.items()
        }

    def _stable(self, model_file: repository.ModelFile) -> bool:
        return self._seen.get((model_file.name, model_file.version)) == model_file.stamp

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._settings.repository_poll_s)
            try:
                await self.poll_once()
            except Exception:
                logger.exception("scanning the model repository failed; retrying at the next interval")

    async def poll_once(self) -> None:
        """One scan: every model on disk or loaded brought in line; files seen changing wait for the next scan."""
        try:
            names = set(repository.model_names(self._settings.model_dir))
        except repository.RepositoryError as exc:
            logger.error("cannot scan the model repository: %s; keeping what serves", exc)
            return
        seen_now: dict[tuple[str, int], repository.FileStamp | None] = {}
        for name in sorted(names | set(self._registry.names)):
            try:
                entry = repository.scan_model(self._settings.model_dir, name)
            except repository.RepositoryError as exc:
                logger.error("model %s: %s; keeping what serves", name, exc)
                continue
            if entry is not None:
                seen_now.update({(name, number): version.stamp for number, version in entry.versions.items()})
            with contextlib.suppress(LoadFailed):  # logged by the registry, kept in the index with its reason
                await self._registry.reconcile(name, stable=self._stable)
        self._seen = seen_now
