"""Metrics on small hand-computed cases (definitions: data/spec/corpus-format.md)."""

import copy

import pytest

from findial.data.labelbook import LabelBook
from findial.evaluation.metrics import (
    emotion_accuracy,
    entity_prf_per_label,
    evaluate_dialogues,
    intent_accuracy,
    intent_macro_f1,
    joint_state_accuracy,
    multi_turn_accuracy,
    terminology_prf,
)

TERMINOLOGY = ("PRODUCT", "TERM")


def user(intent="greeting", entities=(), state=None, emotion=None, text="x" * 40):
    t = {"speaker": "user", "text": text, "intent": intent, "entities": list(entities)}
    if state is not None:
        t["state"] = state
    if emotion is not None:
        t["emotion"] = emotion
    return t


AGENT = {"speaker": "agent", "text": "ok"}


def dlg(did, *turns):
    return {"id": did, "lang": "en", "turns": list(turns)}


def m(start, end, label, term_id=None):
    e = {"start": start, "end": end, "label": label}
    if term_id:
        e["term_id"] = term_id
    return e


# ------------------------------------------------------------------ terminology


def test_terminology_one_of_three():
    gold = [
        dlg(
            "d1",
            user(
                entities=[
                    m(0, 3, "PRODUCT", "credit_card"),
                    m(5, 8, "TERM", "annual_fee"),
                    m(10, 13, "TERM", "lpr"),
                    m(20, 25, "AMOUNT"),
                ]
            ),
        )
    ]
    pred = [
        dlg(
            "d1",
            user(
                entities=[
                    m(0, 3, "PRODUCT", "credit_card"),  # correct
                    m(5, 8, "TERM", "late_fee"),  # wrong term_id
                    m(10, 12, "TERM", "lpr"),  # wrong end
                    m(20, 25, "AMOUNT"),
                ]
            ),
        )
    ]  # not terminology
    r = terminology_prf(gold, pred, TERMINOLOGY)
    assert r["precision"] == pytest.approx(1 / 3)
    assert r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(1 / 3)
    assert (r["support"], r["predicted"]) == (3, 3)


def test_terminology_label_must_match_and_multiset():
    gold = [
        dlg(
            "d1",
            user(entities=[m(0, 3, "PRODUCT", "credit_card"), m(5, 8, "TERM", "annual_fee")]),
            AGENT,
            user(entities=[m(0, 3, "PRODUCT", "credit_card")]),
        )
    ]
    pred = [
        dlg(
            "d1",
            user(
                entities=[
                    m(0, 3, "PRODUCT", "credit_card"),
                    m(0, 3, "PRODUCT", "credit_card"),
                    m(5, 8, "PRODUCT", "annual_fee"),
                ]
            ),  # wrong label
            AGENT,
            user(entities=[m(0, 3, "PRODUCT", "credit_card")]),
        )
    ]
    # tp = 2 (the duplicate matches once; the same span in another turn is another mention)
    r = terminology_prf(gold, pred, TERMINOLOGY)
    assert r["precision"] == pytest.approx(2 / 4)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))  # 4/7


def test_terminology_default_labels_from_label_book():
    gold = [dlg("d1", user(entities=[m(0, 3, "PRODUCT", "credit_card"), m(5, 8, "TERM", "lpr")]))]
    pred = [dlg("d1", user(entities=[m(0, 3, "PRODUCT", "credit_card")]))]
    r = terminology_prf(gold, pred)
    assert (r["precision"], r["recall"], r["support"]) == (1.0, 0.5, 2)


def test_zero_division_conventions():
    gold = [dlg("d1", user(entities=[m(0, 3, "PRODUCT", "credit_card")]))]
    nothing = [dlg("d1", user(entities=[]))]
    # gold but no predictions: a failure, not missing
    assert terminology_prf(gold, nothing, TERMINOLOGY) == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 1,
        "predicted": 0,
    }
    # predictions but no gold
    r = terminology_prf(nothing, gold, TERMINOLOGY)
    assert (r["precision"], r["recall"], r["f1"], r["support"]) == (0.0, 0.0, 0.0, 0)
    # neither: no support -> None
    r = terminology_prf(nothing, nothing, TERMINOLOGY)
    assert (r["precision"], r["recall"], r["f1"]) == (None, None, None)


# ------------------------------------------------------------------ entities


def test_entity_prf_per_label():
    gold = [dlg("d1", user(entities=[m(0, 3, "PRODUCT", "credit_card"), m(5, 9, "AMOUNT"), m(10, 12, "DATE")]))]
    pred = [
        dlg(
            "d1",
            user(
                entities=[
                    m(0, 3, "PRODUCT", "debit_card"),  # term_id ignored here
                    m(5, 8, "AMOUNT"),  # wrong end
                    m(10, 12, "DATE"),
                    m(13, 15, "CURRENCY"),
                ]
            ),
        )
    ]  # spurious
    r = entity_prf_per_label(gold, pred, labels=["PRODUCT", "AMOUNT", "DATE", "CURRENCY", "ORG"])
    assert r["PRODUCT"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1, "predicted": 1}
    assert (r["AMOUNT"]["precision"], r["AMOUNT"]["recall"], r["AMOUNT"]["f1"]) == (0.0, 0.0, 0.0)
    assert r["DATE"]["f1"] == 1.0
    assert (r["CURRENCY"]["precision"], r["CURRENCY"]["f1"], r["CURRENCY"]["support"]) == (0.0, 0.0, 0)
    assert r["ORG"]["f1"] is None  # listed, never seen
    # micro: tp 2, gold 3, pred 4
    assert r["micro"]["precision"] == pytest.approx(2 / 4)
    assert r["micro"]["recall"] == pytest.approx(2 / 3)
    assert r["micro"]["f1"] == pytest.approx(4 / 7)


# ------------------------------------------------------------------ intents, emotion

INTENT_GOLD = ["a", "a", "b", "c"]
INTENT_PRED = ["a", "b", "b", "d"]


def _intent_dialogues(gold_intents, pred_intents):
    gold = [dlg(f"d{i}", user(intent=g)) for i, g in enumerate(gold_intents)]
    pred = [dlg(f"d{i}", user(intent=p)) for i, p in enumerate(pred_intents)]
    return gold, pred


def test_intent_accuracy_and_macro_f1():
    gold, pred = _intent_dialogues(INTENT_GOLD, INTENT_PRED)
    assert intent_accuracy(gold, pred) == 0.5
    # per intent F1 = 2TP / (2TP + FP + FN): a 2/3, b 2/3, c 0 (never predicted), d 0 (never gold)
    assert intent_macro_f1(gold, pred) == pytest.approx((2 / 3 + 2 / 3 + 0 + 0) / 4)


def test_intent_macro_f1_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gold_i = ["a", "b", "b", "c", "c", "c", "d"]
    pred_i = ["a", "c", "b", "c", "a", "c", "e"]
    gold, pred = _intent_dialogues(gold_i, pred_i)
    expected = sklearn_metrics.f1_score(gold_i, pred_i, average="macro", zero_division=0)
    assert intent_macro_f1(gold, pred) == pytest.approx(expected)


def test_emotion_accuracy_only_over_turns_with_gold_emotion():
    gold = [dlg("d1", user(emotion="angry"), AGENT, user(emotion="neutral"), AGENT, user())]
    pred = [dlg("d1", user(emotion="angry"), AGENT, user(emotion="anxious"), AGENT, user(emotion="angry"))]
    assert emotion_accuracy(gold, pred) == 0.5
    assert emotion_accuracy([dlg("d1", user())], [dlg("d1", user(emotion="angry"))]) is None


# ------------------------------------------------------------------ state, multi-turn


def _state_dialogues():
    s1 = {"product": "credit_card"}
    s2 = {"product": "credit_card", "date": "昨天"}
    s3 = {"product": "credit_card", "date": "昨天", "amount": "5000元"}
    gold = [
        dlg(
            "d1",
            user("card_lost_report", state=s1),
            AGENT,
            user("card_replace", state=s2),
            AGENT,
            user("card_repayment", state=s3),
        ),
        dlg("d2", user("greeting", state={})),
    ]
    pred = [
        dlg(
            "d1",
            user("card_activate", state=s1),
            AGENT,  # first user turn: not counted
            user("card_replace", state=dict(s2)),
            AGENT,  # intent and state right
            user("card_repayment", state={**s3, "amount": "500元"}),
        ),  # one slot wrong -> fails
        dlg("d2", user("thanks", state={})),  # single-turn: not counted
    ]
    return gold, pred


def test_multi_turn_accuracy_excludes_first_user_turn():
    gold, pred = _state_dialogues()
    assert multi_turn_accuracy(gold, pred) == 0.5  # 1 of the 2 later user turns


def test_multi_turn_needs_intent_and_state():
    gold, pred = _state_dialogues()
    pred[0]["turns"][4]["state"] = copy.deepcopy(gold[0]["turns"][4]["state"])
    assert multi_turn_accuracy(gold, pred) == 1.0
    pred[0]["turns"][2]["intent"] = "card_activate"  # right state, wrong intent
    assert multi_turn_accuracy(gold, pred) == 0.5


def test_joint_state_accuracy_over_all_user_turns():
    gold, pred = _state_dialogues()
    assert joint_state_accuracy(gold, pred) == 0.75  # d1 turns 1, 2 and d2 right; d1 turn 3 wrong
    pred[1]["turns"][0]["state"] = {"product": None}  # a None slot is an absent slot
    assert joint_state_accuracy(gold, pred) == 0.75
    pred[1]["turns"][0]["state"] = {"product": "credit_card"}  # an extra slot fails the turn
    assert joint_state_accuracy(gold, pred) == 0.5


# ------------------------------------------------------------------ evaluate_dialogues


def test_evaluate_dialogues():
    gold, pred = _state_dialogues()
    gold[0]["turns"][0]["entities"] = [m(0, 3, "PRODUCT", "credit_card")]
    pred[0]["turns"][0]["entities"] = [m(0, 3, "PRODUCT", "credit_card")]
    r = evaluate_dialogues(gold, pred, LabelBook.load())
    assert (r["n_dialogues"], r["n_user_turns"], r["n_multi_turn"]) == (2, 4, 2)
    assert r["multi_turn_accuracy"] == 0.5
    assert r["joint_state_accuracy"] == 0.75
    assert r["intent_accuracy"] == 0.5
    assert r["terminology_f1"] == 1.0 and r["terminology_support"] == 1
    assert r["entities"]["PRODUCT"]["f1"] == 1.0 and r["entities"]["ORG"]["f1"] is None
    assert r["emotion_accuracy"] is None  # no gold emotion anywhere


def test_evaluate_dialogues_none_without_support():
    gold = [dlg("d1", user("greeting", state={})), dlg("d2", user("thanks", state={}))]
    pred = copy.deepcopy(gold)
    r = evaluate_dialogues(gold, pred, LabelBook.load())
    assert r["n_multi_turn"] == 0
    assert r["multi_turn_accuracy"] is None  # missing, not failed
    assert r["terminology_f1"] is None
    assert r["entity_micro_f1"] is None
    assert r["emotion_accuracy"] is None
    assert r["intent_accuracy"] == 1.0 and r["intent_macro_f1"] == 1.0


def test_misaligned_predictions_raise():
    gold, pred = _state_dialogues()
    with pytest.raises(ValueError, match="missing ids"):
        multi_turn_accuracy(gold, pred[:1])
    pred[0]["turns"].pop()
    with pytest.raises(ValueError, match="d1"):
        evaluate_dialogues(gold, pred, LabelBook.load())
