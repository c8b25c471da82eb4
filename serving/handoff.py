"""When a turn goes to a human agent.

A turn is handed off when any rule fires; each firing rule adds a reason code:

- ``low_confidence``        the intent confidence is below ``handoff.min_confidence``
- ``intent:<name>``         the intent is one of ``handoff.intents`` (complaint, request_human_agent)
- ``emotion:<name>``        the emotion is one of ``handoff.emotions`` (angry, dissatisfied)
- ``compliance:<rule>``     a compliance rule's regular expression matches the (masked) user text or
                            a generated response, e.g. a promise of a "guaranteed return" or "保本保息"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .settings import HandoffSettings


@dataclass(frozen=True)
class HandoffPolicy:
    min_confidence: float
    intents: frozenset[str]
    emotions: frozenset[str]
    rules: tuple[tuple[str, re.Pattern], ...]

    @classmethod
    def from_settings(cls, s: HandoffSettings) -> "HandoffPolicy":
        return cls(
            s.min_confidence,
            frozenset(s.intents),
            frozenset(s.emotions),
            tuple((r.name, r.compile()) for r in s.compliance_rules),
        )

    def compliance_hits(self, text: str) -> list[str]:
        return [f"compliance:{name}" for name, rx in self.rules if rx.search(text)]

    def reasons(self, understanding: dict, text: str) -> list[str]:
        """Reason codes for one understood user turn (empty: no hand-off)."""
        out = []
        confidence = understanding.get("confidence")
        if confidence is not None and confidence < self.min_confidence:
            out.append("low_confidence")
        if understanding.get("intent") in self.intents:
            out.append(f"intent:{understanding['intent']}")
        if understanding.get("emotion") in self.emotions:
            out.append(f"emotion:{understanding['emotion']}")
        return out + self.compliance_hits(text)
