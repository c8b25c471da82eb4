"""Every error the API returns is JSON: ``{"error": {"code", "message", "details"}, "request_id"}``.

Bad input is a 4xx naming the field; an unexpected failure is a 500 whose body
says nothing about its cause (the masked traceback goes to the server log, under
the request id). No error echoes what the client sent: it may hold personal data.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from findial.data.pii import default_masker

log = logging.getLogger("findial.serving")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_DIGIT_RUN = re.compile(r"\d{7,}")


def is_safe_token(value: str, pattern: re.Pattern) -> bool:
    """May ``value`` be repeated back? It matches ``pattern`` and holds no run of 7+ digits and nothing
    the PII masker would mask (a card or phone number is no request id)."""
    return bool(pattern.fullmatch(value)) and not _DIGIT_RUN.search(value) and default_masker().mask(value) == value


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[dict] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or []


def error_response(
    status: int,
    code: str,
    message: str,
    request_id: str | None,
    details: list[dict] | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or []}, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers=headers)


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _field(loc, kind: str = "") -> str:
    """The error's location; the name of an unknown field (it comes from the client) is left out."""
    parts = [str(p) if isinstance(p, int) or is_safe_token(p, _NAME) else "<unknown>" for p in loc]
    if kind == "extra_forbidden" and parts:
        parts[-1] = "<unknown>"
    return ".".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, request_id(request), exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        details = [
            {
                "field": _field(e.get("loc", ()), e.get("type", "")),
                "message": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]  # the offending input is left out on purpose
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        return error_response(422, "invalid_request", f"invalid request: {summary}", request_id(request), details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = {
            404: "no such endpoint (/openapi.json lists them)",
            405: "method not allowed on this endpoint (the Allow header lists those that are)",
        }.get(exc.status_code, str(exc.detail))
        return error_response(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            message,
            request_id(request),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        rid = request_id(request)
        log.error("request %s failed: %s (traceback follows from the server)", rid, type(exc).__name__)
        return error_response(
            500, "internal_error", "internal error; the server log has the details under this request id", rid
        )
