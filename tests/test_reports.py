"""Evaluation report tables, plots, Markdown and the self-contained HTML page (no model needed)."""

import base64
import copy
import json
import re
from pathlib import Path

import pytest

from findial.data.corpus import load_corpus
from findial.data.labelbook import Glossary, LabelBook
from findial.evaluation import tables
from findial.evaluation.evaluate import Predictions, build_report, write_report
from findial.evaluation.html_report import render_html
from findial.evaluation.metrics import intent_macro_f1

MINI = Path(__file__).parent / "fixtures" / "mini.jsonl"
GATES = {"terminology_f1": 0.90, "multi_turn_accuracy": 0.85}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CARD = "4111 1111 1111 1111"  # passes Luhn: the masker must catch it


@pytest.fixture(scope="module")
def labelbook():
    return LabelBook.load()


@pytest.fixture(scope="module")
def gold(labelbook):
    return load_corpus(MINI, labelbook, Glossary.load())


def _user_turn(dialogues, did, k):
    return [t for t in next(d for d in dialogues if d["id"] == did)["turns"] if t["speaker"] == "user"][k]


@pytest.fixture()
def pred(gold):
    """Gold with three intent errors: a confusion, a second-turn confusion, a missing prediction."""
    pred = copy.deepcopy(gold)
    for d in pred:
        for t in d["turns"]:
            if t["speaker"] == "user":
                t["confidence"] = 0.9
    _user_turn(pred, "zh-1", 0).update(intent="card_replace", confidence=0.3)  # was card_lost_report
    _user_turn(pred, "zh-5", 1).update(intent="transfer_money", confidence=0.45)  # was exchange_rate_query
    _user_turn(pred, "en-4", 0).update(intent=None, confidence=None)  # was thanks
    return pred


def test_intent_table_per_label_counts(gold, pred, labelbook):
    t = tables.intent_table(gold, pred, labelbook)
    assert t["card_lost_report"] == pytest.approx(
        {"domain": "cards", "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2, "predicted": 1}
    )
    assert t["card_replace"] == pytest.approx(
        {"domain": "cards", "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1, "predicted": 2}
    )
    assert t["transfer_money"] == pytest.approx(
        {"domain": "payments", "precision": 0.8, "recall": 1.0, "f1": 8 / 9, "support": 4, "predicted": 5}
    )
    assert t["thanks"]["recall"] == 0.0 and t["thanks"]["predicted"] == 0
    assert "fraud_report" not in t  # only intents present in gold or predictions
    # the same per-intent F1s average to the headline macro F1
    assert sum(r["f1"] for r in t.values()) / len(t) == pytest.approx(intent_macro_f1(gold, pred))
    # grouped by domain in label-book order
    domain_rank = {d: i for i, d in enumerate(dict.fromkeys(labelbook.intent_domains[i] for i in labelbook.intents))}
    ranks = [domain_rank[r["domain"]] for r in t.values()]
    assert ranks == sorted(ranks)


def test_confusion_matrix_rows_and_missing_predictions(gold, pred, labelbook):
    c = tables.intent_confusion(gold, pred, labelbook)
    assert c["columns"] == c["labels"] + [tables.NO_PREDICTION]
    row = dict(zip(c["columns"], c["matrix"][c["labels"].index("card_lost_report")]))
    assert row["card_lost_report"] == 1 and row["card_replace"] == 1 and sum(row.values()) == 2
    thanks = dict(zip(c["columns"], c["matrix"][c["labels"].index("thanks")]))
    assert thanks[tables.NO_PREDICTION] == 1 and sum(thanks.values()) == 1
    assert sum(map(sum, c["matrix"])) == 17  # every user turn of mini.jsonl has a gold intent
    assert c["domains"][c["labels"].index("greeting")] == "service"


def test_confidence_histogram_splits_correct_and_incorrect(gold, pred):
    s = tables.confidence_summary(gold, pred, bins=10)
    assert s["n_correct"] == 14 and s["n_incorrect"] == 2 and s["no_confidence"] == 1
    assert s["correct"][9] == 14 and sum(s["correct"]) == 14
    assert s["incorrect"][3] == 1 and s["incorrect"][4] == 1 and sum(s["incorrect"]) == 2
    assert s["mean_confidence_incorrect"] == pytest.approx(0.375)


def test_breakdowns_by_language_and_branch(gold, pred, labelbook):
    by_lang = tables.breakdown(gold, pred, labelbook, "lang", GATES)
    assert list(by_lang) == ["en", "zh"]
    assert by_lang["zh"]["n_dialogues"] == 6 and by_lang["zh"]["n_user_turns"] == 9
    assert by_lang["zh"]["intent_accuracy"] == pytest.approx(7 / 9)
    assert by_lang["en"]["intent_accuracy"] == pytest.approx(7 / 8)
    by_branch = tables.breakdown(gold, pred, labelbook, "branch", GATES)
    assert set(by_branch) == {"shanghai", "beijing", "shenzhen", "hongkong"}
    assert by_branch["shanghai"]["intent_accuracy"] == pytest.approx(4 / 5)
    assert by_branch["beijing"]["intent_accuracy"] == pytest.approx(2 / 4)
    # beijing's only multi-turn turn (zh-5, second turn) has the wrong intent: its gate fails
    assert by_branch["beijing"]["multi_turn_accuracy"] == 0.0
    assert by_branch["beijing"]["gates_passed"]["multi_turn_accuracy"] is False
    assert by_branch["shanghai"]["gates_passed"] == {"terminology_f1": True, "multi_turn_accuracy": True}


def test_breakdown_rejects_misaligned_predictions(gold, pred, labelbook):
    with pytest.raises(ValueError, match="missing ids"):
        tables.breakdown(gold, pred[1:], labelbook, "lang")


def test_confusion_png_is_readable_with_the_whole_label_book(tmp_path, labelbook):
    from matplotlib.image import imread

    from findial.evaluation import plots

    n = len(labelbook.intents)
    confusion = {
        "labels": tables.domain_order(set(labelbook.intents), labelbook),
        "matrix": [[(i == j) * 3 + ((i + 1) % n == j) for j in range(n)] for i in range(n)],
    }
    confusion["columns"] = confusion["labels"]
    confusion["domains"] = [labelbook.intent_domains[i] for i in confusion["labels"]]
    png = plots.confusion_png(confusion, tmp_path / "c.png")
    assert png.read_bytes().startswith(PNG_MAGIC)
    height, width = imread(png).shape[:2]
    min_cell_px = plots.CELL_INCHES * plots.DPI * 0.9  # every one of the 46 rows gets a readable cell
    assert height >= n * min_cell_px and width >= n * min_cell_px


@pytest.fixture()
def written(tmp_path, gold, pred, labelbook):
    gold = copy.deepcopy(gold)
    p = Predictions("bundle-dir", None, labelbook, gold, pred, str(MINI), "fp0", "mini", 1.0)
    report = build_report(p, GATES)
    _user_turn(gold, "zh-1", 0)["text"] = f"卡号 {CARD} <script>alert(1)</script>"  # an error row with PII and markup
    return report, write_report(report, p, tmp_path / "report", html_errors=2)


def test_report_files_hold_tables_breakdowns_and_plots(written):
    report, files = written
    on_disk = json.loads(files["report_json"].read_text(encoding="utf-8"))
    assert on_disk["intents"]["card_replace"]["predicted"] == 2
    assert on_disk["breakdowns"]["lang"]["zh"]["intent_accuracy"] == pytest.approx(7 / 9)
    assert set(on_disk["breakdowns"]) == {"lang", "branch"}
    assert on_disk["plots"] == {
        "intent_confusion": "intent_confusion.png",
        "confidence_histogram": "confidence_histogram.png",
    }
    for name in ("intent_confusion", "confidence_histogram"):
        assert files[name].read_bytes().startswith(PNG_MAGIC)
    md = files["report_md"].read_text(encoding="utf-8")
    assert "## Intents" in md and "| card_replace | cards | 0.5000 | 1.0000 |" in md
    assert "## By lang" in md and "## By branch" in md and "![intent_confusion](intent_confusion.png)" in md
    # zh-5's second turn is the one multi-turn error (its intent): the breakdown says so
    assert on_disk["multi_turn"]["phenomena"]["all"]["intent_accuracy"] == pytest.approx(0.8)
    assert "## Multi-turn turns by phenomenon" in md and "## State slots on multi-turn turns" in md


def test_html_is_self_contained_with_gates_plots_and_masked_errors(written):
    report, files = written
    html = files["report_html"].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    images = re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", html)
    assert len(images) == 2
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    gate_table = re.search(r'<table class="gates">.*?</table>', html, re.S).group(0)
    assert "terminology_f1" in gate_table and "multi_turn_accuracy" in gate_table
    # multi-turn accuracy is 4/5 here (zh-5's second turn is wrong): below 0.85, so FAIL
    assert report["gates"]["multi_turn_accuracy"]["value"] == pytest.approx(0.8)
    assert re.search(r"multi_turn_accuracy</td>.*?FAIL", gate_table, re.S)
    assert "1 of 2 gates do not pass" in html
    # error rows: masked, escaped, limited to html_errors
    assert CARD not in html and CARD.replace(" ", "") not in html and "[CARD_NUMBER]" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    errors_table = re.search(r'<table class="errors">.*?</table>', html, re.S).group(0)
    assert errors_table.count("<tr>") == 1 + 2 and report["n_errors"] == 3 and "first 2 of 3" in html
    assert '<h2 id="breakdowns">' in html and "shanghai" in html and "card_lost_report" in html
    assert '<h2 id="multi-turn">' in html and '<h2 id="slots">' in html


def test_render_html_masks_personal_data_in_any_field():
    report = {
        "model": "m",
        "registered": None,
        "eval_set": "s",
        "data_file": f"/data/{CARD}.jsonl",
        "data_fingerprint": "fp",
        "metrics": {},
        "gates": {},
    }
    html = render_html(report)
    assert CARD not in html and "[CARD_NUMBER]" in html and "All 0 gates pass" in html
