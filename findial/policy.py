"""The promotion policy (``configs/policy.yaml``): gates and the evaluation sets they bind, per model kind.

The command line never chooses the policy: ``findial promote`` and ``findial run`` load the reviewed file.
Library callers (tests, a user's own scripts) may build a ``Policy`` in code.
"""

from __future__ import annotations

import getpass
import importlib.resources
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from findial.gates import Gate

POLICY_FILE = Path(str(importlib.resources.files("findial.configs") / "policy.yaml"))
KINDS = ("nlu", "response")


class PolicyError(ValueError):
    pass


class EvalSetMismatch(PolicyError):
    """Another file scored under an evaluation set name the policy binds to a fingerprint."""


@dataclass(frozen=True)
class Policy:
    gates: Mapping[str, Mapping[str, Gate]]  # kind -> metric -> gate
    eval_sets: Mapping[str, Mapping[str, str]]  # kind -> eval set name -> data fingerprint
    source: str = "(in code)"
    # kind -> metric -> gate each branch of a federated version meets on its own validation data
    branch_gates: Mapping[str, Mapping[str, Gate]] = field(default_factory=dict)

    def gates_for(self, kind: str) -> dict[str, Gate]:
        if kind not in self.gates:
            raise PolicyError(f"{self.source}: no gates for model kind {kind!r}")
        return dict(self.gates[kind])

    def eval_set_problem(self, kind: str, eval_set: str, data_fingerprint: str | None) -> str | None:
        """Why an evaluation on ``eval_set`` with ``data_fingerprint`` cannot count for promotion (None: it can)."""
        bound = self.eval_sets.get(kind, {})
        if eval_set not in bound:
            return (
                f"eval set {eval_set!r} is not in the promotion policy ({self.source}: "
                f"{', '.join(bound) or 'none'} for {kind} models)"
            )
        if data_fingerprint != bound[eval_set]:
            return (
                f"eval set {eval_set!r} is bound to data fingerprint {bound[eval_set]}, "
                f"the evaluation recorded {data_fingerprint}"
            )
        return None

    def check_recordable(self, kind: str, eval_set: str, data_fingerprint: str, data_file) -> None:
        """Refuse (``EvalSetMismatch``) to record an evaluation of ``data_file`` under a policy set it is not."""
        bound = self.eval_sets.get(kind, {}).get(eval_set)
        if bound is not None and bound != data_fingerprint:
            raise EvalSetMismatch(
                f"eval_set={eval_set}: the promotion policy ({self.source}) binds it to data "
                f"fingerprint {bound}; {data_file} gives {data_fingerprint}. Score another file "
                f"under another eval_set name (nothing was recorded)"
            )

    @classmethod
    def of(
        cls,
        gates: Mapping[str, Mapping],
        eval_sets: Mapping[str, Mapping[str, str]] | None = None,
        source: str = "(in code)",
        branch_gates: Mapping[str, Mapping] | None = None,
    ) -> "Policy":
        """``gates`` (and ``branch_gates``): kind -> metric -> minimum, or ``{minimum | maximum, max_regression}``."""
        return cls(
            {k: {m: _gate(m, g, f"{source}: {k}.gates.{m}") for m, g in gs.items()} for k, gs in gates.items()},
            {k: dict(v) for k, v in (eval_sets or {}).items()},
            source,
            {
                k: {m: _gate(m, g, f"{source}: {k}.branch_gates.{m}") for m, g in gs.items()}
                for k, gs in (branch_gates or {}).items()
            },
        )


def _gate(metric: str, raw, where: str) -> Gate:
    if isinstance(raw, Gate):
        return raw
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return Gate(metric, float(raw))
    if (
        not isinstance(raw, Mapping)
        or len({"minimum", "maximum"} & set(raw)) != 1
        or set(raw) - {"minimum", "maximum", "max_regression"}
    ):
        raise PolicyError(
            f"{where}: expected {{minimum: N}} or {{maximum: N}}, optionally with max_regression: N; got {raw!r}"
        )
    try:
        num = {k: None if raw.get(k) is None else float(raw[k]) for k in ("minimum", "maximum", "max_regression")}
    except (TypeError, ValueError):
        raise PolicyError(f"{where}: minimum, maximum and max_regression are numbers, got {raw!r}") from None
    return Gate(metric, num["minimum"], num["max_regression"], num["maximum"])


def load(path: str | Path = POLICY_FILE) -> Policy:
    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    gates, eval_sets, branch_gates = {}, {}, {}
    for kind, section in raw.items():
        if (
            kind not in KINDS
            or not isinstance(section, Mapping)
            or set(section) - {"gates", "eval_sets", "branch_gates"}
        ):
            raise PolicyError(
                f"{path}: {kind}: expected a model kind ({', '.join(KINDS)}) with gates, eval_sets "
                "and optionally branch_gates"
            )
        if section.get("branch_gates") is not None:
            if not isinstance(section["branch_gates"], Mapping):
                raise PolicyError(f"{path}: {kind}.branch_gates: expected metric -> gate")
            branch_gates[kind] = section["branch_gates"]
        if not section.get("gates"):
            raise PolicyError(f"{path}: {kind}.gates: a model kind needs at least one gate")
        gates[kind] = section["gates"]
        sets = section.get("eval_sets") or {}
        for name, fp in sets.items():
            if not isinstance(fp, str) or not fp:
                raise PolicyError(f"{path}: {kind}.eval_sets.{name}: expected a data fingerprint, got {fp!r}")
        eval_sets[kind] = sets
    return Policy.of(gates, eval_sets, source=str(path), branch_gates=branch_gates)


def promoter() -> str:
    """Who promotes: the MLflow user when one is configured, else the operating-system user (never an argument)."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
