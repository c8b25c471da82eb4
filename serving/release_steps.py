"""The steps of a gray release, each decided under a lock, written to the promotion audit log, then applied.

- ``start``: a version takes the ``challenger`` alias at a share of sessions, only if it passes the promotion
  policy's gates (``registry.decide``: ``configs/policy.yaml``, the no-regression tolerance against the
  champion). The same version again changes its share (a ramp, gated again).
- ``promote``: the challenger takes ``champion`` through the same gates plus the gray ones: at least
  ``min_sample`` turns served and neither its error nor its hand-off rate above the champion's by more
  than the plan's margins (figures from the serving audit logs); then the challenger alias goes.
- ``rollback``: the challenger alias goes (never gated: it only lowers risk); also what a server's
  auto-rollback monitor calls.
- ``shadow``: a version takes (or leaves) the ``shadow`` alias: it scores a copy of every turn, never answers.

Every step writes its record (who: ``policy.promoter()``, the versions, the figures, each gate's result)
before anything moves (``registry.audit_step``: hash chain, the model's head tag, MLflow). The registry's
writes are ordered so that a replica reading between two of them routes safely: the tag before the alias on
``start``, the alias removal before the tag on ``rollback``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path

from findial import audit, gates, registry
from findial.policy import Policy, promoter

from .release import RELEASE_TAG, AutoRollback, ReleaseError, ReleasePlan, check_share, read_plan
from .release_stats import Counts, from_audit, rollback_gates


@dataclass
class StepResult:
    applied: bool
    record: dict
    text: str


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _write_plan(plan: ReleasePlan) -> None:
    _client().set_registered_model_tag(plan.model_name, RELEASE_TAG, plan.tag_value())


def _plan(name: str) -> ReleasePlan:
    from mlflow.exceptions import MlflowException

    try:
        return read_plan(name)
    except MlflowException:
        raise registry.PromotionError(f"model_name={name}: no such registered model") from None


def start(
    name: str,
    version: str,
    eval_set: str,
    share: float,
    audit_log: str | Path,
    rules: AutoRollback = AutoRollback(),
    policy: Policy | None = None,
) -> StepResult:
    share = check_share(share)
    if share == 0:
        raise ReleaseError("share: must be > 0 to start (findial release rollback removes a challenger)")
    rules.check("auto_rollback")
    with audit.step_lock(audit_log):
        plan = _plan(name)
        decision = registry.decide(name, str(version), "challenger", eval_set, policy, compare_alias="champion")
        if plan.champion is None:
            decision.failures.append(
                f"champion: no version of {name} holds @champion; promote one first (findial promote)"
            )
        elif decision.version == plan.champion:
            decision.failures.append(f"version: v{decision.version} is the champion already")
        decision.promoted = not decision.failures
        ramp = decision.version == plan.challenger
        new = plan.with_(
            challenger=decision.version,
            share=share,
            auto_rollback=rules,
            started=plan.started if ramp and plan.started else decision.timestamp,
            started_by=plan.started_by if ramp and plan.started_by else decision.user,
        )
        record = {
            **asdict(decision),
            "action": "release.start",
            "release": {
                "champion": plan.champion,
                "previous_challenger": plan.challenger,
                "previous_share": plan.share if plan.challenger else 0.0,
                "share": share,
                "auto_rollback": asdict(rules),
                "started": new.started,
            },
        }
        registry.audit_step(record, audit_log, f"release-start-{name}-v{decision.version}")
        if decision.promoted:
            client = _client()
            _write_plan(new)  # the share first: the alias is what routes traffic
            client.set_registered_model_alias(name, "challenger", decision.version)
            client.set_model_version_tag(name, decision.version, "release.challenger", decision.timestamp)
    head = (
        f"STARTED {name} v{decision.version} -> @challenger at {share:.0%} of sessions (champion v{plan.champion})"
        if decision.promoted
        else f"REFUSED {name} v{decision.version} -> @challenger"
    )
    return StepResult(decision.promoted, record, _decision_text(head, decision))


def _decision_text(head: str, decision) -> str:
    lines = decision.summary().splitlines()[1:]
    return "\n".join([f"{head} (eval set {decision.eval_set})", *lines])


def gray_figures(plan: ReleasePlan, audit_files) -> tuple[Counts, Counts]:
    """The champion's and the challenger's counts since the plan started, from the serving audit logs."""
    records = [r for f in audit_files for r in _read_serving_audit(f)]
    counts, _, _ = from_audit(records, plan.started)
    return counts.get(plan.champion or "", Counts()), counts.get(plan.challenger or "", Counts())


def _read_serving_audit(path) -> list[dict]:
    import json

    path = Path(path)
    if not path.exists():
        raise ReleaseError(f"audit: {path}: no such serving audit log (findial serve's audit.path)")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash: the others still count
    return out


def gray_gates(rules: AutoRollback) -> dict[str, gates.Gate]:
    return {
        "challenger_turns": gates.Gate("challenger_turns", minimum=float(rules.min_sample)),
        "champion_turns": gates.Gate("champion_turns", minimum=float(rules.min_sample)),
        **rollback_gates(rules),
    }


def promote(name: str, eval_set: str, audit_log: str | Path, audit_files, policy: Policy | None = None) -> StepResult:
    with audit.step_lock(audit_log):
        plan = _plan(name)
        if plan.challenger is None:
            raise ReleaseError(f"{name}: no challenger to promote (findial release start first)")
        champion, challenger = gray_figures(plan, audit_files)
        values = {
            "challenger_turns": float(challenger.turns),
            "champion_turns": float(champion.turns),
            "error_rate_excess": (challenger.error_rate or 0.0) - (champion.error_rate or 0.0),
            "handoff_rate_excess": (challenger.handoff_rate or 0.0) - (champion.handoff_rate or 0.0),
        }
        gray = {f"gray.{k}": v for k, v in gates.check(gray_gates(plan.auto_rollback), values).items()}
        decision = registry.decide(name, plan.challenger, "champion", eval_set, policy)
        decision.results.update(gray)
        decision.failures += [f"{k}: {r['reason']}" for k, r in gray.items() if not r["passed"]]
        decision.promoted = not decision.failures
        record = {
            **asdict(decision),
            "action": "release.promote",
            "release": {
                "share": plan.share,
                "started": plan.started,
                "figures": {"champion": champion.figures(), "challenger": challenger.figures()},
            },
        }
        registry.audit_step(record, audit_log, f"release-promote-{name}-v{decision.version}")
        if decision.promoted:
            registry.move_alias(decision)  # the challenger's version is the champion now: its sessions stay
            _client().delete_registered_model_alias(name, "challenger")
            _write_plan(plan.with_(champion=decision.version, challenger=None, share=0.0, started=None))
    head = (
        f"PROMOTED {name} v{decision.version} -> @champion (was v{plan.champion}); @challenger removed"
        if decision.promoted
        else f"REFUSED {name} v{decision.version} -> @champion"
    )
    return StepResult(decision.promoted, record, _decision_text(head, decision))


def rollback(
    name: str,
    audit_log: str | Path,
    reason: str = "manual",
    automatic: bool = False,
    figures: dict | None = None,
    expected_version: str | None = None,
) -> StepResult | None:
    """Remove the challenger (the one named ``expected_version``, when given); None when there is none."""
    with audit.step_lock(audit_log):
        plan = _plan(name)
        if plan.challenger is None or (expected_version is not None and plan.challenger != str(expected_version)):
            return None
        record = {
            "model_name": name,
            "version": plan.challenger,
            "alias": "challenger",
            "action": "release.rollback",
            "promoted": False,
            "user": promoter(),
            "timestamp": _now(),
            "automatic": automatic,
            "reason": reason,
            "release": {
                "champion": plan.champion,
                "share": plan.share,
                "started": plan.started,
                "auto_rollback": asdict(plan.auto_rollback),
                **({"figures": figures} if figures else {}),
            },
        }
        registry.audit_step(record, audit_log, f"release-rollback-{name}-v{plan.challenger}")
        _client().delete_registered_model_alias(name, "challenger")  # traffic returns to the champion
        _write_plan(plan.with_(challenger=None, share=0.0, started=None))
    how = "automatically" if automatic else f"by {record['user']}"
    return StepResult(
        True,
        record,
        f"ROLLED BACK {name} v{plan.challenger} from @challenger ({how}: {reason}); champion v{plan.champion}",
    )


def set_shadow(name: str, version: str | None, audit_log: str | Path) -> StepResult:
    """``version`` takes the shadow alias (None: the shadow alias goes). A shadow never answers, so no gate;
    it must be a registered NLU version other than the champion."""
    with audit.step_lock(audit_log):
        plan = _plan(name)
        client = _client()
        if version is not None:
            mv = registry._version(client, name, str(version))
            if registry.kind_of(mv.tags) != "nlu":
                raise ReleaseError(f"version={version}: a response model, not an NLU bundle")
            if str(version) == plan.champion:
                raise ReleaseError(f"version={version}: the champion cannot shadow itself")
        record = {
            "model_name": name,
            "version": None if version is None else str(version),
            "alias": "shadow",
            "action": "release.shadow",
            "promoted": version is not None,
            "user": promoter(),
            "timestamp": _now(),
            "release": {"champion": plan.champion, "previous_shadow": plan.shadow},
        }
        registry.audit_step(record, audit_log, f"release-shadow-{name}-v{version or 'off'}")
        if version is None:
            client.delete_registered_model_alias(name, "shadow")
        else:
            client.set_registered_model_alias(name, "shadow", str(version))
    text = (
        f"SHADOW {name} v{version}: scores a copy of every turn off the reply path"
        if version is not None
        else f"SHADOW off for {name} (was v{plan.shadow})"
    )
    return StepResult(True, record, text)
