"""``findial release start|status|promote|rollback|shadow``: a gray release from the command line.

Options are ``--name value`` or, as ``findial promote`` takes them, ``name=value`` (``version=3 share=0.1``).
The store is ``$FINDIAL_HOME/mlflow.db`` (``--tracking-uri``), the promotion audit log
``$FINDIAL_HOME/audit/promotions.jsonl`` (``--audit-log``), the serving audit logs that ``status`` and
``promote`` read ``$FINDIAL_HOME/serving/audit.jsonl`` (``--audit``, repeatable: one per replica that
writes its own). Exit codes: 0 done, 1 refused by a gate, 2 a bad argument or no such model or version.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from .release import AutoRollback, ReleaseError
from .release_stats import Counts, compare, from_audit, verdict

_KEY_VALUE = re.compile(r"^([a-z][a-z_]*)=(.*)$", re.S)


def _home() -> Path:
    return Path(os.environ.get("FINDIAL_HOME", "findial-runs"))


def _normalise(argv: list[str]) -> list[str]:
    """``share=0.1`` -> ``--share 0.1`` (the Hydra-style form of the other subcommands)."""
    out: list[str] = []
    for a in argv:
        m = _KEY_VALUE.match(a)
        out += [f"--{m.group(1).replace('_', '-')}", m.group(2)] if m else [a]
    return out


def parser() -> argparse.ArgumentParser:
    home = _home()
    p = argparse.ArgumentParser(prog="findial release", description="gray release: champion / challenger / shadow")
    sub = p.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start", help="a gated version takes @challenger at a share of sessions (again: a ramp)")
    start.add_argument("--version", required=True)
    start.add_argument("--eval-set", required=True, help="the policy's evaluation set the gates read")
    start.add_argument("--share", type=float, default=0.1, help="the challenger's share of sessions (0.1 = 10%%)")
    defaults = AutoRollback()
    start.add_argument("--error-margin", type=float, default=defaults.error_margin)
    start.add_argument("--handoff-margin", type=float, default=defaults.handoff_margin)
    start.add_argument("--min-sample", type=int, default=defaults.min_sample, help="turns on each side")
    start.add_argument("--no-auto-rollback", action="store_true", help="the server never rolls back by itself")
    status = sub.add_parser("status", help="side-by-side figures from the serving audit logs, with the tests")
    status.add_argument("--since", help="count records from this ISO time (default: when the challenger started)")
    status.add_argument("--all", action="store_true", help="count every record of the logs")
    status.add_argument("--json", action="store_true", help="the figures as JSON")
    promote = sub.add_parser("promote", help="the challenger takes @champion (policy gates + the gray figures)")
    promote.add_argument("--eval-set", required=True)
    rollback = sub.add_parser("rollback", help="remove the challenger: traffic returns to the champion")
    rollback.add_argument("--reason", default="manual")
    shadow = sub.add_parser("shadow", help="a version scores a copy of every turn off the reply path")
    group = shadow.add_mutually_exclusive_group(required=True)
    group.add_argument("--version")
    group.add_argument("--off", action="store_true")
    for q in (start, status, promote, rollback, shadow):
        q.add_argument("--model-name", default="findial-nlu")
        q.add_argument("--tracking-uri", default=f"sqlite:///{(home / 'mlflow.db').resolve()}")
        q.add_argument("--artifact-root", default=str(home / "mlartifacts"))
        q.add_argument("--audit-log", default=str(home / "audit" / "promotions.jsonl"), help="the promotion audit log")
    for q in (status, promote):
        q.add_argument(
            "--audit",
            action="append",
            help="a serving audit log (repeat for several replicas; default $FINDIAL_HOME/serving/audit.jsonl)",
        )
    return p


def status_report(name: str, audit_files, since: str | None = None, everything: bool = False) -> dict:
    """The plan and per-version figures of the serving audit logs, challenger against champion."""
    from .release_steps import _plan, _read_serving_audit

    plan = _plan(name)
    since = None if everything else (since or plan.started)
    records = [r for f in audit_files for r in _read_serving_audit(f)]
    counts, shadow, roles = from_audit(records, since)
    report = {
        "plan": plan.summary(),
        "since": since,
        "audit": [str(f) for f in audit_files],
        "versions": {
            v: {"role": plan.role_of(v) or roles.get(v) or "", **c.figures()} for v, c in sorted(counts.items())
        },
        "shadow": {v: s.figures() for v, s in sorted(shadow.items())},
    }
    if plan.challenger is not None:
        champion, challenger = counts.get(plan.champion or "", Counts()), counts.get(plan.challenger, Counts())
        report["comparison"] = compare(champion, challenger)
        report["auto_rollback"] = verdict(champion, challenger, plan.auto_rollback)
    return report


def _rate(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _ms(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def render_status(report: dict) -> str:
    plan = report["plan"]
    lines = [
        f"{plan['model_name']}: champion v{plan['champion']}"
        + (f", challenger v{plan['challenger']} at {plan['share']:.0%}" if plan["challenger"] else ", no challenger")
        + (f", shadow v{plan['shadow']}" if plan["shadow"] else "")
        + (f" (since {report['since']})" if report["since"] else " (all records)"),
        f"{'version':<8} {'role':<11} {'turns':>7} {'hand-off':>9} {'low-conf':>9} {'error':>7} {'p50 ms':>8} {'p95 ms':>8}",
    ]
    for v, f in report["versions"].items():
        lines.append(
            f"{'v' + v:<8} {f['role']:<11} {f['turns']:>7} {_rate(f['handoff_rate']):>9} "
            f"{_rate(f['low_confidence_rate']):>9} {_rate(f['error_rate']):>7} "
            f"{_ms(f['p50_ms']):>8} {_ms(f['p95_ms']):>8}"
        )
    for rate, c in (report.get("comparison") or {}).items():
        diff = "-" if c["difference"] is None else f"{c['difference']:+.3f}"
        p = "-" if c["p_value"] is None else f"{c['p_value']:.4f}"
        lines.append(
            f"{rate:<20} challenger - champion {diff}  p={p} (two-proportion z-test; n={c['n_challenger']} "
            f"vs {c['n_champion']})"
        )
    rule = report.get("auto_rollback")
    if rule:
        s = rule["sample"]
        if not rule["decided"]:
            lines.append(
                f"auto-rollback rule: undecided (turns: challenger {s['challenger']}, champion {s['champion']}; "
                f"needs {s['min_sample']} each)"
            )
        else:
            lines.append(
                "auto-rollback rule: " + ("ROLL BACK: " + "; ".join(rule["failures"]) if rule["failures"] else "passes")
            )
    for v, f in report["shadow"].items():
        lines.append(
            f"shadow v{v}: {f['turns']} turns, intent agreement {_rate(f['intent_agreement'])}, "
            f"state agreement {_rate(f['state_agreement'])}, {f['errors']} errors"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parser().parse_args(_normalise(argv))
    from findial import registry, tracking

    from . import release_steps as steps

    tracking.configure(args.tracking_uri, args.artifact_root)
    audit_files = getattr(args, "audit", None) or [str(_home() / "serving" / "audit.jsonl")]
    try:
        if args.action == "status":
            report = status_report(args.model_name, audit_files, args.since, args.all)
            print(json.dumps(report, indent=1, ensure_ascii=False) if args.json else render_status(report))
            return 0
        if args.action == "start":
            rules = AutoRollback(not args.no_auto_rollback, args.error_margin, args.handoff_margin, args.min_sample)
            result = steps.start(args.model_name, args.version, args.eval_set, args.share, args.audit_log, rules)
        elif args.action == "promote":
            result = steps.promote(args.model_name, args.eval_set, args.audit_log, audit_files)
        elif args.action == "rollback":
            rolled = steps.rollback(args.model_name, args.audit_log, args.reason)
            if rolled is None:
                print(f"{args.model_name}: no challenger: nothing to roll back")
                return 0
            result = rolled
        else:
            result = steps.set_shadow(args.model_name, None if args.off else args.version, args.audit_log)
    except (registry.PromotionError, ReleaseError) as exc:
        print(f"findial release {args.action}: {exc}", file=sys.stderr)
        return 2
    print(result.text)
    if not result.applied:
        print("refused:\n  " + "\n  ".join(result.record.get("failures") or []), file=sys.stderr)
        return 1
    return 0
