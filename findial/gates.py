"""The one gate check: eval reports, the HTML report, breakdown tables, compare and promotion all call it.

A gate bounds one metric from below (``minimum``, higher is better) or from above (``maximum``, lower is better:
latencies, leak counts) and, optionally, against the current champion: with ``max_regression`` set, a candidate
also fails when it is worse than the champion's value on the same evaluation set by more than the tolerance (as
MLflow's ``MetricThreshold(min_absolute_change=...)``). A missing metric never passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Gate:
    metric: str
    minimum: float | None = None
    max_regression: float | None = None  # vs the champion; None: no comparison
    maximum: float | None = None  # instead of minimum, for a lower-is-better metric

    def __post_init__(self):
        if (self.minimum is None) == (self.maximum is None):
            raise ValueError(f"gate {self.metric}: give exactly one of minimum and maximum")

    @property
    def higher_is_better(self) -> bool:
        return self.minimum is not None

    @property
    def limit(self) -> float:
        """The bound's number: ``minimum`` or ``maximum``, whichever is set."""
        limit = self.minimum if self.minimum is not None else self.maximum
        assert limit is not None  # __post_init__: exactly one is set
        return limit

    def meets(self, value: float | None) -> bool:
        if value is None:
            return False
        return value >= self.limit if self.higher_is_better else value <= self.limit

    @property
    def bound(self) -> str:
        """The bound as shown in reports: ``>= 0.9`` or ``<= 150``."""
        return f">= {self.minimum}" if self.higher_is_better else f"<= {self.maximum}"

    def regressed(self, value: float, champion: float) -> bool:
        """Worse than ``champion`` by more than ``max_regression`` (never, when it is not set)."""
        if self.max_regression is None:
            return False
        tolerance = self.max_regression
        return value < champion - tolerance if self.higher_is_better else value > champion + tolerance


def as_gates(gates: Mapping) -> dict[str, Gate]:
    """``{metric: Gate | minimum}`` as ``{metric: Gate}`` (a bare number is a minimum with no champion check)."""
    return {m: g if isinstance(g, Gate) else Gate(m, float(g)) for m, g in gates.items()}


def meets(value: float | None, row: Mapping) -> bool:
    """Whether ``value`` meets the bound of a ``check`` row (a breakdown group's value against the gate)."""
    return Gate("", row.get("minimum"), maximum=row.get("maximum")).meets(value)


def check(gates: Mapping, metrics: Mapping, champion: Mapping | None = None) -> dict[str, dict]:
    """Per gate: value, its bound (``minimum`` or ``maximum``, and ``bound`` as text), passed and, when it fails,
    why. ``champion``: the champion's metrics on the same evaluation set (None: none to compare with)."""
    out = {}
    for name, gate in as_gates(gates).items():
        value = metrics.get(name)
        key = "minimum" if gate.higher_is_better else "maximum"
        row = {"value": value, key: getattr(gate, key), "bound": gate.bound, "passed": gate.meets(value)}
        if value is None:
            row["reason"] = "missing"
        elif not row["passed"]:
            row["reason"] = f"{value:.4f} {'<' if gate.higher_is_better else '>'} {getattr(gate, key)}"
        elif gate.max_regression is not None and champion is not None and champion.get(name) is not None:
            row.update(champion=champion[name], max_regression=gate.max_regression)
            if gate.regressed(value, champion[name]):
                sign = "-" if gate.higher_is_better else "+"
                row.update(
                    passed=False,
                    reason=f"{value:.4f} {'<' if gate.higher_is_better else '>'} champion "
                    f"{champion[name]:.4f} {sign} {gate.max_regression}",
                )
        out[name] = row
    return out


def failures(results: Mapping[str, dict]) -> list[str]:
    return [f"{name}: {r['reason']}" for name, r in results.items() if not r["passed"]]
