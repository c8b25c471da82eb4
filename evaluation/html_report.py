"""One self-contained HTML page per evaluation: inline CSS, PNGs as base64 data URIs, no external resource.

``render_html(report, images, errors)`` renders the dict that ``evaluate`` writes to report.json.
Every text value goes through ``redact_json`` (personal data masked) and ``html.escape``; the
building blocks (``page``, ``table``, ``fmt``) are reused by the comparison report.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path

from findial.data.pii import PII_LABELS, redact_json
from findial.gates import meets

from .report import HEADLINE, multi_turn_rows
from .tables import BREAKDOWN_METRICS

MAX_MENTIONS = 8  # mentions listed per error cell
HEADERS = {
    "n_dialogues": "dialogues",
    "n_user_turns": "user turns",
    "terminology_f1": "terminology F1",
    "multi_turn_accuracy": "multi-turn accuracy",
    "intent_accuracy": "intent accuracy",
    "intent_macro_f1": "intent macro-F1",
    "entity_micro_f1": "entity micro-F1",
    "joint_state_accuracy": "joint state accuracy",
    "emotion_accuracy": "emotion accuracy",
}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans CJK SC","Microsoft YaHei",sans-serif;
 color:#1d2330;background:#f5f6f8;margin:0}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:22px;margin:0 0 6px}h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #d9dde3;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 6px;color:#444}
.meta{color:#555;margin:0 0 14px}.meta code{background:#eceff3;padding:1px 4px;border-radius:3px;word-break:break-all}
.banner{padding:10px 14px;border-radius:6px;font-weight:600;margin:12px 0}
.banner.pass{background:#e3f4e6;color:#1b5e20;border:1px solid #a5d6a7}
.banner.fail{background:#fdecea;color:#b71c1c;border:1px solid #ef9a9a}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;background:#fff;margin:4px 0 8px;font-size:13px}
th,td{border:1px solid #e0e3e8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fafbfc}
.pass{color:#1b5e20;font-weight:600}.fail{color:#b71c1c;font-weight:600}.missing{color:#8a6d00;font-weight:600}
td.pass{background:#eef8ef!important}td.fail{background:#fdf0ee!important}
.bar{display:inline-block;height:8px;background:#5c85c7;border-radius:2px;vertical-align:middle;margin-left:6px}
.grid{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
figure{margin:0;background:#fff;border:1px solid #e0e3e8;border-radius:6px;padding:8px;max-width:100%}
figure img{max-width:100%;height:auto;display:block;cursor:zoom-in}figcaption{font-size:12px;color:#555;margin-top:4px}
figure input{display:none}figure input:checked+label img{max-width:none;cursor:zoom-out}figure label{display:block;overflow-x:auto}
th.wrap{white-space:normal;min-width:64px}
table.errors{width:100%;table-layout:fixed}
.errors td{font-size:12px;overflow-wrap:anywhere}.m{display:block}.errors q{color:#555}
.errors .m.fail,.errors .m.missing{font-weight:400}
.muted{color:#777}
"""


def fmt(v) -> str:
    """4 decimals for floats, '-' for None, str otherwise."""
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def esc(v) -> str:
    return html.escape(str(v), quote=True)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence],
    css_class: str = "",
    widths: Sequence[str] | None = None,
    wrap_headers: bool = False,
) -> str:
    """An HTML table. A cell is a value (escaped; numbers right-aligned) or a (raw_html, td_class) pair.

    ``widths``: CSS widths of the columns (for fixed-layout tables); ``wrap_headers``: let long headers wrap.
    """
    cols = "<colgroup>" + "".join(f'<col style="width:{esc(w)}">' for w in widths) + "</colgroup>" if widths else ""
    th = '<th class="wrap">' if wrap_headers else "<th>"
    out = [
        f'<div class="scroll"><table class="{esc(css_class)}">{cols}<thead><tr>',
        "".join(f"{th}{esc(h)}</th>" for h in headers),
        "</tr></thead><tbody>",
    ]
    for row in rows:
        out.append("<tr>")
        for cell in row:
            if isinstance(cell, tuple):
                raw, cls = cell
                out.append(f'<td class="{esc(cls)}">{raw}</td>')
            elif isinstance(cell, (int, float)) and not isinstance(cell, bool) or cell is None:
                out.append(f'<td class="num">{esc(fmt(cell))}</td>')
            else:
                out.append(f"<td>{esc(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def gate_cell(value, passed: bool) -> tuple[str, str]:
    if value is None:
        return '<span class="missing">missing</span>', ""
    return ('<span class="pass">pass</span>', "pass") if passed else ('<span class="fail">FAIL</span>', "fail")


def image_tag(png: bytes | str | Path, alt: str) -> str:
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n"
    )


def _gates_section(gates: dict) -> str:
    failing = [k for k, g in gates.items() if not g["passed"]]
    banner = (
        f'<div class="banner pass">All {len(gates)} gates pass</div>'
        if not failing
        else f'<div class="banner fail">{len(failing)} of {len(gates)} gates do not pass: {esc(", ".join(failing))}</div>'
    )
    rows = []
    for name, g in gates.items():
        raw, cls = gate_cell(g["value"], g["passed"])
        rows.append([name, g["value"], g["bound"], (raw, cls)])
    return '<h2 id="gates">Gates</h2>' + banner + table(["metric", "value", "bound", "result"], rows, "gates")


def _metric_cell(name: str, value, gates: dict) -> object:
    if name in gates and value is not None:
        return esc(fmt(value)), "num " + ("pass" if meets(value, gates[name]) else "fail")
    return value


def _confidence_table(conf: dict | None) -> str:
    if not conf:
        return '<p class="muted">no confidences</p>'
    return table(
        ["predictions", "turns", "mean confidence"],
        [
            ["correct intent", conf["n_correct"], conf["mean_confidence_correct"]],
            ["wrong intent", conf["n_incorrect"], conf["mean_confidence_incorrect"]],
        ],
    )


def _breakdown_section(title: str, rows: dict, gates: dict) -> str:
    if not rows:
        return ""
    body = [[group, *(_metric_cell(k, r.get(k), gates) for k in BREAKDOWN_METRICS)] for group, r in rows.items()]
    return f"<h3>{esc(title)}</h3>" + table(
        ["group", *(HEADERS.get(k, k) for k in BREAKDOWN_METRICS)], body, wrap_headers=True
    )


def _prf_rows(per_label: dict, with_domain: bool) -> list[list]:
    rows = []
    for label, r in per_label.items():
        f1 = r.get("f1")
        bar = f'<span class="bar" style="width:{round(60 * f1)}px"></span>' if f1 else ""
        row = [label] + ([r.get("domain", "")] if with_domain else [])
        rows.append(
            row
            + [r.get("precision"), r.get("recall"), (esc(fmt(f1)) + bar, "num"), r.get("support"), r.get("predicted")]
        )
    return rows


def _surface_text(text: str) -> str | None:
    """The text mention offsets can be read against: None when masking may have shifted them."""
    return None if any(f"[{label}]" in text for label in PII_LABELS) else text


def _mentions(mentions, other, text: str | None) -> str:
    """One line per mention (label "surface" =term_id); those absent from ``other`` are flagged."""
    other = {tuple(o) for o in other or ()}
    lines = []
    for e in list(mentions or ())[:MAX_MENTIONS]:
        start, end, label, term = e[0], e[1], e[2], e[3] if len(e) > 3 else None
        where = (
            f" <q>{esc(text[start:end])}</q>"
            if text is not None and 0 <= start < end <= len(text)
            else f"@{start}-{end}"
        )
        flag = "" if tuple(e) in other else " fail"
        lines.append(f'<span class="m{flag}">{esc(label)}{where}{" =" + esc(term) if term else ""}</span>')
    extra = len(mentions or ()) - MAX_MENTIONS
    if extra > 0:
        lines.append(f'<span class="m muted">+{extra} more</span>')
    return "".join(lines) or '<span class="muted">none</span>'


def _state(s, other) -> str:
    other = other or {}
    lines = [
        f'<span class="m{"" if other.get(k) == v else " fail"}">{esc(k)}={esc(v)}</span>' for k, v in (s or {}).items()
    ]
    return "".join(lines) or '<span class="muted">none</span>'


def _errors_section(errors: list[dict], total: int, limit: int) -> str:
    shown = errors[:limit]
    head = (
        f'<h2 id="errors">Errors</h2><p class="meta">User turns with a wrong intent, entity or state: '
        f"first {len(shown)} of {total} (texts masked; all of them in errors.jsonl). Red: a predicted intent, "
        f"mention or slot that differs from gold, or a gold one that was missed.</p>"
    )
    if not shown:
        return head
    rows = []
    for e in shown:
        text = _surface_text(e.get("text", ""))
        gold_i, pred_i = e.get("gold_intent"), e.get("pred_intent")
        intent = (
            f'<span class="m">{esc(gold_i)}</span><span class="m{"" if gold_i == pred_i else " fail"}">'
            f'&rarr; {esc(pred_i)}</span><span class="m muted">conf. {esc(fmt(e.get("confidence")))}</span>'
        )
        rows.append(
            [
                (f'{esc(e.get("dialogue_id"))}<br><span class="muted">{esc(e.get("lang"))}</span>', ""),
                e.get("text", ""),
                (intent, ""),
                (_mentions(e.get("gold_entities"), e.get("pred_entities"), text), ""),
                (_mentions(e.get("pred_entities"), e.get("gold_entities"), text), ""),
                (_state(e.get("gold_state"), e.get("pred_state")), ""),
                (_state(e.get("pred_state"), e.get("gold_state")), ""),
            ]
        )
    return head + table(
        [
            "dialogue",
            "text (masked)",
            "intent: gold → predicted",
            "gold entities",
            "predicted entities",
            "gold state",
            "predicted state",
        ],
        rows,
        "errors",
        widths=["8%", "22%", "17%", "14%", "14%", "12.5%", "12.5%"],
    )


def render_html(
    report: dict,
    images: dict[str, bytes | str | Path] | None = None,
    errors: list[dict] | None = None,
    max_errors: int = 50,
) -> str:
    """The evaluation page. ``images``: caption -> PNG (bytes or path); ``errors``: rows of errors.jsonl."""
    report = redact_json(report)
    errors = redact_json(list(errors or []))
    m, gates = report["metrics"], report["gates"]
    reg = report.get("registered")
    parts = [
        f"<h1>findial evaluation: {esc(report['eval_set'])}</h1>",
        '<p class="meta">model <code>'
        + esc(report["model"])
        + "</code>"
        + (f" (registered {esc(reg[0])} v{esc(reg[1])})" if reg else "")
        + f"<br>data <code>{esc(report['data_file'])}</code> fingerprint <code>{esc(report['data_fingerprint'])}</code>"
        + f"<br>{esc(m.get('n_dialogues'))} dialogues, {esc(m.get('n_user_turns'))} user turns "
        + f"({esc(m.get('n_multi_turn'))} multi-turn); prediction {esc(report.get('prediction_seconds'))} s "
        + f"({esc(report.get('turns_per_second'))} turns/s)</p>",
        _gates_section(gates),
        '<div class="grid"><div><h2 id="metrics">Headline metrics</h2>',
        table(["metric", "value"], [[k, _metric_cell(k, m.get(k), gates)] for k in HEADLINE]),
        '</div><div><h2 id="confidence">Intent confidence</h2>',
        _confidence_table(report.get("confidence")),
        "</div></div>",
    ]
    breakdowns = report.get("breakdowns") or {}
    if breakdowns:
        parts.append('<h2 id="breakdowns">Breakdowns</h2>')
        for key, rows in breakdowns.items():
            parts.append(_breakdown_section(f"by {key}", rows, gates))
    if (report.get("multi_turn") or {}).get("phenomena"):
        phen, slots = multi_turn_rows(report["multi_turn"])
        parts += [
            '<h2 id="multi-turn">Multi-turn turns by phenomenon</h2>',
            table(["phenomenon", "turns", "multi-turn accuracy", "intent right", "state right"], phen),
            '<h2 id="slots">State slots on multi-turn turns</h2><p class="meta">slot accuracy (turns) by how '
            "the gold value came about; absent: gold has none, so any predicted value is wrong</p>",
            table(["slot", "wrong", "carried", "set", "replaced", "absent"], slots),
        ]
    if images:
        parts.append('<h2 id="plots">Plots</h2><div class="grid">')
        parts += [
            f'<figure><input type="checkbox" id="zoom{n}"><label for="zoom{n}">{image_tag(png, caption)}</label>'
            f"<figcaption>{esc(caption)} (click to toggle full size)</figcaption></figure>"
            for n, (caption, png) in enumerate(images.items())
        ]
        parts.append("</div>")
    if report.get("intents"):
        parts += [
            '<h2 id="intents">Intents</h2>',
            table(
                ["intent", "domain", "precision", "recall", "f1", "support", "predicted"],
                _prf_rows(report["intents"], with_domain=True),
            ),
        ]
    if m.get("entities"):
        ents = dict(sorted(m["entities"].items(), key=lambda kv: (kv[0] == "micro", kv[0])))
        parts += [
            '<h2 id="entities">Entities (strict span + label)</h2>',
            table(["label", "precision", "recall", "f1", "support", "predicted"], _prf_rows(ents, False)),
        ]
    if errors is not None:
        parts.append(_errors_section(errors, report.get("n_errors", len(errors)), max_errors))
    return page(f"findial evaluation: {report['eval_set']}", "\n".join(parts))
