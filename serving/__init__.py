"""Serving: the understanding API over the NLU bundle behind the registry's serving alias.

``findial serve`` (configs/serve.yaml) runs ``app.create_app`` under uvicorn, or under Ray Serve
with ``backend=ray``. See serving/README.md for the endpoints, the hand-off rules, hot reload
and the Ray set-up. Modules:

- settings      configs/serve.yaml as checked dataclasses
- app           the FastAPI routes; schemas (bodies, OpenAPI), errors (JSON errors), guard (body checks, metrics)
- service       what a turn goes through: mask, understand, hand-off, session, audit
- understanding one new user turn per item with an NLUPipeline, in batches
- batcher       in-process batching on one inference thread; model_store: alias polling and hot swap
- handoff       when a human takes over; sessions: server-side dialogue state; audit: the JSON-lines log
- metrics       Prometheus text; responder: the pluggable response generator (none by default)
- server        ``findial serve``; ray_backend: the Ray Serve deployments
"""
