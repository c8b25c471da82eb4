"""Per-branch gates of a federated version: no branch below its own gate, none regressed beyond the tolerance.

A federated NLU version (tag ``findial.federated=true``) carries, per branch of the federation, the last round's
evaluation on that branch's own validation data (tags ``branch.<branch>.<metric>``, written by
``federated/publish.py``: the dialogues never leave the branch, only these figures do). The policy's
``branch_gates`` (``configs/policy.yaml``, per model kind) apply to every branch: a branch without a figure
fails (missing), and a gate with ``max_regression`` compares with the champion's figure for the same branch when
the champion has one. ``findial promote`` adds these failures to the central gates' (findial.registry.decide).
"""

from __future__ import annotations

from collections.abc import Mapping

from findial import gates as gate_check

PREFIX = "branch."


def branch_metrics(tags: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """``{branch: {metric: value}}`` from a version's ``branch.<branch>.<metric>`` tags."""
    out: dict[str, dict[str, float]] = {}
    for key, value in tags.items():
        if key.startswith(PREFIX) and key.count(".") >= 2:
            branch, metric = key[len(PREFIX) :].split(".", 1)
            try:
                out.setdefault(branch, {})[metric] = float(value)
            except ValueError:
                continue
    return out


def branch_tags(branch_eval: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """The tags of ``{branch: metrics}`` (numbers only)."""
    return {
        f"{PREFIX}{branch}.{metric}": repr(float(v))
        for branch, metrics in branch_eval.items()
        for metric, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def check(
    gates: Mapping, tags: Mapping[str, str], champion_tags: Mapping[str, str] | None = None
) -> dict[str, dict[str, dict]]:
    """``{branch: gates.check(...)}`` for every branch of a federated version's federation ({} otherwise)."""
    if not gates or tags.get("findial.federated") != "true":
        return {}
    mine, champion = branch_metrics(tags), branch_metrics(champion_tags or {})
    branches = [b for b in tags.get("findial.federated.branches", "").split(",") if b]
    return {b: gate_check.check(gates, mine.get(b, {}), champion.get(b)) for b in branches}


def failures(results: Mapping[str, Mapping[str, dict]]) -> list[str]:
    return [f"branch {b}: {f}" for b, table in results.items() for f in gate_check.failures(table)]
