"""Glossary linking: exact, folded, variant, fuzzy and unknown."""

import pytest

from findial.data import term_linker
from findial.data.labelbook import Glossary, LabelBook
from findial.data.term_linker import LinkResult, TermLinker, similarity, variant_key


@pytest.fixture(scope="module")
def linker():
    return TermLinker(Glossary.load(), labelbook=LabelBook.load())


def test_exact(linker):
    assert linker.link("信用卡", "PRODUCT") == LinkResult("credit_card", "exact", 1.0, "信用卡")
    assert linker.link("等额本息").term_id == "equal_installment"


@pytest.mark.parametrize("surface", ["ＬＰＲ", "lpr", "LPR", "Ｌｐｒ"])
def test_case_and_width_folding(linker, surface):
    res = linker.link(surface, "TERM")
    assert (res.term_id, res.method, res.score) == ("lpr", "exact", 1.0)


@pytest.mark.parametrize(
    "surface,term_id",
    [
        ("Credit Cards", "credit_card"),  # plural
        ("co branded card", "co_branded_card"),  # hyphen -> space
        ("credit - card", "credit_card"),
        ("bank  card", "bank_card"),
        ("annuities", "annuity_insurance"),
    ],
)
def test_generic_variants_are_exact(linker, surface, term_id):
    res = linker.link(surface, "PRODUCT")
    assert (res.term_id, res.method) == (term_id, "exact")


@pytest.mark.parametrize(
    "surface,label,term_id",
    [
        ("platnum card", "PRODUCT", "platinum_card"),
        ("crdeit card", "PRODUCT", "credit_card"),  # transposition
        ("mortage", "PRODUCT", "housing_loan"),
        ("anual fee", "TERM", "annual_fee"),
        ("intrest rate", "TERM", "interest_rate"),
    ],
)
def test_misspelt_english_alias_is_fuzzy(linker, surface, label, term_id):
    res = linker.link(surface, label)
    assert res.term_id == term_id and res.method == "fuzzy"
    assert 0.8 <= res.score < 1.0


def test_unknown_returns_none(linker):
    res = linker.link("quantum hedge token", "PRODUCT")
    assert res.term_id is None and res.method == "unknown" and res.score < 0.8
    # short strings one edit away are not guessed (apr vs lpr: 0.67)
    assert linker.link("xpr", "TERM").term_id is None


def test_label_restricts_candidates(linker):
    # 年费 is a TERM; as a PRODUCT mention it must not be linked to a TERM id
    assert linker.link("年费", "TERM").term_id == "annual_fee"
    assert linker.link("年费", "PRODUCT").term_id is None
    assert linker.link("anual fee", "PRODUCT").term_id is None


def test_min_score_threshold():
    strict = TermLinker(Glossary.load(), min_score=0.95)
    assert strict.link("platnum card", "PRODUCT").method == "unknown"  # 11/12 = 0.917 < 0.95


def test_chinese_character_fallback(monkeypatch):
    monkeypatch.setattr(term_linker, "_lazy_pinyin", None)  # as without pypinyin
    # one wrong character in five: 0.8 by character similarity
    res = TermLinker(Glossary.load()).link("信用卡年废", "TERM")
    assert (res.term_id, res.method, res.score) == ("annual_fee", "fuzzy", pytest.approx(0.8))


def test_pinyin_homophone_when_available(monkeypatch):
    table = {"信": "xin", "用": "yong", "卡": "ka", "咔": "ka"}
    monkeypatch.setattr(term_linker, "_lazy_pinyin", lambda s: [table.get(c, c) for c in s])
    res = TermLinker(Glossary.load()).link("信用咔", "PRODUCT")
    assert (res.term_id, res.method, res.score) == ("credit_card", "fuzzy", 1.0)


def test_link_entities(linker):
    text = "我的信用咔和platnum card, 还有LPR, 5000元"

    def span(s, label):
        i = text.index(s)
        return {"start": i, "end": i + len(s), "label": label}

    ents = [span("信用咔", "PRODUCT"), span("platnum card", "PRODUCT"), span("LPR", "TERM"), span("5000元", "AMOUNT")]
    ents[0]["term_id"] = "stale"
    linked, unknown = linker.link_entities(text, ents)
    homophone = "credit_card" if term_linker._lazy_pinyin is not None else None  # 信用咔 sounds like 信用卡
    assert [e.get("term_id") for e in linked] == [homophone, "platinum_card", "lpr", None]
    assert "term_id" not in linked[3] and (homophone or "term_id" not in linked[0])
    assert [u.surface for u in unknown] == (["信用咔"] if term_linker._lazy_pinyin is None else [])
    assert ents[0]["term_id"] == "stale"  # inputs are not mutated


def test_helpers():
    assert variant_key("Credit-Cards") == "creditcard"
    assert similarity("abc", "abc") == 1.0
    assert similarity("ab", "ba") == 0.5  # one transposition
    assert similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert similarity("kitten", "sitting", floor=0.8) == 0.0
