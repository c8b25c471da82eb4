"""ASGI middleware in front of the routes: request ids, body checks, request metrics.

For a request with a body it reads the body first, refusing it with a JSON
error before any route runs when it is too large (413, checked on
Content-Length and while reading), not JSON (415), not valid UTF-8 (400
invalid_utf8) or not valid JSON (400 invalid_json, with line and column);
then it hands the body on to the app. It times every request and counts it
under its route template (``/v1/dialogue/{session_id}``), never its raw path.
"""
from __future__ import annotations

import json
import re
import time
import uuid

from starlette.routing import Match

from .errors import error_response
from .metrics import Metrics

_RID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _route_template(app, scope) -> str:
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return route.path
    for r in getattr(app, "routes", ()):  # refused before routing: find the route it was meant for
        try:
            if r.matches(scope)[0] == Match.FULL:
                return r.path
        except Exception:
            continue
    return "unmatched"


class RequestGuard:
    def __init__(self, app, metrics: Metrics, max_body_bytes: int, router=None):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes
        self.router = router

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")
        rid = rid if _RID.match(rid) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = [500]
        self.metrics.in_flight += 1

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body, refusal = await self._read(headers, receive, rid)
                if refusal is not None:
                    return await refusal(scope, receive, send_with_id)
                if body and "content-type" not in headers:  # JSON is the only body this API takes
                    scope["headers"] = [*scope.get("headers", []), (b"content-type", b"application/json")]
                replayed = False

                async def replay():
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                return await self.app(scope, replay, send_with_id)
            return await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.observe_request(scope["method"], _route_template(self.router, scope), status[0],
                                         time.perf_counter() - start)

    async def _read(self, headers: dict, receive, rid: str):
        limit = self.max_body_bytes
        too_large = error_response(413, "body_too_large", f"request body is larger than {limit} bytes", rid)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return None, too_large
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and not (ctype == "application/json" or ctype.endswith("+json")):
            return None, error_response(415, "unsupported_media_type",
                                        f"request body must be application/json, not {ctype!r}", rid)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, error_response(400, "client_disconnected", "the client went away", rid)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None, too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not body:
            return body, None  # the route reports the missing fields
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, error_response(400, "invalid_utf8", f"request body is not valid UTF-8 (byte {exc.start}: "
                                        f"{exc.reason})", rid)
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            return None, error_response(400, "invalid_json", f"request body is not valid JSON: {exc.msg} at line "
                                        f"{exc.lineno} column {exc.colno}", rid)
        return body, None
