"""Per-version figures of a gray release, the two-proportion test, and the automatic-rollback rule.

The same code reads the serving audit log (``findial release status``, across replicas: each record names the
version and role that answered) and the counts a server keeps in memory (its auto-rollback monitor).

- turns: turns routed to the version (answered by it, or failed on it);
- hand-off rate: answered turns handed to a human (``handoff``), over answered turns;
- low-confidence rate: answered turns with the ``low_confidence`` reason, over answered turns;
- error rate: turns that failed on the version (``model_error`` records), over turns.

The rollback rule is a set of ``findial.gates`` gates on the challenger's excess over the champion
(``error_rate_excess <= error_margin``, ``handoff_rate_excess <= handoff_margin``), checked once both have
``min_sample`` turns; a gate that fails is the reason to roll back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from findial import gates

from .release import AutoRollback

TURN_EVENTS = ("understand", "respond", "dialogue")


@dataclass
class Counts:
    turns: int = 0
    answered: int = 0
    handoffs: int = 0
    low_confidence: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def answer(self, handoff: bool, low_confidence: bool, latency_ms: float | None = None) -> None:
        self.turns += 1
        self.answered += 1
        self.handoffs += bool(handoff)
        self.low_confidence += bool(low_confidence)
        if latency_ms is not None:
            self.latencies_ms.append(float(latency_ms))

    def fail(self) -> None:
        self.turns += 1
        self.errors += 1

    @property
    def handoff_rate(self) -> float | None:
        return self.handoffs / self.answered if self.answered else None

    @property
    def low_confidence_rate(self) -> float | None:
        return self.low_confidence / self.answered if self.answered else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.turns if self.turns else None

    def latency(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]

    def figures(self) -> dict:
        return {
            "turns": self.turns,
            "answered": self.answered,
            "handoffs": self.handoffs,
            "low_confidence": self.low_confidence,
            "errors": self.errors,
            "handoff_rate": self.handoff_rate,
            "low_confidence_rate": self.low_confidence_rate,
            "error_rate": self.error_rate,
            "p50_ms": self.latency(0.50),
            "p95_ms": self.latency(0.95),
        }


@dataclass
class ShadowCounts:
    turns: int = 0
    intent_agree: int = 0
    state_agree: int = 0
    errors: int = 0

    def figures(self) -> dict:
        return {
            "turns": self.turns,
            "errors": self.errors,
            "intent_agreement": self.intent_agree / self.turns if self.turns else None,
            "state_agreement": self.state_agree / self.turns if self.turns else None,
        }


def two_proportion(x1: int, n1: int, x2: int, n2: int) -> dict:
    """Two-sided two-proportion z-test (pooled) of x1/n1 against x2/n2: {z, p_value}; None when undefined."""
    if not n1 or not n2:
        return {"z": None, "p_value": None}
    pooled = (x1 + x2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var == 0:
        return {"z": 0.0, "p_value": 1.0}
    z = (x2 / n2 - x1 / n1) / math.sqrt(var)
    return {"z": z, "p_value": math.erfc(abs(z) / math.sqrt(2))}


def compare(champion: Counts, challenger: Counts) -> dict:
    """Per rate: champion's and challenger's value, the difference and the test's p-value, with the samples."""
    out = {}
    for rate, x, n in (
        ("handoff_rate", "handoffs", "answered"),
        ("low_confidence_rate", "low_confidence", "answered"),
        ("error_rate", "errors", "turns"),
    ):
        a, b = getattr(champion, rate), getattr(challenger, rate)
        test = two_proportion(
            getattr(champion, x), getattr(champion, n), getattr(challenger, x), getattr(challenger, n)
        )
        out[rate] = {
            "champion": a,
            "challenger": b,
            "difference": None if a is None or b is None else b - a,
            "n_champion": getattr(champion, n),
            "n_challenger": getattr(challenger, n),
            **test,
        }
    return out


def rollback_gates(rules: AutoRollback) -> dict[str, gates.Gate]:
    return {
        "error_rate_excess": gates.Gate("error_rate_excess", maximum=rules.error_margin),
        "handoff_rate_excess": gates.Gate("handoff_rate_excess", maximum=rules.handoff_margin),
    }


def verdict(champion: Counts, challenger: Counts, rules: AutoRollback) -> dict:
    """``{"decided", "sample", "results", "failures"}``: ``decided`` once both sides have ``min_sample``
    turns; then ``failures`` (the rollback gates that fail) non-empty means roll the challenger back."""
    sample = {"champion": champion.turns, "challenger": challenger.turns, "min_sample": rules.min_sample}
    if min(champion.turns, challenger.turns) < rules.min_sample:
        return {"decided": False, "sample": sample, "results": {}, "failures": []}
    excess = {
        "error_rate_excess": (challenger.error_rate or 0.0) - (champion.error_rate or 0.0),
        "handoff_rate_excess": (challenger.handoff_rate or 0.0) - (champion.handoff_rate or 0.0),
    }
    results = gates.check(rollback_gates(rules), excess)
    return {"decided": True, "sample": sample, "results": results, "failures": gates.failures(results)}


def from_audit(records, since: str | None = None) -> tuple[dict[str, Counts], dict[str, ShadowCounts], dict]:
    """Per version: ``Counts`` of the turn records (and ``ShadowCounts`` of the shadow records) at or after
    ``since`` (an ISO timestamp), and the last role each version was seen in."""
    counts: dict[str, Counts] = {}
    shadow: dict[str, ShadowCounts] = {}
    roles: dict[str, str] = {}
    for r in records:
        rel = r.get("release")
        if not isinstance(rel, dict) or rel.get("version") is None:
            continue
        if since and str(r.get("ts", "")) < since:
            continue
        version = str(rel["version"])
        event = r.get("event")
        if event == "shadow":
            s = shadow.setdefault(version, ShadowCounts())
            if r.get("error"):
                s.errors += 1
                continue
            s.turns += 1
            s.intent_agree += bool((r.get("agree") or {}).get("intent"))
            s.state_agree += bool((r.get("agree") or {}).get("state"))
            continue
        roles[version] = rel.get("role") or roles.get(version, "")
        c = counts.setdefault(version, Counts())
        if event == "model_error":
            c.fail()
        elif event in TURN_EVENTS:
            c.answer(r.get("handoff"), "low_confidence" in (r.get("handoff_reasons") or []), r.get("latency_ms"))
    return counts, shadow, roles
