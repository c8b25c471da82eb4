"""`findial compare`: two models on the same corpus file, metric by metric, with deltas and gates.

``a`` is the candidate (default: the newest registered version), ``b`` the baseline (default: the
champion alias); ``delta = a - b``, so a positive delta means the candidate scores higher. Each side
gets its full evaluation report (JSON, Markdown, HTML, plots) under ``a/`` and ``b/``; the
comparison itself is compare.json, compare.md and compare.html. Everything is logged as ONE run of
the ``findial-compare`` experiment: no ``findial-eval`` runs and no ``eval.*`` tags on the model
versions (a comparison is not an evaluation of record; promotion still needs ``findial eval``).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from findial import tracking
from findial.data.pii import redact_json
from findial.gates import as_gates

from .html_report import HEADERS, esc, fmt, gate_cell, page, table
from .evaluate import build_report, predict, write_report
from .report import HEADLINE
from .tables import BREAKDOWN_METRICS

METRICS = [*HEADLINE, "terminology_precision", "terminology_recall", "n_dialogues", "n_user_turns", "n_multi_turn"]


@dataclass
class CompareResult:
    comparison: dict
    files: dict[str, Path]
    run_id: str


def newest_version(model_name: str) -> str:
    """The highest version number registered under ``model_name``."""
    from mlflow import MlflowClient

    versions = MlflowClient().search_model_versions(f"name='{model_name}'")
    if not versions:
        raise LookupError(f"registered model {model_name!r} has no versions (register one with `findial run`)")
    return str(max(int(v.version) for v in versions))


def check_ref(side: str, ref: str) -> None:
    """Fail before any prediction when a model reference does not resolve (no such version, alias, bundle)."""
    if not ref.startswith("models:/"):
        if not (Path(ref) / "bundle.json").is_file():
            raise ValueError(f"{side}={ref}: not a findial bundle directory (no bundle.json)")
        return
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    spec = ref[len("models:/") :]
    if "@" not in spec and "/" not in spec:
        raise ValueError(f"{side}={ref}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    try:
        if "@" in spec:
            MlflowClient().get_model_version_by_alias(*spec.split("@", 1))
        else:
            MlflowClient().get_model_version(*spec.rsplit("/", 1))
    except MlflowException as exc:
        raise ValueError(f"{side}={ref}: no such registered model version or alias ({exc})") from exc


def _delta(a, b):
    return None if a is None or b is None else a - b


def metric_rows(a: dict, b: dict, gates) -> list[dict]:
    """One row per metric: a, b, delta (a - b), and for gate metrics the bound and each side's pass."""
    rows, gates = [], as_gates(gates)
    gate_first = [*gates, *(m for m in METRICS if m not in gates)]
    for name in gate_first:
        va, vb = a["metrics"].get(name), b["metrics"].get(name)
        row = {"metric": name, "a": va, "b": vb, "delta": _delta(va, vb)}
        if name in gates:
            row.update(
                bound=gates[name].bound, a_passed=a["gates"][name]["passed"], b_passed=b["gates"][name]["passed"]
            )
        rows.append(row)
    return rows


def breakdown_rows(a: dict, b: dict) -> dict[str, list[dict]]:
    """Per breakdown key (lang, branch): one row per group and metric with a, b and delta."""
    out = {}
    for key in dict.fromkeys([*a.get("breakdowns", {}), *b.get("breakdowns", {})]):
        ga, gb = a.get("breakdowns", {}).get(key, {}), b.get("breakdowns", {}).get(key, {})
        out[key] = [
            {
                "group": g,
                "metric": m,
                "a": ga.get(g, {}).get(m),
                "b": gb.get(g, {}).get(m),
                "delta": _delta(ga.get(g, {}).get(m), gb.get(g, {}).get(m)),
            }
            for g in sorted(set(ga) | set(gb))
            for m in BREAKDOWN_METRICS
            if not m.startswith("n_")
        ]
    return out


def _side(ref: str, report: dict, report_dir: str) -> dict:
    return {
        "model": ref,
        "registered": report["registered"],
        "report_dir": report_dir,
        "data_fingerprint": report["data_fingerprint"],
        "all_gates_pass": all(g["passed"] for g in report["gates"].values()),
    }


def compare(
    a_ref: str,
    b_ref: str,
    data_file: str | Path,
    gates,
    eval_set: str | None = None,
    out_dir: str | Path | None = None,
    device: str = "auto",
    experiment: str = "findial-compare",
    html_errors: int = 50,
) -> CompareResult:
    check_ref("a", a_ref)
    check_ref("b", b_ref)
    out = Path(out_dir or tempfile.mkdtemp(prefix="findial-compare-"))
    reports, files = {}, {}
    for side, ref in (("a", a_ref), ("b", b_ref)):
        p = predict(ref, data_file, eval_set, device)
        reports[side] = build_report(p, gates)
        files[side] = write_report(reports[side], p, out / side, html_errors)
    a, b = reports["a"], reports["b"]
    comparison = {
        "eval_set": a["eval_set"],
        "data_file": str(data_file),
        "delta": "a - b",
        "same_data": a["data_fingerprint"] == b["data_fingerprint"],
        "a": _side(a_ref, a, "a"),
        "b": _side(b_ref, b, "b"),
        "metrics": metric_rows(a, b, gates),
        "breakdowns": breakdown_rows(a, b),
    }
    written = {
        "compare_json": tracking.atomic_write_text(
            out / "compare.json", json.dumps(redact_json(comparison), indent=2, ensure_ascii=False)
        ),
        "compare_md": tracking.atomic_write_text(out / "compare.md", render_markdown(comparison)),
        "compare_html": tracking.atomic_write_text(out / "compare.html", render_html(comparison)),
    }
    tags = {
        "findial.eval_set": comparison["eval_set"],
        "findial.a": a_ref,
        "findial.b": b_ref,
        "findial.data_fingerprint": a["data_fingerprint"],
    }
    for side in ("a", "b"):
        if reports[side]["registered"]:
            tags[f"findial.{side}.version"] = "/".join(reports[side]["registered"])
    import mlflow

    with tracking.run(experiment, f"compare-{comparison['eval_set']}", tags=tags) as active:
        for row in comparison["metrics"]:
            tracking.log_metrics(
                {f"a.{row['metric']}": row["a"], f"b.{row['metric']}": row["b"], f"delta.{row['metric']}": row["delta"]}
            )
        for f in written.values():  # at the root, so that compare.html's links to a/ and b/ resolve
            mlflow.log_artifact(str(f))
        for side in ("a", "b"):
            for f in files[side].values():
                mlflow.log_artifact(str(f), side)
        run_id = active.info.run_id
    return CompareResult(comparison, {**written, **{f"{s}.{k}": v for s in files for k, v in files[s].items()}}, run_id)


def _fmt_delta(v) -> str:
    return "-" if v is None else (f"{v:+.4f}" if isinstance(v, float) else f"{v:+d}")


def _gate(row: dict, side: str) -> str:
    if "bound" not in row:
        return ""
    return "missing" if row[side] is None else ("pass" if row[f"{side}_passed"] else "FAIL")


def _label(side: dict) -> str:
    reg = side.get("registered")
    return f"{reg[0]} v{reg[1]}" if reg else side["model"]


def render_table(comparison: dict) -> str:
    """The side-by-side plain-text table the command prints."""
    a, b = _label(comparison["a"]), _label(comparison["b"])
    wa, wb = max(len(a), 16), max(len(b), 16)
    lines = [f"{'metric':<24} {'a: ' + a:<{wa + 3}} {'b: ' + b:<{wb + 3}} {'delta (a-b)':>11}  gate"]
    for r in comparison["metrics"]:
        cell_a = f"{fmt(r['a'])} {_gate(r, 'a')}".strip()
        cell_b = f"{fmt(r['b'])} {_gate(r, 'b')}".strip()
        gate = r.get("bound", "")
        lines.append(f"{r['metric']:<24} {cell_a:<{wa + 3}} {cell_b:<{wb + 3}} {_fmt_delta(r['delta']):>11}  {gate}")
    lines.append(
        f"all gates pass: a {'yes' if comparison['a']['all_gates_pass'] else 'no'}, "
        f"b {'yes' if comparison['b']['all_gates_pass'] else 'no'}"
    )
    if not comparison["same_data"]:
        lines.append("note: the data fingerprints differ (the two bundles carry different label books)")
    if comparison["a"]["registered"] and comparison["a"]["registered"] == comparison["b"]["registered"]:
        lines.append(f"note: a and b are the same model version ({_label(comparison['a'])})")
    return "\n".join(lines)


def _pivot(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """group -> metric -> row, in row order."""
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        out.setdefault(r["group"], {})[r["metric"]] = r
    return out


def render_markdown(comparison: dict) -> str:
    a, b = comparison["a"], comparison["b"]
    lines = [
        f"# findial comparison: {comparison['eval_set']}",
        "",
        f"- a: `{a['model']}` ({_label(a)}), report `a/report.md`",
        f"- b: `{b['model']}` ({_label(b)}), report `b/report.md`",
        f"- data: `{comparison['data_file']}`; delta = a - b",
        "",
        "| metric | a | gate a | b | gate b | delta | bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in comparison["metrics"]:
        lines.append(
            f"| {r['metric']} | {fmt(r['a'])} | {_gate(r, 'a')} | {fmt(r['b'])} | {_gate(r, 'b')} "
            f"| {_fmt_delta(r['delta'])} | {r.get('bound', '')} |"
        )
    for key, rows in comparison["breakdowns"].items():
        groups = _pivot(rows)
        metrics = list(next(iter(groups.values()), {}))
        lines += [
            "",
            f"## By {key} (a / b, delta)",
            "",
            "| " + " | ".join([key, *metrics]) + " |",
            "|" + "---|" * (len(metrics) + 1),
        ]
        for g, cells in groups.items():
            values = [f"{fmt(c['a'])} / {fmt(c['b'])} ({_fmt_delta(c['delta'])})" for c in cells.values()]
            lines.append("| " + " | ".join([g, *values]) + " |")
    return "\n".join(lines) + "\n"


def _delta_cls(v) -> str:
    return " pass" if v is not None and v > 0 else " fail" if v is not None and v < 0 else ""


def _value_cell(row: dict, side: str):
    if "bound" not in row:
        return row[side]
    raw, cls = gate_cell(row[side], row[f"{side}_passed"])
    return f"{esc(fmt(row[side]))} {raw}", "num " + cls


def _breakdown_table(key: str, rows: list[dict]) -> str:
    groups = _pivot(rows)
    metrics = list(next(iter(groups.values()), {}))
    body = [
        [
            g,
            *(
                (
                    f'<span class="m">{esc(fmt(c["a"]))} / {esc(fmt(c["b"]))}</span>'
                    f'<span class="m{_delta_cls(c["delta"])}">{esc(_fmt_delta(c["delta"]))}</span>',
                    "num",
                )
                for c in cells.values()
            ),
        ]
        for g, cells in groups.items()
    ]
    return table([key, *(HEADERS.get(m, m) for m in metrics)], body, "breakdown", wrap_headers=True)


def render_html(comparison: dict) -> str:
    comparison = redact_json(comparison)
    a, b = comparison["a"], comparison["b"]
    parts = [
        f"<h1>findial comparison: {esc(comparison['eval_set'])}</h1>",
        f'<p class="meta">a <code>{esc(a["model"])}</code> ({esc(_label(a))}, '
        f'<a href="a/report.html">report</a>)<br>b <code>{esc(b["model"])}</code> ({esc(_label(b))}, '
        f'<a href="b/report.html">report</a>)<br>data <code>{esc(comparison["data_file"])}</code>; '
        f"delta = a &minus; b</p>",
        '<div class="grid">',
    ]
    for side, name in ((a, "a"), (b, "b")):
        ok = side["all_gates_pass"]
        parts.append(
            f'<div class="banner {"pass" if ok else "fail"}" style="flex:1">{name} ({esc(_label(side))}): '
            f"{'all gates pass' if ok else 'gates do not pass'}</div>"
        )
    parts.append("</div>")
    rows = [
        [
            r["metric"],
            _value_cell(r, "a"),
            _value_cell(r, "b"),
            (esc(_fmt_delta(r["delta"])), "num" + _delta_cls(r["delta"])),
            r.get("bound"),
        ]
        for r in comparison["metrics"]
    ]
    parts += ["<h2>Metrics</h2>", table(["metric", "a", "b", "delta (a - b)", "gate"], rows)]
    for key, brows in comparison["breakdowns"].items():
        parts += [
            f'<h2>By {esc(key)}</h2><p class="meta">each cell: a / b, then the delta</p>',
            _breakdown_table(key, brows),
        ]
    return page(f"findial comparison: {comparison['eval_set']}", "\n".join(parts))
