"""The one home of every served model version: load, route, swap, unload and describe them.

`ModelRegistry.load()` opens what the repository's version policies select before the server listens (a bad model
fails start-up with a message naming the file and the problem); `warm_up_and_start()` warms them up in the
background. After start-up, `reconcile(name)` brings one model in line with the repository (the poller calls it
for every model, the repository API's load for one): versions the policy selects that are new or whose files
changed are opened, warmed up and tuned beside those that serve, and only then take traffic; versions it no
longer selects leave the routing once another version of the model is ready, and are closed after the last
request that holds them (`ServedModel.unload`), which returns their memory. A version that fails to load is kept
out with its reason, and the versions already serving go on serving. A load that would pass the memory budget
with both versions resident is refused before it starts, with the numbers.

Routing: a request naming a version gets that version; one naming none gets the pinned `default_version` when it
is ready, else the highest ready version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from service import repository
from service.config import Settings
from service.contract import ModelState, VersionStatus
from service.decode_memory import DecodeMemory
from service.errors import InsufficientMemory, ModelNotFound, NotReady
from service.memory import cgroup_memory_limit_bytes, resident_memory_bytes
from service.metrics import ServiceMetrics
from service.modelspec import ModelSpecError
from service.preprocess import DecodeOptions
from service.priority import call_in_lowered_thread
from service.runtime import InferenceRuntime, available_cpus
from service.served_model import ServedModel, open_onnx_runtime, warm_up_sizes

__all__ = ["ModelRegistry", "RuntimeFactory", "StartupError", "warm_up_sizes"]

logger = logging.getLogger("service")

RuntimeFactory = Callable[[Path, Sequence[str], int | None], InferenceRuntime]
"""Opens one model file with (path, providers, intra-op threads or None for all CPUs)."""


class StartupError(RuntimeError):
    """The model repository cannot be served; the message says what to fix."""


class LoadFailed(Exception):
    """One model version cannot be served; the message says why."""

    def __init__(self, message: str, *, insufficient_memory: bool = False) -> None:
        super().__init__(message)
        self.insufficient_memory = insufficient_memory
        """Refused before it started because it would pass the memory budget (the API answers 507)."""


_INDEX_STATES = {
    ModelState.LOADED: "LOADING",
    ModelState.WARMING_UP: "LOADING",
    ModelState.READY: "READY",
    ModelState.UNLOADING: "UNLOADING",
    ModelState.FAILED: "UNAVAILABLE",
}


@dataclass
class _Model:
    """One model's versions: those serving or on their way, those that failed, and the pinned default."""

    name: str
    versions: dict[int, ServedModel] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    pinned: int | None = None
    pinned_by_api: int | None = None
    loading: dict[int, ServedModel] = field(default_factory=dict)
    """Versions opened and warming up beside those that serve; they take no traffic yet."""
    counts_for_readiness: bool = True
    """Whether the server's readiness waits on this model: always for those served at start-up, and for a model
    added later only once one of its versions was ready, so that a bad file under a new name takes no pod out."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def route(self, version: str | None) -> ServedModel:
        if version is not None:
            number = int(version) if version.isdigit() else None
            if number is not None and number in self.versions:
                return self.versions[number]
            if number is not None and number in self.failures:
                raise NotReady(f"model {self.name!r} version {number} is unavailable: {self.failures[number]}")
            known = ", ".join(map(str, sorted(self.versions))) or "none"
            raise ModelNotFound(f"model {self.name!r} has no version {version!r}; its versions: {known}")
        ready = [number for number, model in self.versions.items() if model.ready]
        if self.pinned is not None and self.pinned in ready:
            return self.versions[self.pinned]
        if ready:
            return self.versions[max(ready)]
        if self.versions:
            return self.versions[max(self.versions)]  # not ready: the data plane says why
        reasons = "; ".join(f"version {number}: {reason}" for number, reason in sorted(self.failures.items()))
        raise NotReady(f"model {self.name!r} has no version that can serve ({reasons or 'none loaded'})")

    @property
    def ready(self) -> bool:
        return any(model.ready for model in self.versions.values())

    def refresh(self) -> None:
        names = tuple(str(number) for number in sorted(self.versions))
        for model in self.versions.values():
            model.versions = names


class ModelRegistry:
    """The served model versions by name, and which one answers requests that name none."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, open_runtime: RuntimeFactory | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._open_runtime = open_runtime or open_onnx_runtime
        self._models: dict[str, _Model] = {}
        self._unloading: set[asyncio.Task[None]] = set()
        self._retired: dict[tuple[str, int], ServedModel] = {}
        """Versions out of the routing, closing after their last request."""
        self.default_model: str | None = None
        self.decode_memory = DecodeMemory(settings.max_decode_bytes, metrics.decode_memory_bytes.set)
        """One budget for the decodes of every model."""
        limit = cgroup_memory_limit_bytes()
        self.memory_budget_bytes: int | None = (
            round(settings.memory_budget_mb * 2**20) if settings.memory_budget_mb is not None else limit
        )

    # ------------------------------------------------------------------------------------------ what is served

    @property
    def models(self) -> list[ServedModel]:
        """Every loaded model version, sorted by name and version."""
        return [
            self._models[name].versions[number]
            for name in sorted(self._models)
            for number in sorted(self._models[name].versions)
        ]

    def all(self) -> list[ServedModel]:
        return self.models

    @property
    def loaded(self) -> bool:
        return bool(self._models)

    @property
    def ready(self) -> bool:
        """Every model has a ready version (a version that failed beside one that serves does not count)."""
        counted = [entry for entry in self._models.values() if entry.counts_for_readiness]
        return bool(counted) and all(entry.ready for entry in counted)

    def get(self, name: str | None, version: str | None = None) -> ServedModel:
        """The named model (the default one for None) at `version` (None: the one that answers by default);
        ModelNotFound if there is no such model or version, NotReady if the version failed to load."""
        key = self.default_model if name is None else name
        entry = self._models.get(key) if key is not None else None
        if entry is None:
            served = ", ".join(sorted(self._models)) or "none yet (the server is starting)"
            raise ModelNotFound(f"no model named {key!r}; served models: {served}")
        return entry.route(version)

    def index(self) -> list[VersionStatus]:
        """Every model version on disk or loaded, with its state and the reason for a failure."""
        statuses: dict[tuple[str, int], VersionStatus] = {}
        try:
            on_disk = repository.scan(self._settings.model_dir)
        except repository.RepositoryError as exc:
            logger.warning("cannot read the model repository for the index: %s", exc)
            on_disk = {}
        for name, disk in on_disk.items():
            for number in disk.versions:
                statuses[(name, number)] = VersionStatus(name, str(number), "UNAVAILABLE", "not loaded")
        for name, number in self._retired:
            statuses[(name, number)] = VersionStatus(name, str(number), "UNLOADING")
        for name, entry in self._models.items():
            for number, reason in entry.failures.items():
                statuses[(name, number)] = VersionStatus(name, str(number), "UNAVAILABLE", reason)
            for number in entry.loading:
                statuses[(name, number)] = VersionStatus(name, str(number), "LOADING")
            for number, model in entry.versions.items():
                statuses[(name, number)] = VersionStatus(
                    name, str(number), _INDEX_STATES[model.state], model.error or ""
                )
        return [statuses[key] for key in sorted(statuses)]

    # ------------------------------------------------------------------------------------------ start-up

    def load(self) -> None:
        """Open and check what the repository's policies select (blocking: run it in a thread); StartupError."""
        settings = self._settings
        try:
            disk = repository.scan(settings.model_dir)
            files = [version for entry in disk.values() for version in entry.selected]
            if not files:
                raise repository.RepositoryError(
                    f"no *.onnx model files in {settings.model_dir} (nor <name>/<version>/model.onnx)"
                )
            self.default_model = repository.choose_default_model(sorted(disk), settings.default_model)
            models: dict[str, _Model] = {}
            for model_file in files:
                entry = models.setdefault(
                    model_file.name, _Model(model_file.name, pinned=disk[model_file.name].config.default_version)
                )
                entry.versions[model_file.version] = self._open_version(model_file)
        except (repository.RepositoryError, ModelSpecError, ValueError, LoadFailed) as exc:
            raise StartupError(str(exc)) from None
        for entry in models.values():
            entry.refresh()
        self._models = models
        self._mark_default()

    def _mark_default(self) -> None:
        for entry in self._models.values():
            for model in entry.versions.values():
                model.is_default = entry.name == self.default_model

    async def warm_up_and_start(self) -> bool:
        """Warm every model up and start its batcher, one at a time; True when all are ready."""
        outcomes = [await model.warm_up_and_start() for model in self.models]
        return all(outcomes)

    async def batch1_seconds_per_image(self) -> dict[str, float]:
        """Each model's inference time for one image alone, timed now, once the server is ready: the fastest of
        many runs, so that a busy machine's stall does not make a cheap model look slow."""
        return {model.name: await model.batch1_seconds() for model in self.models}

    # ------------------------------------------------------------------------------------------ changes

    @property
    def names(self) -> list[str]:
        """The models loaded now."""
        return sorted(self._models)

    async def reconcile(
        self,
        name: str,
        *,
        stable: Callable[[repository.ModelFile], bool] | None = None,
        default_version: int | None = None,
    ) -> None:
        """Bring one model in line with the repository: load the versions its policy selects that are new or
        changed (those `stable` accepts: files no longer being written), retire those it no longer selects once
        another is ready, and the whole model when it is gone from disk. Raises LoadFailed (with every reason)
        when a selected version could not be loaded; what served goes on serving. `default_version` pins the
        version that answers requests naming none (until another load pins another), over config.json's."""
        entry = self._models.get(name) or _Model(name, counts_for_readiness=False)
        async with entry.lock:
            disk = repository.scan_model(self._settings.model_dir, name)
            if disk is None:
                if name in self._models:
                    logger.info("model %s is gone from the repository: unloading it", name)
                    del self._models[name]
                    for model in list(entry.versions.values()):
                        self._retire(model)
                return
            self._models.setdefault(name, entry)
            if default_version is not None:
                entry.pinned_by_api = default_version
            entry.pinned = entry.pinned_by_api or disk.config.default_version
            failures: list[LoadFailed] = []
            selected = disk.selected
            for model_file in selected:
                current = entry.versions.get(model_file.version)
                if current is not None and current.stamp == self._stamp(model_file):
                    continue
                if stable is not None and not stable(model_file):
                    continue
                try:
                    await self._load_beside(entry, model_file)
                except LoadFailed as exc:
                    failures.append(exc)
            wanted = {model_file.version for model_file in selected}
            if any(entry.versions[number].ready for number in wanted if number in entry.versions):
                for number in [number for number in entry.versions if number not in wanted]:
                    self._retire(entry.versions.pop(number))
                for number in [number for number in entry.failures if number not in wanted]:
                    del entry.failures[number]
            entry.refresh()
            self._mark_default()
            if failures:
                raise LoadFailed(
                    "; ".join(map(str, failures)), insufficient_memory=any(f.insufficient_memory for f in failures)
                )

    async def unload_model(self, name: str) -> None:
        """Take the model out of the routing now and close each version after its last request."""
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(f"no model named {name!r} is loaded")
        async with entry.lock:
            self._models.pop(name, None)
            for model in list(entry.versions.values()):
                self._retire(model)
            logger.info("model %s unloaded from the routing; each version closes after its last request", name)

    def _stamp(self, model_file: repository.ModelFile) -> object:
        config = repository.FileStamp.of(model_file.config) if model_file.config is not None else None
        sidecar = repository.FileStamp.of(model_file.sidecar) if model_file.sidecar is not None else None
        return (model_file.stamp, sidecar, config)

    async def _load_beside(self, entry: _Model, model_file: repository.ModelFile) -> None:
        """Open, warm up and tune one version while the others serve; it takes traffic only once ready."""
        label = f"{model_file.name} version {model_file.version}"
        try:
            self._check_memory(entry, model_file)
            model = await asyncio.to_thread(self._open_version, model_file)
        except (LoadFailed, InsufficientMemory, repository.RepositoryError, ModelSpecError, ValueError) as exc:
            reason = exc.message if isinstance(exc, InsufficientMemory) else str(exc)
            entry.failures[model_file.version] = reason
            logger.error("cannot load %s: %s; what served goes on serving", label, reason)
            raise LoadFailed(f"{label}: {reason}", insufficient_memory=isinstance(exc, InsufficientMemory)) from None
        model.is_default = entry.name == self.default_model
        entry.loading[model_file.version] = model
        try:
            warmed = await model.warm_up_and_start(tune_first=True)
        finally:
            entry.loading.pop(model_file.version, None)
        if not warmed:
            entry.failures[model_file.version] = model.error or "warm-up failed"
            await model.close()
            raise LoadFailed(f"{label}: {model.error}")
        previous = entry.versions.get(model_file.version)
        entry.versions[model_file.version] = model
        entry.failures.pop(model_file.version, None)
        entry.counts_for_readiness = True
        if previous is not None:
            self._retire(previous)  # the same version, reloaded from changed files
        logger.info("%s loaded and serving", label)

    def _check_memory(self, entry: _Model, model_file: repository.ModelFile) -> None:
        budget = self.memory_budget_bytes
        resident = resident_memory_bytes()
        if budget is None or resident is None:
            return
        # What opening took for a version already served (else the file's size), plus the batch memory its warm-up
        # and tuning may add, up to the per-model budget they keep to.
        measured = [model.memory_bytes for model in entry.versions.values() if model.memory_bytes]
        batches = round(self._settings.batch_memory_budget_mb * 2**20)
        needed = max([*measured, model_file.path.stat().st_size]) + batches
        if resident + needed > budget:
            raise InsufficientMemory(
                f"loading {model_file.name} version {model_file.version} needs about {needed / 2**20:.0f} MiB beside "
                f"the {resident / 2**20:.0f} MiB this server holds, over its memory budget of {budget / 2**20:.0f} MiB "
                f"(--memory-budget-mb); unload a version first, or give the server more memory"
            )

    def _retire(self, model: ServedModel) -> None:
        model.mark_unloading()
        key = (model.name, int(model.version))
        self._retired[key] = model
        task = asyncio.get_running_loop().create_task(model.unload(), name=f"unload-{model.name}-{model.version}")
        self._unloading.add(task)

        def closed(done: asyncio.Task[None]) -> None:
            self._unloading.discard(done)
            if self._retired.get(key) is model:
                del self._retired[key]

        task.add_done_callback(closed)

    async def close(self) -> None:
        for model in self.models:
            await model.close()
        await asyncio.gather(*self._unloading, return_exceptions=True)

    # ------------------------------------------------------------------------------------------ opening

    def _open(self, model_file: repository.ModelFile, threads: int | None) -> InferenceRuntime:
        # ONNX Runtime creates the session's thread pool now, and its threads inherit this thread's priority.
        open_runtime = partial(self._open_runtime, model_file.path, self._settings.providers, threads)
        try:
            return call_in_lowered_thread(open_runtime, self._settings.worker_nice)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise LoadFailed(f"{model_file.path.name}: ONNX Runtime cannot load the model: {exc}") from None

    def _open_version(self, model_file: repository.ModelFile) -> ServedModel:
        """Open and check one version (blocking); LoadFailed, or a ModelSpecError or ValueError naming the file."""
        settings = self._settings
        before = resident_memory_bytes()
        sidecar_threads = repository.sidecar_serving(model_file).intra_op_threads
        runtime = self._open(model_file, sidecar_threads or settings.intra_op_threads)
        metadata = repository.read_metadata(model_file, runtime)
        serving = settings.serving_for(metadata.serving, source=metadata.serving_source)
        wanted_threads = serving.intra_op_threads or available_cpus()
        if runtime.intra_op_threads != wanted_threads:
            # The thread count came from the ONNX file's own metadata, readable only once a session is open.
            runtime = self._open(model_file, wanted_threads)
        try:
            runtime.check_compatible(metadata.spec)
        except ValueError as exc:
            raise LoadFailed(f"{model_file.path.name}: the graph does not match its metadata: {exc}") from None
        after = resident_memory_bytes()
        model = ServedModel(
            name=model_file.name,
            path=model_file.path,
            spec=metadata.spec,
            serving=serving,
            overridden=tuple(metadata.serving.as_dict()),
            runtime=runtime,
            decode_options=DecodeOptions(
                max_image_pixels=settings.max_image_pixels, jpeg_draft=settings.jpeg_draft, memory=self.decode_memory
            ),
            metrics=self._metrics,
            worker_nice=settings.worker_nice,
            batch_memory_release_s=settings.batch_memory_release_s,
            version=str(model_file.version),
            stamp=self._stamp(model_file),
            memory_bytes=None if before is None or after is None else max(0, after - before),
        )
        spec = metadata.spec
        logger.info(
            "loaded model %s version %d from %s: %d classes, %s %dx%d input, provider %s, %d intra-op threads, batch "
            "size %s%s",
            model.name,
            model_file.version,
            model_file.path,
            spec.num_classes,
            spec.color_mode,
            spec.crop_size,
            spec.crop_size,
            runtime.provider,
            runtime.intra_op_threads,
            serving.max_batch_size,
            f" (own serving settings: {', '.join(model.overridden)})" if model.overridden else "",
        )
        return model
