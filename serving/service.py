"""What the endpoints do: mask, understand, decide on hand-off, keep sessions, audit.

Order of work for a user turn: check the text (422 empty, also when it holds only
whitespace, control or format characters; 413 too long), mask
its personal data, take the session's history and state (under the session's
lock, so turns are understood in order), understand it (the understander
batches and runs the model off the event loop), apply the hand-off policy,
update the session, write the audit record, answer.

A responder's ``Reply`` (the grounded KB responder) adds ``citations`` and ``kb_version`` to the answer
and the audit record; one that cites articles is fact-checked against them and the dialogue before it is
sent (``check_grounding``): an unsupported figure withholds it, hand-off reason ``ungrounded``, and the
audit record keeps the cited ids and the unsupported facts under ``grounding``.

Under a gray release the understander is a ``ReleaseRouter`` (``release_router.py``): the turn is routed
by its session id (or, stateless, by its masked text and context), the response's ``model`` names the
version that answered (its ``ref`` the role's alias), the audit record adds ``release`` (role and version),
and a turn that failed on a version is recorded as a ``model_error`` record naming it (the champion then
answers a failed challenger's turn).
"""

from __future__ import annotations

import asyncio
import time
import unicodedata
from typing import Any

from .audit import AuditLog
from .batcher import ModelNotReady
from .errors import ApiError
from .handoff import HandoffPolicy
from .metrics import Metrics
from .release import stateless_key
from .release_router import TurnFailed
from .responder import PromotedResponder, Reply
from .sessions import Session, SessionIdError, SessionStore, check_session_id
from .settings import ServeSettings
from .understanding import TurnInput, detect_lang, mask_text


class DialogueService:
    def __init__(self, settings: ServeSettings, understander, responder=None, metrics: Metrics | None = None):
        self.settings = settings
        self.limits = settings.limits
        self.understander = understander
        self.responder = responder  # a Responder, a PromotedResponder (the registry's alias) or None
        self.metrics = metrics or Metrics()
        self.policy = HandoffPolicy.from_settings(settings.handoff)
        self.sessions = SessionStore(self.limits.max_sessions, self.limits.session_ttl_s)
        self.audit = AuditLog(settings.audit.path, settings.audit.fsync)

    # ------------------------------------------------------------------ checks
    def check_text(self, text: str, field: str) -> tuple[str, list[str]]:
        if all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in text):
            raise ApiError(422, "empty_text", f"{field}: must contain some text", [{"field": field}])
        if len(text) > self.limits.max_text_chars:
            raise ApiError(
                413,
                "text_too_long",
                f"{field}: {len(text)} characters, more than the limit of {self.limits.max_text_chars}",
                [{"field": field, "limit": self.limits.max_text_chars}],
            )
        return mask_text(text)

    @staticmethod
    def session_id(session_id: str, field: str = "session_id") -> str:
        try:
            return check_session_id(session_id)
        except SessionIdError as exc:
            raise ApiError(422, "invalid_session_id", f"{field}: {exc}", [{"field": field}]) from None

    def existing_session(self, session_id: str) -> Session:
        s = self.sessions.get(self.session_id(session_id, "path.session_id"))
        if s is None:
            raise ApiError(
                404,
                "session_not_found",
                "no such session (never started, deleted or expired)",
                [{"field": "path.session_id"}],
            )
        return s

    # ------------------------------------------------------------------ responder
    def current_responder(self):
        """The responder to answer with now (taken once per turn), None when there is none."""
        r = self.responder
        return r.current() if isinstance(r, PromotedResponder) else r

    def no_responder(self) -> ApiError:
        why = (
            self.responder.unavailable()
            if isinstance(self.responder, PromotedResponder)
            else (
                "no response model promoted: none is configured (responder.model_ref, a registry alias such as "
                "models:/findial-response@champion, or responder.target)"
            )
        )
        return ApiError(503, "no_response_model", why + "; POST /v1/understand gives the understanding")

    def responder_info(self) -> dict | None:
        r = self.responder
        if isinstance(r, PromotedResponder):
            return r.info()
        return None if r is None else {"ref": None, "name": r.name, "version": r.version, "last_error": None}

    # ------------------------------------------------------------------ turns
    @property
    def routed(self) -> bool:
        """A gray release: the understander routes turns by session (``ReleaseRouter``)."""
        return getattr(self.understander, "routes", False) is True

    async def _understand(self, item: TurnInput, route: dict) -> tuple[dict, dict]:
        try:
            if self.routed:
                result, model = await self.understander.understand(item, **route)
                await self._audit_failures(model.get("failed") or (), route["tag"])
                return result, model
            return await self.understander.understand(item)
        except ModelNotReady as exc:
            raise ApiError(503, "model_not_ready", f"no model is loaded yet: {exc}") from None
        except TurnFailed as exc:
            await self._audit_failures(exc.failed, route["tag"])
            raise exc.cause from None

    async def _audit_failures(self, failed, tag: dict) -> None:
        for f in failed:
            await asyncio.to_thread(
                self.audit.write,
                {
                    "event": "model_error",
                    **tag,
                    "release": {"role": f["role"], "version": f["version"]},
                    "error": f["error"],
                },
            )

    def _context(self, turns) -> tuple[tuple[str, str], ...]:
        if len(turns) > self.limits.max_context_turns:
            raise ApiError(
                422,
                "context_too_long",
                f"context: {len(turns)} turns, more than the limit of {self.limits.max_context_turns}",
                [{"field": "body.context"}],
            )
        return tuple((t.speaker, self.check_text(t.text, f"body.context.{i}.text")[0]) for i, t in enumerate(turns))

    async def user_turn(
        self,
        text: str,
        lang: str | None,
        request_id: str,
        endpoint: str,
        session_id: str | None = None,
        context=(),
        responder=None,
    ) -> dict:
        """Understand the turn; with ``responder`` (``current_responder()``), reply too."""
        started = time.perf_counter()
        masked, pii = self.check_text(text, "body.text")
        if session_id is None:
            history = self._context(context)
            return await self._run_turn(masked, pii, lang, history, {}, None, request_id, endpoint, started, responder)
        field = "path.session_id" if endpoint == "dialogue" else "body.session_id"
        session, _ = self.sessions.get_or_create(self.session_id(session_id, field))
        self.metrics.set_sessions(len(self.sessions))
        async with session.lock:
            return await self._run_turn(
                masked,
                pii,
                lang,
                session.history(self.limits.max_context_turns),
                session.state,
                session,
                request_id,
                endpoint,
                started,
                responder,
            )

    async def _run_turn(
        self,
        masked: str,
        pii: list[str],
        lang: str | None,
        history,
        state: dict,
        session: Session | None,
        request_id: str,
        endpoint: str,
        started: float,
        responder,
    ) -> dict:
        lang = lang or (session.lang if session and session.lang else None) or detect_lang(masked)
        previous = tuple(session.intents) if session else ()
        route = {
            "key": session.id if session else stateless_key(masked, history),
            "session_id": session.id if session else None,
            "new_session": session is not None and session.n_turns == 0,
            "tag": {"request_id": request_id, "session_id": session.id if session else None},
        }
        result, model = await self._understand(TurnInput(masked, lang, history, dict(state), previous), route)
        text = result.pop("text")
        reasons = self.policy.reasons(result, masked)  # rules see the text before model-found names are masked
        out = {
            "request_id": request_id,
            "session_id": session.id if session else None,
            "turn_index": None,
            "model": {k: model.get(k) for k in ("ref", "name", "version")},
            "text": text,
            "lang": lang,
            "pii_masked": pii,
            **result,
            "entities": [{**e, "text": text[e["start"] : e["end"]]} for e in result["entities"]],
        }
        response: str | None = None
        grounding: dict[str, Any] = {}
        if responder is not None:
            response, reasons, grounding = await self._respond(responder, out, history, reasons)
        out.update(handoff=bool(reasons), handoff_reasons=reasons)
        if session is not None:
            session.lang = session.lang or lang
            session.state = dict(result["state"])
            out["turn_index"] = session.add_turn(
                {
                    "speaker": "user",
                    **{
                        k: out[k]
                        for k in (
                            "text",
                            "intent",
                            "confidence",
                            "emotion",
                            "emotion_confidence",
                            "entities",
                            "state",
                            "handoff_reasons",
                            "request_id",
                        )
                    },
                    "model_version": model.get("version"),
                },
                self.limits.max_context_turns,
            )
            if response is not None:
                session.add_turn(
                    {
                        "speaker": "agent",
                        "text": response,
                        "responder": responder.name,
                        **({"citations": grounding["citations"]} if grounding else {}),
                    },
                    self.limits.max_context_turns,
                )
            self._mark_handoff(session, reasons)
        if responder is not None:
            out.update(response=response, responder={"name": responder.name, "version": responder.version})
            if grounding:
                out.update(citations=grounding["citations"], kb_version=grounding["kb_version"])
        if reasons:
            self.metrics.count_handoff(reasons)
        seconds = time.perf_counter() - started
        if self.routed:
            self.understander.observe(model, reasons, seconds)
        record = {
            "event": endpoint,
            "latency_ms": round(seconds * 1000, 2),
            **out,
            **({"grounding": grounding["audit"]} if grounding else {}),
            **({"release": {"role": model.get("role"), "version": model.get("version")}} if self.routed else {}),
        }
        await asyncio.to_thread(self.audit.write, record)
        return out

    async def _respond(
        self, responder, understanding: dict, history, reasons: list[str]
    ) -> tuple[str | None, list[str], dict]:
        """(the reply or None, the hand-off reasons, {} or the grounding of a ``Reply``: citations,
        kb_version and what the audit record keeps)."""
        if reasons:  # a human takes over: no generated reply
            return None, reasons, {}
        turns = [{"speaker": s, "text": t} for s, t in history]
        reply = await asyncio.to_thread(responder.respond, understanding, turns)
        grounded = reply if isinstance(reply, Reply) else None
        grounding: dict[str, Any] = (
            {}
            if grounded is None
            else {
                "citations": [],
                "kb_version": grounded.kb_version,
                "audit": {"cited": list(grounded.citations), "unsupported": [], "reason": grounded.handoff_reason},
            }
        )
        if grounded is not None and grounded.text is None:  # the KB has no confident answer
            return None, [grounded.handoff_reason or "no_kb_answer"], grounding
        text, _ = mask_text(str(grounded.text if grounded is not None else reply))
        hits = self.policy.compliance_hits(text)
        if hits:  # never send a reply that breaks a compliance rule
            return None, [f"{h}:response" for h in hits], grounding
        if grounded is not None and grounded.citations:
            from findial.data.kb.facts import check_grounding

            said = [t for _, t in history] + [understanding["text"]]
            unsupported = check_grounding(text, list(grounded.sources), said)
            if unsupported:  # never send a figure the cited articles and the dialogue do not state
                grounding["audit"].update(unsupported=unsupported, reason="ungrounded")
                return None, ["ungrounded"], grounding
            grounding["citations"] = list(grounded.citations)
        return text, reasons, grounding

    @staticmethod
    def _mark_handoff(session: Session, reasons: list[str]) -> None:
        if reasons:
            session.handoff = True
            session.handoff_reasons = sorted(set(session.handoff_reasons) | set(reasons))

    async def agent_turn(self, session_id: str, text: str, request_id: str) -> dict:
        masked, pii = self.check_text(text, "body.text")
        session, _ = self.sessions.get_or_create(self.session_id(session_id, "path.session_id"))
        async with session.lock:
            reasons = self.policy.compliance_hits(masked)
            index = session.add_turn(
                {"speaker": "agent", "text": masked, "handoff_reasons": reasons, "request_id": request_id},
                self.limits.max_context_turns,
            )
            self._mark_handoff(session, reasons)
        if reasons:
            self.metrics.count_handoff(reasons)
        out = {
            "request_id": request_id,
            "session_id": session.id,
            "turn_index": index,
            "speaker": "agent",
            "text": masked,
            "pii_masked": pii,
            "handoff": bool(reasons),
            "handoff_reasons": reasons,
        }
        await asyncio.to_thread(self.audit.write, {"event": "agent_turn", **out})
        return out

    async def delete_session(self, session_id: str, request_id: str) -> dict:
        session = self.existing_session(session_id)
        self.sessions.delete(session.id)
        if self.routed:
            self.understander.forget(session.id)
        self.metrics.set_sessions(len(self.sessions))
        await asyncio.to_thread(
            self.audit.write,
            {
                "event": "session_deleted",
                "request_id": request_id,
                "session_id": session.id,
                "turns": len(session.turns),
            },
        )
        return {"session_id": session.id, "deleted": True, "turns": len(session.turns)}
