"""ASGI middleware in front of the routes: request ids, API keys, body checks, request metrics.

Every HTTP request first gets its request id: the client's ``X-Request-ID`` when
it is 1-64 of ``A-Z a-z 0-9 _ -`` with no run of 7+ digits and nothing the PII
masker would mask, else a fresh one (a card number sent as an id never comes back).
Then, when auth is on (``auth.py``), a request without a configured key is a 401
before anything else is read (GET /healthz and /readyz are open).

For a request with a body it reads the body first, refusing it with a JSON
error before any route runs when it is too large (413, checked on
Content-Length and while reading), not JSON (415), not received within
``limits.body_timeout_s`` (408 body_timeout, and the connection is closed), not
valid UTF-8 (400 invalid_utf8), not valid JSON (400 invalid_json, with line and
column; a number too long to convert too) or nested deeper than ``MAX_DEPTH``
(400 too_deeply_nested); then it hands the body on to the app. No error repeats
what the request sent. It times every request and counts it under its route
template (``/v1/dialogue/{session_id}``), never its raw path.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

from starlette.routing import Match

from .auth import ApiKeys
from .errors import error_response, is_safe_token
from .metrics import Metrics

_RID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_DEPTH = 32  # the API's bodies nest 4 deep; anything far deeper is refused before a parser recurses on it


def request_id_of(sent: str) -> str:
    """The client's request id when it is safe to log and repeat, else a fresh one."""
    if is_safe_token(sent, _RID):
        return sent
    while True:
        rid = uuid.uuid4().hex
        if is_safe_token(rid, _RID):  # ours follow the same rule (a hex id can hold a run of digits)
            return rid


def _depth(value) -> int:
    """How deep a parsed JSON value nests (iterative: no recursion on a deep value)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                break
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


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
    def __init__(
        self,
        app,
        metrics: Metrics,
        max_body_bytes: int,
        router=None,
        body_timeout_s: float = 10.0,
        api_keys: ApiKeys | None = None,
    ):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes
        self.router, self.body_timeout_s, self.api_keys = router, body_timeout_s, api_keys or ApiKeys()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = request_id_of(headers.get("x-request-id", ""))
        scope.setdefault("state", {})["request_id"] = rid
        status = [500]
        self.metrics.in_flight += 1

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            if not self.api_keys.allows(scope["method"], scope["path"], scope.get("headers", [])):
                refusal = error_response(
                    401,
                    "unauthorized",
                    "missing or invalid API key: send Authorization: Bearer <key> or X-API-Key: <key>",
                    rid,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                return await refusal(scope, receive, send_with_id)
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
            self.metrics.observe_request(
                scope["method"], _route_template(self.router, scope), status[0], time.perf_counter() - start
            )

    async def _read(self, headers: dict, receive, rid: str):
        limit = self.max_body_bytes
        too_large = error_response(413, "body_too_large", f"request body is larger than {limit} bytes", rid)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return None, too_large
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and not (ctype == "application/json" or ctype.endswith("+json")):
            return None, error_response(
                415, "unsupported_media_type", "request body must be JSON (Content-Type: application/json)", rid
            )
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except asyncio.TimeoutError:
                return None, error_response(
                    408,
                    "body_timeout",
                    f"the request body did not arrive within {self.body_timeout_s:g} s",
                    rid,
                    headers={"Connection": "close"},
                )
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
            return None, error_response(
                400, "invalid_utf8", f"request body is not valid UTF-8 (byte {exc.start}: {exc.reason})", rid
            )
        too_deep = error_response(400, "too_deeply_nested", f"request body nests deeper than {MAX_DEPTH} levels", rid)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return None, error_response(
                400,
                "invalid_json",
                f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                rid,
            )
        except RecursionError:  # deeper than the parser goes
            return None, too_deep
        except ValueError:  # an integer of more than 4300 digits
            return None, error_response(
                400, "invalid_json", "request body is not valid JSON: a number is too long", rid
            )
        return (None, too_deep) if _depth(value) > MAX_DEPTH else (body, None)
