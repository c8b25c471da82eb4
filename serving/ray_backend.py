"""The same app under Ray Serve: ``findial serve backend=ray replicas=2``.

Two deployments in one Serve application (``findial``):

- ``NLUModel``: ``replicas`` replicas, each with its own ``ModelHolder`` (so each
  polls the alias and hot-swaps on its own) and ``@serve.batch`` batching of the
  turns routed to it (a batch that raises is run again item by item, as in
  ``batcher.understand_each``: one bad item fails alone);
- ``Gateway``: the FastAPI app of ``app.py`` as the HTTP ingress (Ray's proxy on
  ``host:port``), with a ``RayUnderstander`` that calls ``NLUModel`` through a
  deployment handle. It runs one replica: sessions, the audit writer and the
  request metrics live in its memory. The model replicas are what scales. Its
  responder (``/v1/respond``) comes from ``responder.build_responder``, as the
  local backend's: the response model behind its alias, polled in this replica.
  The API keys (``auth.py``) are read once by ``findial serve``, before Ray starts,
  and handed to the ingress app, so the guard checks them there as in the local backend.

With a gray release (``model_ref`` at ``models:/NAME@champion``, ``release.enabled``) the same plan is served
as deployments: ``NLUModel`` holds the champion, ``NLUChallenger`` (``release.challenger_replicas``) the
``challenger`` alias and ``NLUShadow`` (one replica) the ``shadow`` alias, each replica polling its alias;
the Gateway's ``ReleaseRouter`` reads the plan and routes each session by the same hash as the local
backend (``release.ReleasePlan.assign``), and sends the shadow copies to ``NLUShadow``.

Ray is imported only here, so the local backend never needs it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any

from ray import serve

from .auth import ApiKeys
from .batcher import ModelNotReady, understand_each
from .model_store import ModelHolder
from .settings import ServeSettings
from .understanding import TurnInput

log = logging.getLogger("findial.serving")
APP_NAME = "findial"
MODEL_DEPLOYMENT = "NLUModel"
ROLE_DEPLOYMENTS = {"champion": MODEL_DEPLOYMENT, "challenger": "NLUChallenger", "shadow": "NLUShadow"}


class NLUReplica:
    """One model replica: a holder that polls the alias, and batched understanding."""

    def __init__(self, settings: ServeSettings, role: str = "champion"):
        from .process import prepare

        prepare(settings)
        if not settings.torch_threads:
            import os

            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.replicas))
        self.holder = ModelHolder.for_role(settings, role)
        self.holder.check_once()  # the replica takes traffic once this returns; the poller retries a failure
        self.holder.start()
        # ray's types for serve.batch leave out these setters (its documentation uses them)
        self.batched.set_max_batch_size(settings.batching.max_batch_size)  # type: ignore[attr-defined]
        self.batched.set_batch_wait_timeout_s(settings.batching.max_wait_ms / 1000.0)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def batched(self, items: list[TurnInput]) -> list[tuple]:
        model = self.holder.current
        if model is None:
            return [("not_ready", self.holder.last_error or "the model is still loading")] * len(items)
        results = await asyncio.to_thread(understand_each, model.pipeline, items)
        info = model.info()
        return [("error", type(r).__name__) if isinstance(r, Exception) else ("ok", r, info) for r in results]

    async def understand(self, item: TurnInput) -> tuple:
        return await self.batched(item)

    def status(self) -> dict:
        return {"ready": self.holder.current is not None, **self.holder.info()}

    def __del__(self):
        holder = getattr(self, "holder", None)
        if holder is not None:
            holder.stop()


class RayUnderstander:
    """The understander of the ingress app: model replicas behind a deployment handle."""

    def __init__(self, deployment: str = MODEL_DEPLOYMENT):
        self.deployment = deployment
        self._handle = None

    @property
    def handle(self):
        if self._handle is None:
            self._handle = serve.get_deployment_handle(self.deployment, app_name=APP_NAME)
        return self._handle

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def status(self) -> dict:
        return await self.handle.status.remote()

    async def understand(self, item: TurnInput) -> tuple[dict, dict]:
        answer = await self.handle.understand.remote(item)
        if answer[0] == "error":
            raise RuntimeError(f"inference failed on the model replica: {answer[1]}")
        if answer[0] != "ok":
            raise ModelNotReady(answer[1])
        return answer[1], answer[2]


class Gateway:
    """The ingress deployment's class; the routes come from the app builder."""

    def __init__(self, model_handle=None, challenger_handle=None, shadow_handle=None):
        self.model_handle = model_handle  # bound so that Serve deploys NLUModel (and the release roles) with this app
        self.challenger_handle, self.shadow_handle = challenger_handle, shadow_handle


def build_app(settings: ServeSettings, api_keys: ApiKeys | None = None):
    """The Serve application: Gateway (FastAPI ingress, 1 replica) -> NLUModel (``replicas`` replicas).
    ``api_keys``: read from the settings here when not given."""
    from .release_router import release_model_name

    api_keys = api_keys or ApiKeys.from_settings(settings)
    release = release_model_name(settings)

    def asgi_app():
        from .app import create_app
        from .metrics import Metrics
        from .responder import build_responder
        from .process import prepare

        prepare(settings)
        metrics = Metrics()
        understander = RayUnderstander() if release is None else ray_router(settings, metrics, release)
        return create_app(settings, understander, build_responder(settings), metrics, api_keys=api_keys)

    def deployment(role: str, replicas: int):
        return serve.deployment(
            name=ROLE_DEPLOYMENTS[role],
            num_replicas=replicas,
            max_ongoing_requests=max(8, 2 * settings.batching.max_batch_size),
            ray_actor_options={"num_cpus": settings.ray.replica_num_cpus},
        )(NLUReplica)

    model = deployment("champion", settings.replicas)
    gateway = serve.deployment(
        name="Gateway",
        num_replicas=1,
        max_ongoing_requests=1000,
        ray_actor_options={"num_cpus": settings.ray.ingress_num_cpus},
    )(serve.ingress(asgi_app)(Gateway))
    if release is None:
        return gateway.bind(model.bind(settings))
    challenger = deployment("challenger", settings.release.challenger_replicas)
    shadow = deployment("shadow", 1)
    return gateway.bind(
        model.bind(settings, "champion"), challenger.bind(settings, "challenger"), shadow.bind(settings, "shadow")
    )


def ray_router(settings: ServeSettings, metrics, model_name: str):
    """The Gateway's ``ReleaseRouter``: one ``RayUnderstander`` per role deployment."""
    from .audit import AuditLog
    from .release_router import ReleaseRouter, UnderstanderShadow

    return ReleaseRouter(
        settings,
        {role: RayUnderstander(ROLE_DEPLOYMENTS[role]) for role in ("champion", "challenger")},
        metrics,
        model_name,
        shadow=UnderstanderShadow(RayUnderstander(ROLE_DEPLOYMENTS["shadow"])),
        audit=AuditLog(settings.audit.path, settings.audit.fsync),
    )


def serve_ray(settings: ServeSettings, api_keys: ApiKeys | None = None) -> None:
    import ray

    api_keys = api_keys or ApiKeys.from_settings(settings)  # no key with auth on: refused before Ray starts
    init: dict[str, Any] = {"address": settings.ray.address, "include_dashboard": False, "log_to_driver": False}
    if settings.ray.address is None:
        if settings.ray.num_cpus:
            init["num_cpus"] = settings.ray.num_cpus
        if settings.ray.temp_dir:
            init["_temp_dir"] = settings.ray.temp_dir
    ray.init(**{k: v for k, v in init.items() if v is not None})
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_app(settings, api_keys), name=APP_NAME, route_prefix="/", blocking=False)
        from .process import describe_auth, describe_responder

        print(
            f"findial serve (ray, {settings.replicas} model replicas): http://{settings.host}:{settings.port} "
            f"(model {settings.model_ref}, responder {describe_responder(settings)}, {describe_auth(api_keys)}, "
            "docs at /docs, schema at /openapi.json)",
            flush=True,
        )
        stop.wait()
    finally:
        log.info("shutting down Ray Serve")
        serve.shutdown()
        ray.shutdown()
