"""Per-intent and per-category breakdowns of the grounded responder's evaluation (evaluation/grounded.py), the
``intent`` field of a labelled KB query (findial.data.kb.load), and the HTML report."""

import json
import re

import pytest

from findial.data.kb import package as grounded_package
from findial.data.kb.load import DEFAULT_QUERIES, KBError, load_kb, load_queries
from findial.data.labelbook import LabelBook
from findial.data.pii import default_masker
from findial.evaluation.grounded import breakdown_metrics, evaluate_grounded, render_markdown

from test_kb_responder import ARTICLES, write_kb  # the small KB of the grounded-answer tests

PHONE = "13912345678"  # a mainland mobile number: the masker's PHONE
QUERY = {"id": "q-zh-1", "lang": "zh", "query": "信用卡年费多少钱", "answers": ["kb-zh-0001"], "split": "test"}


# ------------------------------------------------------------------ the intent field
def test_a_query_intent_must_be_in_the_label_book(tmp_path):
    arts = load_kb(write_kb(tmp_path / "kb.jsonl"))
    path = tmp_path / "q.jsonl"
    good = [QUERY, dict(QUERY, id="q-zh-2", intent="annual_fee_query")]  # the field is optional
    path.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in good), "utf-8")
    assert [q.get("intent") for q in load_queries(path, arts)] == [None, "annual_fee_query"]
    bad = [*good, dict(QUERY, id="q-zh-3", intent="annual_fee"), dict(QUERY, id="q-zh-4", intent=["complaint"])]
    path.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in bad), "utf-8")
    with pytest.raises(KBError) as info:
        load_queries(path, arts)
    assert [(p.line, p.field) for p in info.value.problems] == [(3, "intent"), (4, "intent")]
    assert str(info.value.problems[0]).startswith(f"{path}:3: intent: unknown intent 'annual_fee'")
    # another label book: its intents, not the default ones
    other = LabelBook(["annual_fee"], [], [], {}, frozenset(), frozenset())
    with pytest.raises(KBError) as info:
        load_queries(path, arts, labels=other)
    assert [(p.line, p.field) for p in info.value.problems] == [(2, "intent"), (4, "intent")]


def test_every_bundled_query_has_a_label_book_intent():
    queries = load_queries(DEFAULT_QUERIES)
    intents = LabelBook.load().intents
    assert len(queries) == 321 and all(q["intent"] in intents for q in queries)
    assert all(list(q)[:4] == ["id", "lang", "query", "intent"] for q in queries)


# ------------------------------------------------------------------ breakdowns, hand-computed
def quote(article_id: str, sentence: str) -> str:
    return f"根据本行资料：{sentence}（参考：{article_id}）"


ROWS = [
    # card_lost_report: found at rank 1 and answered right; found at rank 2 and handed off
    {"intent": "card_lost_report", "answers": ["kb-zh-0002"], "ranking": ["kb-zh-0002", "kb-zh-0001"],
     "reply": quote("kb-zh-0002", "补卡需要本人携带身份证到网点办理。"), "cited": "kb-zh-0002"},
    {"intent": "card_lost_report", "answers": ["kb-zh-0002"], "ranking": ["kb-zh-0001", "kb-zh-0002"],
     "reply": None, "cited": None, "reason": "no_kb_answer"},
    # annual_fee_query: rank 2 and the wrong article cited; rank 1, the right one cited with a figure it lacks
    {"intent": "annual_fee_query", "answers": ["kb-zh-0001"], "ranking": ["kb-zh-0002", "kb-zh-0001"],
     "reply": quote("kb-zh-0002", "补卡需要本人携带身份证到网点办理。"), "cited": "kb-zh-0002"},
    {"intent": "annual_fee_query", "answers": ["kb-zh-0001"], "ranking": ["kb-zh-0001"],
     "reply": quote("kb-zh-0001", "金卡年费500元。"), "cited": "kb-zh-0001"},
    # complaint: rank 1, handed off (nothing answered: no citation accuracy)
    {"intent": "complaint", "answers": ["kb-zh-0002"], "ranking": ["kb-zh-0002"], "reply": None, "cited": None,
     "reason": "no_kb_answer"},
    # no intent: only in the category breakdown; nothing ranked
    {"answers": ["kb-zh-0001", "kb-zh-0002"], "ranking": [], "reply": None, "cited": None, "reason": "no_kb_answer"},
]  # fmt: skip


def test_per_intent_and_per_category_figures_are_the_score_of_their_queries():
    from findial.training.generation.rules import RuleSet

    rows = [{"query": "问题", "lang": "zh", "reason": None, **r} for r in ROWS]
    m = breakdown_metrics(rows, {a["id"]: a for a in ARTICLES}, RuleSet.load())
    assert list(m) == [
        "by_intent.annual_fee_query",
        "by_intent.card_lost_report",
        "by_intent.complaint",
        "by_category.fee",  # the first answer's category: rows 3, 4 and 6
        "by_category.procedure",  # rows 1, 2 and 5
    ]
    cols = ("queries", "answered", "retrieval_recall_at_1", "retrieval_recall_at_5", "retrieval_mrr_at_5",
            "answer_rate", "citation_accuracy", "correct_answer_rate", "groundedness")  # fmt: skip
    expected = {
        # ranks 1, 2; 1 of 2 answered, citing right, grounded
        "by_intent.card_lost_report": (2, 1, 0.5, 1.0, (1 + 1 / 2) / 2, 0.5, 1.0, 0.5, 1.0),
        # ranks 2, 1; both answered, one citing right, that one ungrounded (500元 is not in the article)
        "by_intent.annual_fee_query": (2, 2, 0.5, 1.0, (1 / 2 + 1) / 2, 1.0, 0.5, 0.5, 0.5),
        # rank 1, not answered: citation accuracy and groundedness 0.0 (shown as "-" in the tables)
        "by_intent.complaint": (1, 0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0),
        # ranks 2, 1, none
        "by_category.fee": (3, 2, 1 / 3, 2 / 3, (1 / 2 + 1) / 3, 2 / 3, 0.5, 1 / 3, 0.5),
        # ranks 1, 2, 1
        "by_category.procedure": (3, 1, 2 / 3, 1.0, (1 + 1 / 2 + 1) / 3, 1 / 3, 1.0, 1 / 3, 1.0),
    }
    for name, values in expected.items():
        assert tuple(m[name][c] for c in cols) == values, name
    assert m["by_intent.card_lost_report"]["handoffs"] == {"no_kb_answer": 1, "ungrounded": 0}
    md = render_markdown(
        {"eval_set": "t", "package": "p", "settings": {}, "data_file": "q", "articles_file": "a", "kb_version": "v",
         "metrics": {"queries": 6, "handoffs": {}, **m, **{k: 0.0 for k in ("retrieval_recall_at_1",
         "retrieval_recall_at_5", "retrieval_mrr_at_5", "answer_rate", "citation_accuracy", "correct_answer_rate",
         "groundedness", "compliance_clean_rate", "pii_clean_rate")}}, "gates": {}}
    )  # fmt: skip
    assert "| card_lost_report | 2 | 0.5000 | 1.0000 | 0.7500 | 0.5000 | 1.0000 | 1.0000 |" in md
    assert "| complaint | 1 | 1.0000 | 1.0000 | 1.0000 | 0.0000 | - | - |" in md
    assert "| fee | 3 | 0.3333 | 0.6667 | 0.5000 | 0.6667 | 0.5000 | 0.5000 |" in md


# ------------------------------------------------------------------ the reports
@pytest.fixture(scope="module")
def encoder():
    from findial.training.backbones import tiny

    return tiny(extra_chars="".join({c for a in ARTICLES for c in a["title"] + a["body"]}))


def test_report_html_has_the_breakdown_tables_and_no_personal_data(tmp_path, encoder):
    kb = write_kb(tmp_path / "kb.jsonl")
    queries = [
        dict(QUERY, intent="annual_fee_query"),
        {"id": "q-zh-2", "lang": "zh", "query": f"借记卡丢了怎么补卡 我电话{PHONE}", "intent": "card_replace",
         "answers": ["kb-zh-0002"], "split": "test"},
        {"id": "q-en-1", "lang": "en", "query": "what is the late fee if I miss the due date",
         "intent": "card_repayment", "answers": ["kb-en-0001"], "split": "test"},
    ]  # fmt: skip
    path = tmp_path / f"queries-{PHONE}.jsonl"  # personal data in a name that reaches the report
    path.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in queries), "utf-8")
    pkg = grounded_package.save(tmp_path / "pkg", grounded_package.GroundedSettings(threshold=0.5, weight=0.0))
    result = evaluate_grounded(
        pkg, "mine", tmp_path / "report", kb, path, index_dir=tmp_path / "index", encoder_path=encoder,
        gates={"answer_rate": 0.9}, model_ref=f"models:/findial-response-{PHONE}/1",
    )  # fmt: skip
    html_file = tmp_path / "report" / "report.html"
    assert result.files["report_html"] == html_file and html_file.is_file()
    html = html_file.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and '<h2 id="gates">Gates</h2>' in html
    section = html[html.index('<h2 id="by_intent">') : html.index('<h2 id="by_category">')]
    shown = re.findall(r"<tr><td>([a-z_]+)</td>", section)
    assert shown == ["annual_fee_query", "card_repayment", "card_replace"]
    assert [f"by_intent.{i}" in result.metrics for i in shown] == [True] * 3
    assert re.findall(r"<tr><td>([a-z_]+)</td>", html[html.index('<h2 id="by_category">') :]) == ["fee", "procedure"]
    assert "recall@5" in section and "groundedness" in section
    assert "## By intent" in (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    # the query file's name and the model reference carry a phone number: masked in every file written
    for name in ("report.html", "report.md", "report.json", "replies.jsonl"):
        text = (tmp_path / "report" / name).read_text(encoding="utf-8")
        assert PHONE not in text and "[PHONE]" in text, name
        assert default_masker().is_clean(text), name
    # the nested breakdowns are not gate inputs: the gate table holds the gates asked for, nothing more
    assert set(result.gates) == {"answer_rate"}
