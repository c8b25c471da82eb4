"""The one gate check: eval reports, the HTML report, breakdown tables, compare and promotion all call it.

A gate is a minimum on one metric and, optionally, a tolerance against the current champion: with
``max_regression`` set, a candidate also fails when its value is below the champion's value (on the same
evaluation set) by more than the tolerance (as MLflow's ``MetricThreshold(min_absolute_change=...)``).
A missing metric never passes.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Gate:
    metric: str
    minimum: float
    max_regression: float | None = None  # vs the champion; None: no comparison


def passes(value: float | None, minimum: float) -> bool:
    """Whether ``value`` meets ``minimum`` (a missing value never does)."""
    return value is not None and value >= minimum


def as_gates(gates: Mapping) -> dict[str, Gate]:
    """``{metric: Gate | minimum}`` as ``{metric: Gate}`` (a bare number is a minimum with no champion check)."""
    return {m: g if isinstance(g, Gate) else Gate(m, float(g)) for m, g in gates.items()}


def check(gates: Mapping, metrics: Mapping, champion: Mapping | None = None) -> dict[str, dict]:
    """Per gate: value, minimum, passed and, when it fails, why. ``champion``: the champion's metrics on the same
    evaluation set (None: there is no champion, or none to compare with)."""
    out = {}
    for name, gate in as_gates(gates).items():
        value = metrics.get(name)
        row = {"value": value, "minimum": gate.minimum, "passed": passes(value, gate.minimum)}
        if value is None:
            row["reason"] = "missing"
        elif not row["passed"]:
            row["reason"] = f"{value:.4f} < {gate.minimum}"
        elif gate.max_regression is not None and champion is not None and champion.get(name) is not None:
            floor = champion[name] - gate.max_regression
            row.update(champion=champion[name], max_regression=gate.max_regression)
            if value < floor:
                row.update(passed=False, reason=f"{value:.4f} < champion {champion[name]:.4f} - {gate.max_regression}")
        out[name] = row
    return out


def failures(results: Mapping[str, dict]) -> list[str]:
    return [f"{name}: {r['reason']}" for name, r in results.items() if not r["passed"]]
