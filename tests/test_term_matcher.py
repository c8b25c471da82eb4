"""Listed glossary forms found in running text, and their merge with the NER model's spans."""

import pytest

from findial.data.labelbook import Glossary
from findial.data.term_matcher import GlossaryMatcher, folded_view, merge_terms, settled_forms

TERMINOLOGY = frozenset({"PRODUCT", "TERM"})


@pytest.fixture(scope="module")
def matcher():
    return GlossaryMatcher(Glossary.load())


def spans(text, found):
    return [(text[m.start : m.end], m.label, m.term_id) for m in found]


def test_folded_view_maps_back_to_the_original():
    view, index = folded_view("ＬＰＲ  Credit-Card")
    assert view == "lpr credit card"
    assert [index[view.index("c")], index[-1]] == [5, 15]


def test_longest_listed_form_is_the_mention(matcher):
    text = "我的信用卡年费怎么收"
    assert spans(text, matcher.find(text)) == [("信用卡年费", "TERM", "annual_fee")]
    text = "信用卡还款"
    assert ("信用卡", "PRODUCT", "credit_card") in spans(text, matcher.find(text))


def test_case_width_hyphen_and_plural_folding(matcher):
    text = "Are ＥＴＦ and exchange-traded funds the same? I hold ETFs"
    assert spans(text, matcher.find(text)) == [
        ("ＥＴＦ", "PRODUCT", "etf"),
        ("exchange-traded funds", "PRODUCT", "etf"),
        ("ETFs", "PRODUCT", "etf"),
    ]


def test_latin_forms_match_whole_words_only(matcher):
    assert matcher.find("I watch netflix") == []


def test_everyday_english_words_need_the_models_support(matcher):
    text = "I'm checking whether my checking account has funds"
    found = matcher.find(text)
    assert [(text[m.start : m.end], m.common) for m in found] == [
        ("checking", True),
        ("checking account", False),
        ("funds", True),
    ]
    assert [m.common for m in matcher.find("ETF 和 信用卡")] == [False, False]
    model = [{"start": 44, "end": 49, "label": "PRODUCT", "confidence": 0.8}]
    merged = merge_terms(text, model, found, TERMINOLOGY, "glossary")
    assert [(text[e["start"] : e["end"]], e["term_id"]) for e in merged] == [
        ("checking account", "current_account"),
        ("funds", "mutual_fund"),
    ]


def _turn(text, mentions):
    """A user turn whose gold entities are the given (surface, term_id) mentions, each at its first place."""
    ents = [{"start": text.index(f), "end": text.index(f) + len(f), "label": "TERM", "term_id": t} for f, t in mentions]
    return {"turns": [{"speaker": "user", "text": text, "entities": ents}]}


def test_common_words_the_train_annotation_always_tags_are_settled(matcher):
    dialogues = (
        [_turn("please unlock my password", [("password", "password")])] * 5
        + [_turn("Password reset, please", [("Password", "password")])]
        + [_turn("I have funds in my current account", [])] * 6  # "funds": not a mention here
        + [_turn("Buy some funds", [("funds", "mutual_fund")])] * 6
        + [_turn("the fee is fine", [("fee", "handling_fee")])] * 4
    )  # too few to settle
    assert settled_forms(dialogues, matcher) == ["password"]
    assert settled_forms(dialogues, matcher, min_count=4) == ["fee", "password"]
    settled = GlossaryMatcher(Glossary.load(), settled_forms(dialogues, matcher))
    text = "I forgot my PASSWORD and my password, and check funds"
    assert [(text[m.start : m.end], m.common) for m in settled.find(text)] == [
        ("PASSWORD", False),
        ("password", False),
        ("check", True),
        ("funds", True),
    ]
    # a settled word is a mention without the model's support; an unsettled one still needs it
    merged = merge_terms(text, [], settled.find(text), TERMINOLOGY, "glossary")
    assert [text[e["start"] : e["end"]] for e in merged] == ["PASSWORD", "password"]


def test_merge_glossary_mode_replaces_overlapping_model_spans_and_keeps_others(matcher):
    text = "信用卡年费能退吗，还有信用咔"
    model = [
        {"start": 0, "end": 3, "label": "PRODUCT", "confidence": 0.7},  # a part of 信用卡年费
        {"start": 11, "end": 14, "label": "PRODUCT", "confidence": 0.9},
    ]  # a typo the glossary lacks
    merged = merge_terms(text, model, matcher.find(text), TERMINOLOGY, "glossary")
    assert [(text[e["start"] : e["end"]], e["label"], e.get("term_id")) for e in merged] == [
        ("信用卡年费", "TERM", "annual_fee"),
        ("信用咔", "PRODUCT", None),
    ]
    assert merged[0]["confidence"] == 0.7 and merged[0]["source"] == "glossary"


def test_merge_confirmed_mode_needs_the_model(matcher):
    text = "支票 and the credit card"
    found = matcher.find(text)
    assert [m.term_id for m in found] == ["cheque", "credit_card"]
    model = [{"start": 13, "end": 24, "label": "PRODUCT", "confidence": 0.95}]
    confirmed = merge_terms(text, model, found, TERMINOLOGY, "confirmed")
    assert [e["term_id"] for e in confirmed] == ["credit_card"]
    assert [e["term_id"] for e in merge_terms(text, model, found, TERMINOLOGY, "glossary")] == ["cheque", "credit_card"]
    assert merge_terms(text, model, found, TERMINOLOGY, "model") == model
    with pytest.raises(ValueError, match="term matching mode 'gazetteer'"):
        merge_terms(text, model, found, TERMINOLOGY, "gazetteer")
