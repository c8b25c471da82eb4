"""Server-side dialogue sessions: the (masked) history, the accumulated state, the hand-off status.

Sessions live in the memory of the process that serves HTTP (under Ray Serve,
the single ingress replica). An idle session expires after ``session_ttl_s``;
beyond ``max_sessions`` the least recently used one is dropped. Each session
has an ``asyncio.Lock`` so that its turns are understood one after another.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from findial.data.pii import default_masker

SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class SessionIdError(ValueError):
    pass


def check_session_id(session_id: str) -> str:
    """An opaque id: 1-128 of [A-Za-z0-9_.:-], and no personal data (a phone number is no session id)."""
    if not SESSION_ID.fullmatch(session_id):  # fullmatch: "$" would let a trailing newline through
        raise SessionIdError(
            "session id must be 1-128 characters of A-Z a-z 0-9 _ . : - (starting with a letter or digit)"
        )
    if not default_masker().is_clean(session_id):
        raise SessionIdError("session id looks like personal data (a phone, card or ID number); use an opaque id")
    return session_id


@dataclass
class Session:
    id: str
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    turns: list[dict] = field(default_factory=list)  # the last turns: {"speaker", "text" (masked), + predictions}
    n_turns: int = 0  # turns so far (``turns`` keeps only the last ones)
    # The distinct intents predicted for the user turns, each at its latest position (oldest first): at
    # most one entry per intent of the label book, and the dialogue's task (the last one that is not a
    # non-task intent) however many turns ago it was set, after ``turns`` has let that turn go.
    intents: list[str] = field(default_factory=list)
    state: dict = field(default_factory=dict)
    lang: str | None = None
    handoff: bool = False
    handoff_reasons: list[str] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def history(self, max_turns: int) -> tuple[tuple[str, str], ...]:
        return tuple((t["speaker"], t["text"]) for t in self.turns[-max_turns:])

    def add_turn(self, turn: dict, max_turns: int) -> int:
        """Append ``turn`` (keeping the last ``max_turns``); its index in the whole session."""
        self.turns.append(turn)
        del self.turns[:-max_turns]
        if turn.get("intent") is not None:
            if turn["intent"] in self.intents:
                self.intents.remove(turn["intent"])
            self.intents.append(turn["intent"])
        self.n_turns += 1
        self.updated = time.time()
        return self.n_turns - 1

    def view(self) -> dict:
        return {
            "session_id": self.id,
            "created": self.created,
            "updated": self.updated,
            "lang": self.lang,
            "state": dict(self.state),
            "handoff": self.handoff,
            "handoff_reasons": list(self.handoff_reasons),
            "turns": [dict(t) for t in self.turns],
        }


class SessionStore:
    def __init__(self, max_sessions: int, ttl_s: float):
        self.max_sessions, self.ttl_s = max_sessions, ttl_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for sid in [s.id for s in self._sessions.values() if now - s.updated > self.ttl_s]:
            del self._sessions[sid]

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            self._expire(time.time())
            s = self._sessions.get(session_id)
            if s is not None:
                self._sessions.move_to_end(session_id)
            return s

    def get_or_create(self, session_id: str) -> tuple[Session, bool]:
        with self._lock:
            self._expire(time.time())
            s = self._sessions.get(session_id)
            if s is not None:
                self._sessions.move_to_end(session_id)
                return s, False
            s = self._sessions[session_id] = Session(session_id)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
            return s, True

    def delete(self, session_id: str) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)
