"""The bundled knowledge base and query set, and every rule of the KB loader (data/kb/README.md)."""

import json
import re
from collections import Counter

import pytest

from findial.data.kb.load import (
    CATEGORIES,
    DEFAULT_ARTICLES,
    DEFAULT_QUERIES,
    KBError,
    kb_version,
    load_kb,
    load_queries,
)
from findial.data.labelbook import Glossary


@pytest.fixture(scope="module")
def glossary():
    return Glossary.load()


@pytest.fixture(scope="module")
def articles(glossary):
    return load_kb(DEFAULT_ARTICLES, glossary)


@pytest.fixture(scope="module")
def queries(articles):
    return load_queries(DEFAULT_QUERIES, articles)


def good(**changes):
    a = {
        "id": "kb-t-1",
        "lang": "zh",
        "category": "fee",
        "title": "信用卡年费",
        "body": "普卡年费100元。以上收费标准仅供参考，以本行公示为准。",
        "products": ["credit_card"],
        "terms": ["annual_fee"],
        "effective_date": "2025-01-01",
        "reference_only": True,
    }
    a.update(changes)
    return {k: v for k, v in a.items() if v is not ...}


def write(tmp_path, records, name="kb.jsonl"):
    p = tmp_path / name
    p.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
        encoding="utf-8",
    )
    return p


def problems(tmp_path, glossary, records):
    path = write(tmp_path, records)
    with pytest.raises(KBError) as info:
        load_kb(path, glossary)
    for p in info.value.problems:
        assert p.path == str(path)
        assert f"{path}:{p.line}: {p.field}: " in str(info.value)
    return info.value.problems


# ------------------------------------------------------------------ the bundled files


def test_bundled_articles_load_with_counts(articles):
    per_lang = Counter(a["lang"] for a in articles)
    assert len(articles) >= 320 and per_lang["zh"] >= 160 and per_lang["en"] >= 160
    per_cat = Counter((a["lang"], a["category"]) for a in articles)
    for lang in ("zh", "en"):
        for cat in CATEGORIES:
            assert per_cat[lang, cat] >= 20, (lang, cat, per_cat[lang, cat])


def test_bundled_glossary_ids_valid_and_covered(articles, glossary):
    for a in articles:
        assert a["products"] or a["terms"], a["id"]
        assert all(glossary.label_of(i) == "PRODUCT" for i in a["products"]), a["id"]
        assert all(glossary.label_of(i) == "TERM" for i in a["terms"]), a["id"]
    for lang in ("zh", "en"):
        used = {i for a in articles if a["lang"] == lang for i in a["products"] + a["terms"]}
        products = {t for t in glossary.terms if glossary.label_of(t) == "PRODUCT"}
        terms = {t for t in glossary.terms if glossary.label_of(t) == "TERM"}
        assert products <= used, (lang, sorted(products - used))
        assert len(terms & used) >= 0.9 * len(terms), (lang, sorted(terms - used))


def test_bundled_articles_house_rules(articles):
    for a in articles:
        ends = re.findall(r"[。！？]", a["body"]) if a["lang"] == "zh" else re.findall(r"[.!?](?=\s|$)", a["body"])
        assert 2 <= len(ends) <= 8, (a["id"], len(ends))
        assert not re.search(r"\d{7,}|\d{3,4}-\d{4}", a["body"]), a["id"]  # no phone numbers
        if a["category"] == "rate":
            assert a["reference_only"] is True, a["id"]
    assert len({a["title"] for a in articles}) == len(articles)


def test_bundled_queries_answered_by_same_language_articles(articles, queries):
    by_id = {a["id"]: a for a in articles}
    per = Counter((q["lang"], q["split"]) for q in queries)
    for lang in ("zh", "en"):
        assert per[lang, "validation"] + per[lang, "test"] >= 120
        assert abs(per[lang, "validation"] - per[lang, "test"]) <= 1, per  # halves, stratified by language
    assert len(queries) >= 240
    for q in queries:
        assert q["answers"] and all(by_id[a]["lang"] == q["lang"] for a in q["answers"]), q["id"]
    val = load_queries(DEFAULT_QUERIES, articles, split="validation")
    assert {q["split"] for q in val} == {"validation"} and len(val) == per["zh", "validation"] + per["en", "validation"]
    with pytest.raises(ValueError):
        load_queries(DEFAULT_QUERIES, articles, split="train")


# ------------------------------------------------------------------ every rule, with file, line and field


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"id": ...}, "id", "ASCII id"),
        ({"id": "知识-1"}, "id", "ASCII id"),
        ({"id": "a b"}, "id", "ASCII id"),
        ({"lang": "fr"}, "lang", "not one of"),
        ({"title": ""}, "title", "non-empty"),
        ({"title": "长" * 81}, "title", "at most 80"),
        ({"body": "   "}, "body", "non-empty"),
        ({"body": "参考。" * 500 + "仅供参考"}, "body", "at most 1500"),
        ({"category": "faq"}, "category", "not one of"),
        ({"products": "credit_card"}, "products", "list of glossary ids"),
        ({"terms": ...}, "terms", "list of glossary ids"),
        ({"products": ["gold_card"]}, "products", "unknown glossary id 'gold_card'"),
        ({"products": ["annual_fee"], "terms": []}, "products", "is a TERM, not a PRODUCT"),
        ({"terms": ["credit_card"]}, "terms", "is a PRODUCT, not a TERM"),
        ({"terms": ["annual_fee", "annual_fee"]}, "terms", "listed twice"),
        ({"products": [], "terms": []}, "products", "both empty"),
        ({"effective_date": "2025-13-01"}, "effective_date", "YYYY-MM-DD"),
        ({"effective_date": "2025/01/01"}, "effective_date", "YYYY-MM-DD"),
        ({"effective_date": ...}, "effective_date", "YYYY-MM-DD"),
        ({"reference_only": "yes"}, "reference_only", "true or false"),
        ({"category": "rate", "reference_only": ...}, "reference_only", "required true on rate"),
        ({"category": "rate", "reference_only": False}, "reference_only", "required true on rate"),
        ({"reference_only": ...}, "reference_only", "quotes '100元'"),
        (
            {"lang": "en", "body": "The fee is HK$300. It is waived in the first year.", "reference_only": ...},
            "reference_only",
            "quotes 'HK$3'",
        ),
        ({"body": "普卡年费100元。以上标准以本行公示为准。"}, "body", "仅供参考"),
        ({"lang": "en", "body": "The fee is 1% of the amount. It may change."}, "body", "for reference only"),
    ],
)
def test_each_rule_names_file_line_and_field(tmp_path, glossary, changes, field, message):
    ok = good(id="kb-t-0")
    found = problems(tmp_path, glossary, [ok, good(**changes)])
    assert [(p.line, p.field) for p in found] == [(2, field)], found
    assert message in found[0].message


def test_reference_only_false_allows_a_fixed_figure(tmp_path, glossary):
    rec = good(
        body="犹豫期内退保最多扣除10元工本费。过了犹豫期只退现金价值。", reference_only=False, category="procedure"
    )
    assert load_kb(write(tmp_path, [rec]), glossary)[0]["reference_only"] is False


def test_duplicate_id_and_every_problem_reported(tmp_path, glossary):
    records = [good(), "{not json", good(), good(id="kb-t-9", lang="xx", category="faq"), "[1, 2]"]
    found = problems(tmp_path, glossary, records)
    assert [(p.line, p.field) for p in found] == [(2, "(line)"), (3, "id"), (4, "lang"), (4, "category"), (5, "(line)")]
    assert "first on line 1" in found[1].message


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error(tmp_path, glossary, content):
    path = tmp_path / "kb.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(KBError, match="the file is empty") as info:
        load_kb(path, glossary)
    assert (info.value.problems[0].line, info.value.problems[0].field) == (0, "(file)")


def test_missing_file_is_an_error(tmp_path, glossary):
    with pytest.raises(KBError, match="file not found"):
        load_kb(tmp_path / "none.jsonl", glossary)


def test_query_rules(tmp_path, glossary):
    arts = load_kb(
        write(tmp_path, [good(), good(id="kb-t-en", lang="en", body="A fee applies. Ask us.", reference_only=...)]),
        glossary,
    )
    q = {"id": "q-1", "lang": "zh", "query": "年费多少", "answers": ["kb-t-1"], "split": "test"}
    assert load_queries(write(tmp_path, [q], "q.jsonl"), arts) == [q]
    bad = [
        dict(q, id="q-2", answers=["kb-none"]),
        dict(q, id="q-3", answers=["kb-t-en"]),
        dict(q, id="q-4", answers=[]),
        dict(q, id="q-5", split="train"),
        dict(q, id="q-6", query=""),
        dict(q, id="q-7", answers=["kb-t-1", "kb-t-1"]),
        dict(q, id="q-1"),
        dict(q, id="q-8", answers=[["x"]]),
    ]
    path = write(tmp_path, [q] + bad, "q.jsonl")
    with pytest.raises(KBError) as info:
        load_queries(path, arts)
    found = [(p.line, p.field) for p in info.value.problems]
    assert found == [
        (2, "answers"),
        (3, "answers"),
        (4, "answers"),
        (5, "split"),
        (6, "query"),
        (7, "answers"),
        (8, "id"),
        (9, "answers"),
    ]
    assert "is en, the query is zh" in info.value.problems[1].message
    assert all(str(p).startswith(f"{path}:") for p in info.value.problems)
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(KBError, match="no queries"):
        load_queries(tmp_path / "empty.jsonl", arts)


# ------------------------------------------------------------------ kb_version


def test_kb_version_stable_and_content_sensitive(tmp_path, glossary, articles):
    v = kb_version(articles)
    assert re.fullmatch(r"[0-9a-f]{12}", v)
    assert kb_version(load_kb(DEFAULT_ARTICLES, glossary)) == v  # re-reading the file
    assert kb_version(list(reversed(articles))) == v
    edited = [dict(a) for a in articles]
    edited[5]["body"] += " "
    assert kb_version(edited) != v
    edited = [dict(a) for a in articles]
    edited[-1]["effective_date"] = "2026-01-01"
    assert kb_version(edited) != v
    assert kb_version(articles[:-1]) != v
