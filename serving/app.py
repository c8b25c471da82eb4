"""The FastAPI application: routes over a ``DialogueService``; the same app runs under uvicorn or Ray Serve.

``create_app(settings, understander, responder)`` takes the understander that
runs the model: ``LocalUnderstander`` (in-process batching, see ``batcher.py``)
or ``RayUnderstander`` (model replicas behind a Ray Serve handle), and the
responder of ``/v1/respond`` (``responder.build_responder``): a plugged-in
``Responder``, the ``PromotedResponder`` that polls the response model's alias
(started and stopped with the app), or None. ``api_keys`` (``auth.ApiKeys``, read
from the settings when not given) is checked by the guard on every request, so it
covers /docs, /openapi.json and /metrics too; with auth on, the OpenAPI schema
declares the two ways of sending a key.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

import findial

from .auth import ApiKeys
from .errors import error_response, install_error_handlers, request_id
from .guard import RequestGuard
from .metrics import CONTENT_TYPE, Metrics
from .responder import PromotedResponder
from .schemas import (
    ERROR_RESPONSES,
    SESSION_RESPONSES,
    UNAUTHORIZED,
    AgentTurnResult,
    DialogueTurnRequest,
    ErrorResponse,
    RespondRequest,
    RespondResult,
    SessionView,
    UnderstandRequest,
    Understanding,
)
from .service import DialogueService
from .settings import ServeSettings

DESCRIPTION = """Understanding for a bilingual (zh/en) financial contact centre: intent, emotion, entities
(linked to the glossary) and dialogue state for each user turn, with confidences, hand-off to a human
agent, server-side multi-turn sessions, and personal data masked before any model or log sees it.
The models are the NLU bundle and the response model behind the registry's serving aliases; a newly
promoted version is picked up without a restart."""


SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
NO_KEY: dict[str, Any] = {"security": []}  # the probes need no key (auth.OPEN)


def _request_id(request: Request) -> str:
    """The request's id: ``RequestGuard``, in front of every route, gives each request one."""
    rid = request_id(request)
    if rid is None:
        raise RuntimeError("the request has no id: the app's routes run behind RequestGuard")
    return rid


def create_app(
    settings: ServeSettings,
    understander,
    responder=None,
    metrics: Metrics | None = None,
    api_keys: ApiKeys | None = None,
) -> FastAPI:
    api_keys = api_keys or ApiKeys.from_settings(settings)
    metrics = metrics or getattr(understander, "metrics", None) or Metrics()
    if getattr(understander, "metrics", "n/a") is None:
        understander.metrics = metrics  # the batcher reads the in-flight count the guard keeps
    service = DialogueService(settings, understander, responder, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        promoted = responder if isinstance(responder, PromotedResponder) else None
        await understander.start()
        if promoted:
            await promoted.start()
        try:
            yield
        finally:
            if promoted:
                await promoted.stop()
            await understander.stop()

    app = FastAPI(
        title="findial serving",
        version=getattr(findial, "__version__", "0.1.0"),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(
        RequestGuard,
        metrics=metrics,
        max_body_bytes=settings.limits.max_body_bytes,
        router=app,
        body_timeout_s=settings.limits.body_timeout_s,
        api_keys=api_keys,
    )
    if api_keys.required:
        _declare_security(app)

    @app.post(
        "/v1/understand",
        response_model=Understanding,
        responses=ERROR_RESPONSES,
        summary="Understand one user turn (stateless, or within a session)",
    )
    async def understand(body: UnderstandRequest, request: Request):
        return await service.user_turn(
            body.text, body.lang, _request_id(request), "understand", session_id=body.session_id, context=body.context
        )

    @app.post(
        "/v1/respond",
        response_model=RespondResult,
        responses=ERROR_RESPONSES,
        summary="Understand a user turn and reply (needs a response model: 503 until one is promoted)",
    )
    async def respond(body: RespondRequest, request: Request):
        responder_now = service.current_responder()
        if responder_now is None:
            raise service.no_responder()
        return await service.user_turn(
            body.text,
            body.lang,
            _request_id(request),
            "respond",
            session_id=body.session_id,
            context=body.context,
            responder=responder_now,
        )

    @app.post(
        "/v1/dialogue/{session_id}",
        response_model=Understanding | AgentTurnResult,
        responses=ERROR_RESPONSES,
        summary="Add a turn to a session (started on its first turn); user turns are understood",
    )
    async def dialogue_turn(session_id: str, body: DialogueTurnRequest, request: Request):
        if body.speaker == "agent":
            return await service.agent_turn(session_id, body.text, _request_id(request))
        return await service.user_turn(body.text, body.lang, _request_id(request), "dialogue", session_id=session_id)

    @app.get(
        "/v1/dialogue/{session_id}",
        response_model=SessionView,
        responses=SESSION_RESPONSES,
        summary="A session: its (masked) turns with their understanding, state and hand-off status",
    )
    async def get_dialogue(session_id: str):
        return service.existing_session(session_id).view()

    @app.delete(
        "/v1/dialogue/{session_id}", responses=SESSION_RESPONSES, summary="End a session and forget its history"
    )
    async def delete_dialogue(session_id: str, request: Request):
        return await service.delete_session(session_id, _request_id(request))

    @app.get("/healthz", openapi_extra=NO_KEY, summary="Liveness: the process answers; says which models it serves")
    async def healthz():
        status = await understander.status()
        return {
            "status": "ok",
            "ready": status["ready"],
            "model": status.get("model"),
            "last_error": status.get("last_error"),
            "reloads": status.get("reloads"),
            "response_model": service.responder_info(),
            "sessions": len(service.sessions),
            "release": status.get("release"),  # the plan followed and each role's loaded version (or null)
        }

    @app.get(
        "/readyz",
        summary="Readiness: 200 only when the NLU model is loaded (the response model is optional)",
        responses={503: {"model": ErrorResponse}},
        openapi_extra=NO_KEY,
    )
    async def readyz(request: Request):
        status = await understander.status()
        if not status["ready"]:
            return error_response(
                503, "model_not_ready", status.get("last_error") or "the model is still loading", request_id(request)
            )
        return JSONResponse({"ready": True, "model": status.get("model")})

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics", responses=UNAUTHORIZED)
    async def prometheus():
        status = await understander.status()
        model = status.get("model")
        if model:
            metrics.set_model(model.get("name"), model.get("version"), model.get("ref", ""))
        metrics.reloads.update(status.get("reloads") or {})
        metrics.set_sessions(len(service.sessions))
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    return app


def _declare_security(app: FastAPI) -> None:
    """Add the key schemes to the OpenAPI schema (an Authorize button in /docs)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = app.openapi_schema
        if schema is None:
            schema = build()  # FastAPI.openapi keeps what it builds as app.openapi_schema
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
        return schema

    setattr(app, "openapi", openapi)  # FastAPI's documented way to extend the schema: replace app.openapi
