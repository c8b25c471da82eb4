"""Dialogue state tracking rules from the annotation guidelines (corpus-format.md)."""

import pytest

from findial.data.labelbook import LabelBook
from findial.data.state import DialogueStateTracker


@pytest.fixture(scope="module")
def tracker():
    return DialogueStateTracker(LabelBook.load())


def ent(text, surface, label, term_id=None, occurrence=0):
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(surface, start + 1)
    e = {"start": start, "end": start + len(surface), "label": label}
    if term_id:
        e["term_id"] = term_id
    return e


def test_carry_over_and_new_dict(tracker):
    t1 = "我的信用卡昨天丢了"
    t2 = "补卡要多久"
    states = tracker.track(
        [
            (t1, [ent(t1, "信用卡", "PRODUCT", "credit_card"), ent(t1, "昨天", "DATE")]),
            (t2, []),
        ]
    )
    assert states == [{"product": "credit_card", "date": "昨天"}, {"product": "credit_card", "date": "昨天"}]
    assert states[0] is not states[1]
    before = {"amount": "500元"}
    after = tracker.update(before, [], "好的")
    assert after == before and after is not before


def test_correction_overwrites(tracker):
    t1 = "I want to transfer 6,000 dollars"
    t2 = "sorry, make it 8,000, not 6,000"
    states = tracker.track(
        [
            (t1, [ent(t1, "6,000 dollars", "AMOUNT")]),
            (t2, [ent(t2, "8,000", "AMOUNT")]),  # the retracted amount is plain text
        ]
    )
    assert states[-1] == {"amount": "8,000"}


def test_no_reset_on_topic_change(tracker):
    t1 = "我想办个大额存单，存三年期"
    t2 = "另外信用卡年费怎么收"
    states = tracker.track(
        [
            (t1, [ent(t1, "大额存单", "PRODUCT", "large_cd"), ent(t1, "三年期", "DURATION")]),
            (t2, [ent(t2, "信用卡年费", "TERM", "annual_fee")]),
        ]
    )
    # product and duration from the first topic stay; term is added
    assert states[1] == {"product": "large_cd", "duration": "三年期", "term": "annual_fee"}


def test_last_mention_in_text_order_wins(tracker):
    t = "Move 200 dollars from my debit card to my credit card"
    entities = [  # deliberately not in text order
        ent(t, "credit card", "PRODUCT", "credit_card"),
        ent(t, "200 dollars", "AMOUNT"),
        ent(t, "debit card", "PRODUCT", "debit_card"),
    ]
    assert tracker.update({}, entities, t) == {"product": "credit_card", "amount": "200 dollars"}


def test_unknown_term_leaves_slot_unchanged(tracker):
    t1 = "信用卡的账单日是几号"
    t2 = "那个信用咔呢"
    states = tracker.track(
        [
            (t1, [ent(t1, "信用卡", "PRODUCT", "credit_card"), ent(t1, "账单日", "TERM", "statement_date")]),
            (t2, [ent(t2, "信用咔", "PRODUCT")]),  # not linked: no term_id
        ]
    )
    assert states[1] == {"product": "credit_card", "term": "statement_date"}


def test_non_slot_labels_ignored(tracker):
    t = "我叫张三，手机13800138000，年化3.5%的产品在招商银行有吗"
    entities = [
        ent(t, "张三", "PERSON"),
        ent(t, "13800138000", "PHONE"),
        ent(t, "3.5%", "RATE"),
        ent(t, "招商银行", "ORG"),
    ]
    assert tracker.update({}, entities, t) == {"org": "招商银行"}


def test_label_agnostic(tmp_path):
    book = tmp_path / "ontology.yaml"
    book.write_text(
        "intents: [ask]\n"
        "entities:\n"
        "  - {name: FRUIT, terminology: true}\n"
        "  - {name: COLOUR}\n"
        "emotions: []\n"
        "state_slots:\n  fruit: {from: FRUIT}\n  colour: {from: COLOUR}\n",
        encoding="utf-8",
    )
    tracker = DialogueStateTracker(LabelBook.load(book))
    t = "a red apple"
    state = tracker.update(
        {},
        [{"start": 2, "end": 5, "label": "COLOUR"}, {"start": 6, "end": 11, "label": "FRUIT", "term_id": "apple"}],
        t,
    )
    assert state == {"colour": "red", "fruit": "apple"}
