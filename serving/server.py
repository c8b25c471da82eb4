"""``findial serve``: build the app for the configured backend and run it until Ctrl-C / SIGTERM.

The API keys are read first (``auth.ApiKeys.from_settings``): with auth on and no key
configured, it refuses to start (``SettingsError`` naming ``auth``) before loading anything.
With ``model_ref`` at ``models:/NAME@champion`` (and ``release.enabled``), the app follows NAME's release
plan (``release_router.py``): champion, challenger and shadow, each loaded beside the others.
"""

from __future__ import annotations

import logging

from .auth import ApiKeys
from .process import describe_auth, describe_responder, prepare
from .settings import ServeSettings

log = logging.getLogger("findial.serving")


def build_local_app(settings: ServeSettings, api_keys: ApiKeys | None = None):
    from .app import create_app
    from .batcher import LocalUnderstander
    from .metrics import Metrics
    from .model_store import ModelHolder
    from .responder import build_responder

    from .audit import AuditLog
    from .release_router import ReleaseRouter, local_router, release_model_name

    metrics = Metrics()
    name = release_model_name(settings)
    understander: ReleaseRouter | LocalUnderstander
    if name is not None:
        understander = local_router(settings, metrics, name, AuditLog(settings.audit.path, settings.audit.fsync))
    else:
        holder = ModelHolder.for_nlu(settings)
        b = settings.batching
        understander = LocalUnderstander(holder, b.max_batch_size, b.max_wait_ms, metrics)
    return create_app(settings, understander, build_responder(settings), metrics, api_keys)


def serve(settings: ServeSettings) -> None:
    api_keys = ApiKeys.from_settings(settings)
    prepare(settings)
    if settings.backend == "ray":
        from .ray_backend import serve_ray

        return serve_ray(settings, api_keys)
    import uvicorn

    app = build_local_app(settings, api_keys)
    print(
        f"findial serve: http://{settings.host}:{settings.port} (model {settings.model_ref}, responder "
        f"{describe_responder(settings)}, {describe_auth(api_keys)}, docs at /docs, schema at /openapi.json)",
        flush=True,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        # uvicorn annotates this int but hands it to asyncio.wait_for, which takes fractional seconds
        timeout_graceful_shutdown=settings.graceful_shutdown_s,  # type: ignore[arg-type]
        access_log=True,
        ws="none",
    )


def serve_from_config(cfg: dict) -> None:
    serve(ServeSettings.from_mapping(cfg))
