"""Request and response bodies of the HTTP API (they make the OpenAPI schema at /openapi.json).

Unknown fields are refused (a typo such as ``txt`` is a 422, not a silently empty turn).
A text or session id holding an unpaired surrogate or a C0 control character other
than ``\n \r \t`` (NUL, ...) is a 422 naming the field: no model or log sees one.
``lang`` is one of the label book's languages, zh or en.
Every text the API returns is masked: personal data never comes back.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


def _plain(value: str) -> str:
    if _UNSAFE.search(value):
        raise ValueError("must not contain control characters (other than \\n \\r \\t) or unpaired surrogates")
    return value


Text = Annotated[str, AfterValidator(_plain)]
Lang = Literal["zh", "en"]


class ContextTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    speaker: Literal["user", "agent"]
    text: Text


class UnderstandRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"text": "我的信用卡昨天丢了"}, {"text": "and the annual fee?", "session_id": "call-42"}]
        },
    )
    text: Text = Field(description="The user's turn. Personal data is masked before any model or log sees it.")
    session_id: Text | None = Field(
        None,
        description="Continue (or start) a server-side session: its history is "
        "the intent model's context and its state accumulates.",
    )
    lang: Lang | None = Field(None, description="zh or en; detected from the text when absent.")
    context: list[ContextTurn] = Field(
        default_factory=list,
        description="Preceding turns, oldest first, for a stateless call (ignored with session_id).",
    )


class RespondRequest(UnderstandRequest):
    pass


class DialogueTurnRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"text": "I lost my credit card"}, {"speaker": "agent", "text": "I have blocked it."}]
        },
    )
    text: Text
    speaker: Literal["user", "agent"] = Field(
        "user",
        description="user turns are understood; agent turns "
        "are recorded (as context) and checked against the compliance rules",
    )
    lang: Lang | None = None


class Entity(BaseModel):
    label: str
    start: int = Field(description="character offset into the returned (masked) text")
    end: int
    text: str
    confidence: float | None = None
    term_id: str | None = Field(None, description="glossary id of a terminology mention")


class ModelRef(BaseModel):
    ref: str
    name: str | None = None
    version: str | None = None


class Understanding(BaseModel):
    request_id: str
    session_id: str | None = None
    turn_index: int | None = Field(None, description="index of this turn in the session")
    model: ModelRef
    text: str = Field(description="the turn as the model saw it: personal data masked")
    lang: str
    pii_masked: list[str] = Field(description="labels of the personal data masked in the text")
    intent: str
    confidence: float
    emotion: str | None = None
    emotion_confidence: float | None = None
    entities: list[Entity]
    state: dict[str, Any]
    unknown_terms: list[str] = []
    handoff: bool = Field(description="true: hand this conversation to a human agent")
    handoff_reasons: list[str] = Field(
        description="low_confidence, intent:<name>, emotion:<name>, "
        "compliance:<rule>; /v1/respond also compliance:<rule>:response, "
        "no_kb_answer, ungrounded"
    )


class ResponderRef(BaseModel):
    name: str = Field(description="the registered response model (e.g. findial-response), or a custom responder's")
    version: str = Field(description="its registered version")


class RespondResult(Understanding):
    response: str | None = Field(None, description="the reply; null when the turn is handed off")
    responder: ResponderRef
    citations: list[str] | None = Field(
        None,
        description="ids of the knowledge-base articles the reply is "
        "drawn from (responder.kind: grounded; [] when handed off); null for "
        "a model responder",
    )
    kb_version: str | None = Field(None, description="the knowledge base answered from (12 hex characters)")


class AgentTurnResult(BaseModel):
    request_id: str
    session_id: str
    turn_index: int
    speaker: Literal["agent"] = "agent"
    text: str
    pii_masked: list[str]
    handoff: bool
    handoff_reasons: list[str]


class SessionView(BaseModel):
    session_id: str
    created: float
    updated: float
    lang: str | None
    state: dict[str, Any]
    handoff: bool
    handoff_reasons: list[str]
    turns: list[dict[str, Any]]


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. invalid_json, text_too_long, session_not_found")
    message: str
    details: list[dict[str, Any]] = []


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str | None = None


Responses = dict[int | str, dict[str, Any]]  # the ``responses`` of a FastAPI route: status -> OpenAPI response


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


UNAUTHORIZED: Responses = {401: _error("missing or invalid API key (when auth is on); WWW-Authenticate: Bearer")}
ERROR_RESPONSES: Responses = {  # the routes that take a body
    400: _error("body is not valid UTF-8, not valid JSON, or nested too deeply"),
    **UNAUTHORIZED,
    408: _error("the body did not arrive within limits.body_timeout_s"),
    413: _error("body or text too large"),
    415: _error("body is not JSON"),
    422: _error("missing, unknown or invalid fields; empty text; control characters"),
    503: _error("no model loaded yet (/v1/respond: no response model promoted)"),
}
SESSION_RESPONSES: Responses = {**UNAUTHORIZED, 404: _error("no such session"), 422: _error("invalid session id")}
