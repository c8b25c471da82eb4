"""Human-readable evaluation report (Markdown)."""

from __future__ import annotations

from .tables import BREAKDOWN_METRICS

HEADLINE = [
    "terminology_f1",
    "multi_turn_accuracy",
    "intent_accuracy",
    "intent_macro_f1",
    "entity_micro_f1",
    "joint_state_accuracy",
    "emotion_accuracy",
]


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def render_markdown(report: dict) -> str:
    m = report["metrics"]
    lines = [
        f"# findial evaluation: {report['eval_set']}",
        "",
        f"- model: `{report['model']}`"
        + (f" (registered {report['registered'][0]} v{report['registered'][1]})" if report.get("registered") else ""),
        f"- data: `{report['data_file']}` (fingerprint `{report['data_fingerprint']}`)",
        f"- dialogues: {m.get('n_dialogues')}, user turns: {m.get('n_user_turns')}, "
        f"multi-turn user turns: {m.get('n_multi_turn')}",
        f"- prediction: {report['prediction_seconds']} s ({report['turns_per_second']} turns/s)",
        "",
        "## Gates",
        "",
        "| metric | value | bound | result |",
        "|---|---|---|---|",
    ]
    for name, g in report["gates"].items():
        result = "missing" if g["value"] is None else ("pass" if g["passed"] else "FAIL")
        lines.append(f"| {name} | {_fmt(g['value'])} | {g['bound']} | {result} |")
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(m.get(k))} |" for k in HEADLINE]
    lines += [
        "",
        "## Entities (strict span + label)",
        "",
        "| label | precision | recall | f1 | support |",
        "|---|---|---|---|---|",
    ]
    for label, r in sorted(m.get("entities", {}).items(), key=lambda kv: (kv[0] == "micro", kv[0])):
        lines.append(
            f"| {label} | {_fmt(r.get('precision'))} | {_fmt(r.get('recall'))} | {_fmt(r.get('f1'))} "
            f"| {r.get('support')} |"
        )
    lines += _multi_turn_lines(report.get("multi_turn"))
    lines += _intent_lines(report.get("intents")) + _breakdown_lines(report.get("breakdowns"))
    lines += _confidence_lines(report.get("confidence"), report.get("plots") or {})
    return "\n".join(lines) + "\n"


SLOT_KINDS = ("carried", "set", "replaced", "absent")


def multi_turn_rows(mt: dict) -> tuple[list[list], list[list]]:
    """(phenomenon rows, slot rows) of the multi-turn breakdown (``multi_turn.py``), cells as printed values."""
    phen = [
        [name, r["n"], _fmt(r["multi_turn_accuracy"]), _fmt(r["intent_accuracy"]), _fmt(r["state_accuracy"])]
        for name, r in mt.get("phenomena", {}).items()
    ]
    slots = [
        [slot, r["wrong"], *(f"{_fmt(r[k]['accuracy'])} ({r[k]['n']})" if k in r else "-" for k in SLOT_KINDS)]
        for slot, r in mt.get("slots", {}).items()
    ]
    return phen, slots


def _multi_turn_lines(mt: dict | None) -> list[str]:
    if not mt or not mt.get("phenomena"):
        return []
    phen, slots = multi_turn_rows(mt)
    lines = [
        "",
        "## Multi-turn turns by phenomenon",
        "",
        "| phenomenon | turns | multi-turn accuracy | intent right | state right |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in phen]
    lines += [
        "",
        "## State slots on multi-turn turns (slot accuracy (turns), by how the gold value came about;"
        " absent: gold has none, so any predicted value is wrong)",
        "",
        "| slot | wrong | carried | set | replaced | absent |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in slots]
    return lines


def _intent_lines(intents: dict | None) -> list[str]:
    if not intents:
        return []
    lines = [
        "",
        "## Intents",
        "",
        "| intent | domain | precision | recall | f1 | support | predicted |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {r['domain']} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['f1'])} "
        f"| {r['support']} | {r['predicted']} |"
        for k, r in intents.items()
    ]
    return lines


def _breakdown_lines(breakdowns: dict | None) -> list[str]:
    lines = []
    for key, groups in (breakdowns or {}).items():
        lines += [
            "",
            f"## By {key}",
            "",
            "| " + " | ".join([key, *BREAKDOWN_METRICS]) + " |",
            "|" + "---|" * (len(BREAKDOWN_METRICS) + 1),
        ]
        lines += [
            "| " + " | ".join([group, *(_fmt(r.get(k)) for k in BREAKDOWN_METRICS)]) + " |"
            for group, r in groups.items()
        ]
    return lines


def _confidence_lines(conf: dict | None, plots: dict) -> list[str]:
    lines = []
    if conf:
        lines += [
            "",
            "## Intent confidence",
            "",
            f"- correct: {conf['n_correct']} turns, mean confidence {_fmt(conf['mean_confidence_correct'])}",
            f"- incorrect: {conf['n_incorrect']} turns, mean confidence {_fmt(conf['mean_confidence_incorrect'])}",
        ]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({file})" for name, file in plots.items()]
    return lines
