"""The model being served, and how a newly promoted version replaces it without a restart.

``ModelHolder.current`` is the ``LoadedModel`` in use. What is loaded is the holder's ``loader``'s
business: the NLU pipeline by default (``load_nlu``), the response model for ``/v1/respond``
(``serving.responder.load_response``, ``kind="response"``). A background thread checks
the registry alias every ``poll_interval_s`` seconds; when it points at another
version, that version is downloaded and loaded beside the old one, and only then
is ``current`` rebound (one reference assignment, atomic in Python). Work that
took the old ``LoadedModel`` finishes on it; the next batch takes the new one.
A version that fails to load is logged, counted and skipped until the alias
moves again; the old model keeps serving.

An ``optional`` holder (a gray release's ``challenger`` or ``shadow``, ``for_role``) follows an alias that
may be absent: while no version holds it, nothing is loaded (a model it held is unloaded), and that is no
error.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("findial.serving")


# (local model directory, device, (registered name, version) or None) -> the model to serve
Loader = Callable[[Path, str, "tuple[str, str] | None"], object]


def load_nlu(model_dir: Path, device: str, ident: tuple[str, str] | None = None, runtime: str = "torch"):
    """The default loader: the NLU pipeline of a bundle (``runtime``: torch or onnx)."""
    from findial.training.inference import NLUPipeline

    return NLUPipeline(model_dir / "intent", model_dir / "ner", device=device, runtime=runtime)


@dataclass(frozen=True)
class LoadedModel:
    pipeline: object  # what the loader returned: an NLUPipeline, or a response model
    ref: str  # what was asked for, e.g. models:/findial-nlu@champion
    name: str | None  # registered model name (None for a model directory)
    version: str | None
    bundle_dir: Path
    loaded_at: str

    def info(self) -> dict:
        return {"ref": self.ref, "name": self.name, "version": self.version, "loaded_at": self.loaded_at}


def parse_alias(ref: str) -> tuple[str, str] | None:
    """models:/NAME@ALIAS -> (NAME, ALIAS); None for a fixed version or a directory (nothing to poll)."""
    if ref.startswith("models:/") and "@" in ref:
        name, alias = ref[len("models:/") :].split("@", 1)
        return name, alias
    return None


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class ModelHolder:
    """``kind`` ("nlu" or "response"): the kind of model ``ref`` must name (``registry.resolve_model``);
    ``loader`` builds the served object from the downloaded directory."""

    def __init__(
        self,
        ref: str,
        download_dir: str | Path,
        device: str = "cpu",
        poll_interval_s: float = 30.0,
        on_change: Callable[["ModelHolder"], None] | None = None,
        loader: Loader = load_nlu,
        kind: str = "nlu",
        optional: bool = False,
    ):
        self.ref = ref
        self.optional = optional
        self.loader, self.kind = loader, kind
        self.download_dir = Path(download_dir)
        self.device = resolve_device(device)
        self.poll_interval_s = poll_interval_s
        self.on_change = on_change
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.reloads = {"success": 0, "failure": 0}
        self._failed_version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_lock = threading.Lock()

    @classmethod
    def for_nlu(cls, settings) -> "ModelHolder":
        """The NLU model of a ``ServeSettings`` (both backends)."""
        import functools

        from findial.training.onnx_runtime import OnnxRuntimeUnavailable, check_runtime, providers

        from .settings import SettingsError

        try:  # a bad runtime, or one this machine cannot run, stops findial serve before it starts
            runtime = check_runtime(getattr(settings, "runtime", "torch"), "serve.yaml: runtime")
            if runtime != "torch":
                providers(resolve_device(settings.device))
        except (ValueError, OnnxRuntimeUnavailable) as exc:
            raise SettingsError(f"serve.yaml: runtime: {exc}" if "runtime:" not in str(exc) else str(exc)) from None
        loader = functools.partial(load_nlu, runtime=runtime) if runtime != "torch" else load_nlu
        return cls(settings.model_ref, settings.download_dir, settings.device, settings.poll_interval_s, loader=loader)

    @classmethod
    def for_role(cls, settings, role: str) -> "ModelHolder":
        """The NLU model of a release role (``release.py``): ``champion`` is ``for_nlu``; ``challenger`` and
        ``shadow`` are those aliases of the same registered model, optional (``model_ref`` is an alias)."""
        holder = cls.for_nlu(settings)
        alias = parse_alias(settings.model_ref)
        if role != "champion" and alias is not None:
            holder.ref, holder.optional = f"models:/{alias[0]}@{role}", True
        return holder

    # ------------------------------------------------------------------ registry
    def _target_version(self) -> tuple[str, str | None] | None:
        """(name, version) the alias points at now (an optional holder: version None while no version holds
        it); None when ``ref`` is no alias."""
        alias = parse_alias(self.ref)
        if alias is None:
            return None
        from mlflow import MlflowClient

        name, alias_name = alias
        if self.optional:
            version = (MlflowClient().get_registered_model(name).aliases or {}).get(alias_name)
            return name, None if version is None else str(version)
        return name, str(MlflowClient().get_model_version_by_alias(name, alias_name).version)

    def _load(self, ref: str) -> LoadedModel:
        from findial.registry import resolve_model

        self.download_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.download_dir, prefix="bundle-")) if ref.startswith("models:/") else None
        try:
            local, ident = resolve_model(ref, tmp or self.download_dir, expect=self.kind)
            model = self.loader(Path(local), self.device, ident)
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        name, version = ident if ident else (None, None)
        return LoadedModel(
            model, self.ref, name, version, Path(local), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        )

    # ------------------------------------------------------------------ checking
    def check_once(self) -> bool:
        """Load the model the ref points at if it is not the one in use; True when ``current`` changed."""
        with self._check_lock:
            try:
                target = self._target_version()
            except Exception as exc:  # no alias yet, registry unreachable: keep what we have
                self._note_error(f"cannot resolve {self.ref}: {type(exc).__name__}: {exc}", count=False)
                return False
            if target is None:
                if self.current is not None:
                    return False
                ref = self.ref
            elif target[1] is None:  # an optional alias that no version holds now
                return self._unload()
            else:
                name, version = target
                if self.current is not None and self.current.version == version:
                    return False
                if version == self._failed_version:
                    return False
                ref = f"models:/{name}/{version}"
            old = self.current
            try:
                new = self._load(ref)
            except Exception as exc:
                self._failed_version = target[1] if target else None
                self._note_error(f"cannot load {ref}: {type(exc).__name__}: {exc}", count=True)
                return False
            self.current = new  # the swap: in-flight work keeps its reference to `old`
            self._failed_version, self.last_error = None, None
            self.reloads["success"] += 1
            log.info(
                "serving %s (version %s) from %s%s",
                new.ref,
                new.version,
                new.bundle_dir,
                f"; replaced version {old.version}" if old else "",
            )
            if old is not None and self._owns(old.bundle_dir):
                shutil.rmtree(self._download_root(old.bundle_dir), ignore_errors=True)
            if self.on_change:
                self.on_change(self)
            return True

    def _unload(self) -> bool:
        old, self.current = self.current, None
        self._failed_version, self.last_error = None, None
        if old is None:
            return False
        log.info("%s is held by no version now: version %s unloaded", self.ref, old.version)
        if self._owns(old.bundle_dir):  # in-flight work keeps its reference to the loaded model
            shutil.rmtree(self._download_root(old.bundle_dir), ignore_errors=True)
        if self.on_change:
            self.on_change(self)
        return True

    def _download_root(self, bundle_dir: Path) -> Path:
        rel = Path(bundle_dir).resolve().relative_to(self.download_dir.resolve())
        return self.download_dir.resolve() / rel.parts[0]

    def _owns(self, bundle_dir: Path) -> bool:
        try:
            root = self._download_root(bundle_dir)
        except ValueError:
            return False
        return root.name.startswith("bundle-")

    def _note_error(self, message: str, count: bool) -> None:
        if message != self.last_error:
            (log.error if count else log.warning)("%s", message)
        self.last_error = message
        if count:
            self.reloads["failure"] += 1
            if self.on_change:
                self.on_change(self)

    # ------------------------------------------------------------------ polling
    def start(self) -> None:
        """Load now (in the background) and then poll the alias every ``poll_interval_s`` seconds."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"findial-{self.kind}-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.check_once()
        while not self._stop.wait(self.poll_interval_s if self.poll_interval_s > 0 else 1.0):
            if self.poll_interval_s > 0 or self.current is None:
                self.check_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.current is not None and self._owns(self.current.bundle_dir):
            shutil.rmtree(self._download_root(self.current.bundle_dir), ignore_errors=True)

    def wait_loaded(self, timeout: float) -> bool:
        """Block until a model is loaded (for callers that must not start without one)."""
        deadline = time.monotonic() + timeout
        while self.current is None and time.monotonic() < deadline and not self._stop.is_set():
            self._stop.wait(0.1)
        return self.current is not None

    def info(self) -> dict:
        return {
            "model": self.current.info() if self.current else None,
            "last_error": self.last_error,
            "reloads": dict(self.reloads),
            "device": self.device,
        }
