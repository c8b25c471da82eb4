"""Score a grounded responder package on the KB's labelled queries; gated like any response model.

    evaluate_grounded("runs/.../response", eval_set="bundled-test", report_dir="out")

Every query of the split (``data/kb/queries.jsonl``, split ``test`` by default: user turns labelled with the
articles that answer them) is answered as ``/v1/respond`` answers it (``GroundedAnswerer`` with the package's
settings over the KB's index). Metrics, pooled over the languages and per language (``by_lang.zh``, ...):

- ``retrieval_recall_at_1``, ``retrieval_recall_at_5``, ``retrieval_mrr_at_5``: an answer article among the top k;
- ``answer_rate``: share of queries answered (the others are handed off: ``no_kb_answer``, ``ungrounded``);
- ``citation_accuracy``: share of answered queries citing an answer article; ``correct_answer_rate``: of all;
- ``groundedness``: share of sent replies whose figures all appear in the cited article or the query, checked
  again here (``check_grounding``) on what would be sent;
- ``compliance_clean_rate``: share of replies whose own words (the reply less the sentences quoted from the
  cited article) trip no rule of the generation rule list; ``pii_clean_rate``: replies the PII masker leaves as
  they are. The articles are the bank's reviewed texts: a rule hit inside a quoted sentence (a published
  "the fee is waived in the first year", a warning "neither principal nor returns are guaranteed") is listed
  as ``kb_rule_hits`` (article:rule) for the KB's owners to review, not counted against the responder;
  serving still withholds any reply that trips its own ``handoff.compliance_rules``.

The same metrics per intent (``by_intent.<intent>``, for queries labelled with one) and per category of the
first answer article (``by_category.<category>``: product, fee, rate, procedure, policy), in report.md and
report.html as one table each. Like ``by_lang``, they are nested: neither gates nor MLflow metrics read them.

There are no reference replies in the query set, so chrF is not computed here: it is a metric of the LM path
(``evaluation/responses.py`` on the corpus's agent turns). The eval set's fingerprint covers the KB version and
the split's queries; ``configs/policy.yaml`` binds ``bundled-test`` of the response kind to the bundled ones.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from findial import gates as gate_check
from findial import tracking
from findial.data.kb import package as grounded_package
from findial.data.kb.facts import check_grounding
from findial.data.kb.grounded import GroundedAnswerer, sentences
from findial.data.kb.index import Retriever
from findial.data.kb.load import DEFAULT_ARTICLES, DEFAULT_QUERIES, kb_version, load_kb, load_queries
from findial.data.kb.metrics import retrieval_metrics
from findial.data.labelbook import Glossary
from findial.data.pii import default_masker, redact_json
from findial.policy import load as load_policy

from .html_report import _gates_section, _metric_cell, esc, page, table
from .responses import ResponseEvalResult, record_response_eval

LANGS = ("zh", "en")
BREAKDOWNS = {"by_intent": "intent", "by_category": "category"}  # metrics prefix -> what a row is
# Columns of a breakdown table: metric -> header. Those after answer_rate are over answered queries only.
BREAKDOWN_COLUMNS = {
    "queries": "queries",
    "retrieval_recall_at_1": "recall@1",
    "retrieval_recall_at_5": "recall@5",
    "retrieval_mrr_at_5": "MRR",
    "answer_rate": "answer rate",
    "citation_accuracy": "citation accuracy",
    "groundedness": "groundedness",
}
OF_ANSWERED = ("citation_accuracy", "groundedness")
POOLED = (
    "retrieval_recall_at_1",
    "retrieval_recall_at_5",
    "retrieval_mrr_at_5",
    "answer_rate",
    "citation_accuracy",
    "correct_answer_rate",
    "groundedness",
    "compliance_clean_rate",
    "pii_clean_rate",
)


def queries_fingerprint(articles: list[dict], queries: list[dict]) -> str:
    h = hashlib.sha256(kb_version(articles).encode())
    for q in sorted(queries, key=lambda q: q["id"]):
        h.update(json.dumps(q, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def answer_queries(answerer: GroundedAnswerer, queries: list[dict]) -> list[dict]:
    rows = []
    for q in queries:
        a = answerer.answer(q["query"], q["lang"])
        rows.append(
            {
                "id": q["id"],
                "lang": q["lang"],
                "query": q["query"],
                "intent": q.get("intent"),
                "answers": list(q["answers"]),
                "ranking": [i for i, _ in a.ranking],
                "confidence": round(a.confidence, 6),
                "reply": a.text,
                "cited": a.citations[0] if a.citations else None,
                "reason": a.reason,
            }
        )
    return rows


def own_text(reply: str, article: dict) -> str:
    """The reply without the sentences it quotes from the cited article: the responder's own words."""
    for sentence in sentences(article["body"], article["lang"]):
        reply = reply.replace(sentence, " ")
    return reply


def score(rows: list[dict], articles: dict[str, dict], rules) -> dict:
    masker = default_masker()
    n = len(rows)
    answered = [r for r in rows if r["reply"] is not None]
    own = [own_text(r["reply"], articles[r["cited"]]) for r in answered]
    kb_hits = sorted({(r["cited"], h.rule) for r in answered for h in rules.check(r["reply"])})
    correct = sum(r["cited"] in r["answers"] for r in answered)
    grounded = sum(not check_grounding(r["reply"], [articles[r["cited"]]], [r["query"]]) for r in answered)
    retrieval = retrieval_metrics([r["ranking"] for r in rows], [r["answers"] for r in rows])
    return {
        "queries": n,
        "answered": len(answered),
        "retrieval_recall_at_1": retrieval["recall@1"],
        "retrieval_recall_at_5": retrieval["recall@5"],
        "retrieval_mrr_at_5": retrieval["mrr"],
        "answer_rate": len(answered) / n if n else 0.0,
        "citation_accuracy": correct / len(answered) if answered else 0.0,
        "correct_answer_rate": correct / n if n else 0.0,
        "groundedness": grounded / len(answered) if answered else 0.0,
        "compliance_clean_rate": 1 - sum(bool(rules.check(t)) for t in own) / len(answered) if answered else 1.0,
        "kb_rule_hits": [f"{article}:{rule}" for article, rule in kb_hits if article],
        "pii_clean_rate": 1 - sum(not masker.is_clean(r["reply"]) for r in answered) / len(answered)
        if answered
        else 1.0,
        "handoffs": {reason: sum(r["reason"] == reason for r in rows) for reason in ("no_kb_answer", "ungrounded")},
    }


def breakdown(rows: list[dict], key, articles: dict[str, dict], rules) -> dict[str, dict]:
    """``score`` per group of rows, groups in name order; ``key(row)`` names a row's group (None: in none)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        group = key(r)
        if group is not None:
            groups.setdefault(group, []).append(r)
    return {group: score(groups[group], articles, rules) for group in sorted(groups)}


def breakdown_metrics(rows: list[dict], articles: dict[str, dict], rules) -> dict[str, dict]:
    """``by_intent.<intent>`` (rows with an intent) and ``by_category.<category>`` (of a row's first answer
    article): each the ``score`` of its rows."""
    keys = {"by_intent": lambda r: r.get("intent"), "by_category": lambda r: articles[r["answers"][0]]["category"]}
    assert set(keys) == set(BREAKDOWNS)
    return {
        f"{prefix}.{group}": m
        for prefix, key in keys.items()
        for group, m in breakdown(rows, key, articles, rules).items()
    }


def breakdown_rows(metrics: dict, prefix: str) -> list[tuple[str, dict]]:
    """(group, {column: value}) per ``<prefix>.<group>`` of ``metrics``; the columns over answered queries are
    None for a group with none answered."""
    out = []
    for name, m in metrics.items():
        if name.startswith(prefix + ".") and isinstance(m, dict):
            out.append(
                (
                    name[len(prefix) + 1 :],
                    {k: None if k in OF_ANSWERED and not m["answered"] else m[k] for k in BREAKDOWN_COLUMNS},
                )
            )
    return out


def evaluate_grounded(
    package: str | Path,
    eval_set: str = "bundled-test",
    report_dir: str | Path | None = None,
    articles_file: str | Path | None = None,
    queries_file: str | Path | None = None,
    split: str = "test",
    index_dir: str | Path | None = None,
    encoder_path: str | Path | None = None,
    gates: dict | None = None,
    registered: tuple[str, str] | None = None,
    model_ref: str | None = None,
    log_mlflow: bool = False,
) -> ResponseEvalResult:
    """Answer every query of ``split``, score, write the report, check the gates (the policy's response gates by
    default); with ``registered`` the metrics are recorded on that version (``eval.<eval_set>.<metric>``)."""
    from findial.data.kb.encoder import model_id
    from findial.training.generation.rules import RuleSet

    settings = grounded_package.load(package)
    glossary = Glossary.load()
    articles_file, queries_file = articles_file or DEFAULT_ARTICLES, queries_file or DEFAULT_QUERIES
    articles = load_kb(articles_file, glossary)
    queries = load_queries(queries_file, articles, split=split)
    if not queries:
        raise ValueError(f"{queries_file}: no queries of split {split!r}")
    policy, data_fp = load_policy(), queries_fingerprint(articles, queries)
    if registered:
        policy.check_recordable("response", eval_set, data_fp, f"{queries_file} (split {split})")
    with tempfile.TemporaryDirectory(prefix="findial-kb-eval-") as tmp:
        retriever = Retriever(encoder_path)
        if settings.encoder and model_id(retriever._path()) != settings.encoder:
            raise grounded_package.PackageError(
                f"{package}: evaluated with encoder {settings.encoder}, given {model_id(retriever._path())}"
            )
        retriever.index(articles, index_dir or Path(tmp) / "kb-index")
        answerer = grounded_package.answerer(settings, retriever, articles, glossary)
        rows = answer_queries(answerer, queries)
    by_id, rules = {a["id"]: a for a in articles}, RuleSet.load()
    metrics = score(rows, by_id, rules)
    for lang in LANGS:
        mine = [r for r in rows if r["lang"] == lang]
        if mine:
            metrics[f"by_lang.{lang}"] = score(mine, by_id, rules)
    metrics.update(breakdown_metrics(rows, by_id, rules))
    gate_table = gate_check.check(policy.gates_for("response") if gates is None else gates, metrics)
    result = ResponseEvalResult(metrics, gate_table, gate_check.failures(gate_table), data_fingerprint=data_fp)
    report = {
        "package": model_ref or str(package),
        "registered": list(registered) if registered else None,
        "responder": "grounded",
        "settings": settings.__dict__,
        "data_file": f"{queries_file} (split {split})",
        "articles_file": str(articles_file),
        "kb_version": kb_version(articles),
        "eval_set": eval_set,
        "data_fingerprint": data_fp,
        "metrics": metrics,
        "gates": result.gates,
        "failures": result.failures,
    }
    if report_dir is not None:
        out = Path(report_dir)
        out.mkdir(parents=True, exist_ok=True)
        result.report_json = tracking.atomic_write_text(
            out / "report.json", json.dumps(redact_json(report), indent=2, ensure_ascii=False)
        )
        tracking.atomic_write_text(
            out / "replies.jsonl", "".join(json.dumps(redact_json(r), ensure_ascii=False) + "\n" for r in rows)
        )
        result.report_md = tracking.atomic_write_text(out / "report.md", render_markdown(redact_json(report)))
        result.files = {
            "report_json": result.report_json,
            "report_md": result.report_md,
            "report_html": tracking.atomic_write_text(out / "report.html", render_html(report)),
        }
    if log_mlflow:
        record_response_eval(result, report, eval_set, registered)
    return result


def render_markdown(report: dict) -> str:
    m = report["metrics"]
    lines = [
        f"# Grounded responses: {report['eval_set']}",
        "",
        f"package `{report['package']}` ({report['settings']}), {m['queries']} queries of `{report['data_file']}`, "
        f"KB `{report['articles_file']}` version {report['kb_version']}",
        "",
        "| metric | all | " + " | ".join(lang for lang in LANGS if f"by_lang.{lang}" in m) + " |",
        "|---|---|" + "---|" * sum(f"by_lang.{lang}" in m for lang in LANGS),
    ]
    for k in POOLED:
        cells = [m[k]] + [m[f"by_lang.{lang}"][k] for lang in LANGS if f"by_lang.{lang}" in m]
        lines.append(f"| {k} | " + " | ".join(f"{v:.4f}" for v in cells) + " |")
    lines += [
        "",
        f"Hand-offs: {m['handoffs']}",
        "",
        "## Gates",
        "",
        "| metric | value | bound | |",
        "|---|---|---|---|",
    ]
    for k, g in report["gates"].items():
        v = g["value"]
        lines.append(
            f"| {k} | {'-' if v is None else f'{v:.4f}'} | {g['bound']} | {'pass' if g['passed'] else 'FAIL'} |"
        )
    for prefix, what in BREAKDOWNS.items():
        rows = breakdown_rows(m, prefix)
        if not rows:
            continue
        lines += [
            "",
            f"## By {what}",
            "",
            f"| {what} | " + " | ".join(BREAKDOWN_COLUMNS.values()) + " |",
            "|---" * (len(BREAKDOWN_COLUMNS) + 1) + "|",
        ]
        for group, values in rows:
            shown = ["-" if v is None else v if isinstance(v, int) else f"{v:.4f}" for v in values.values()]
            lines.append(f"| {group} | " + " | ".join(map(str, shown)) + " |")
    return "\n".join(lines) + "\n"


def render_html(report: dict) -> str:
    """The report as one self-contained page (``html_report``'s building blocks): the pooled and per-language
    metrics, the gates, then a table per breakdown; every text masked and escaped."""
    report = redact_json(report)
    m, gates = report["metrics"], report["gates"]
    langs = [lang for lang in LANGS if f"by_lang.{lang}" in m]
    reg = report.get("registered")
    parts = [
        f"<h1>Grounded responses: {esc(report['eval_set'])}</h1>",
        '<p class="meta">package <code>'
        + esc(report["package"])
        + "</code>"
        + (f" (registered {esc(reg[0])} v{esc(reg[1])})" if reg else "")
        + f"<br>{esc(m['queries'])} queries of <code>{esc(report['data_file'])}</code>, fingerprint "
        + f"<code>{esc(report['data_fingerprint'])}</code><br>KB <code>{esc(report['articles_file'])}</code> "
        + f"version <code>{esc(report['kb_version'])}</code><br>settings <code>{esc(report['settings'])}</code>"
        + f"<br>hand-offs {esc(m['handoffs'])}</p>",
        _gates_section(gates),
        '<h2 id="metrics">Metrics</h2>',
        table(
            ["metric", "all", *langs],
            [
                [k, *(_metric_cell(k, mm[k], gates) for mm in (m, *(m[f"by_lang.{lang}"] for lang in langs)))]
                for k in POOLED
            ],
        ),
    ]
    for prefix, what in BREAKDOWNS.items():
        rows = breakdown_rows(m, prefix)
        if rows:
            parts += [
                f'<h2 id="{esc(prefix)}">By {esc(what)}</h2>',
                '<p class="meta">citation accuracy and groundedness are over the answered queries ("-": none '
                "answered); cells of gated metrics are coloured against the gate</p>",
                table(
                    [what, *BREAKDOWN_COLUMNS.values()],
                    [[group, *(_metric_cell(k, v, gates) for k, v in cells.items())] for group, cells in rows],
                    prefix,
                    wrap_headers=True,
                ),
            ]
    return page(f"Grounded responses: {report['eval_set']}", "\n".join(parts))
