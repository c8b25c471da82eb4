"""The multi-turn breakdown of the evaluation report: by phenomenon and by state slot."""

import pytest

from findial.evaluation.multi_turn import multi_turn_breakdown


def user(intent, state, phenomena=None):
    t = {"speaker": "user", "text": "x", "intent": intent, "entities": [], "state": state}
    if phenomena:
        t["phenomena"] = phenomena
    return t


def test_turns_are_grouped_by_annotated_and_derived_phenomena():
    gold = [
        {
            "id": "d",
            "lang": "en",
            "turns": [
                user("transfer_money", {"amount": "5000"}),
                {"speaker": "agent", "text": "ok"},
                user("transfer_money", {"amount": "8000"}, ["correction"]),
                user("exchange_rate_query", {"amount": "8000", "currency": "USD"}, ["topic_change"]),
                user("exchange_rate_query", {"amount": "8000", "currency": "USD"}, ["ellipsis"]),
            ],
        }
    ]
    pred = [
        {
            "id": "d",
            "lang": "en",
            "turns": [
                user("transfer_money", {"amount": "5000"}),
                {"speaker": "agent", "text": "ok"},
                user("transfer_money", {"amount": "5000"}),  # correction missed
                user("exchange_rate_query", {"amount": "8000", "currency": "USD"}),  # right
                user("transfer_money", {"amount": "8000", "currency": "USD", "org": "HSBC"}),
            ],
        }
    ]  # intent wrong, extra org
    out = multi_turn_breakdown(gold, pred, ["amount", "currency", "org"])
    ph = out["phenomena"]
    assert ph["all"]["n"] == 3 and ph["all"]["multi_turn_accuracy"] == pytest.approx(1 / 3)
    assert ph["correction"] == {"n": 1, "multi_turn_accuracy": 0.0, "intent_accuracy": 1.0, "state_accuracy": 0.0}
    assert ph["topic_change"]["multi_turn_accuracy"] == 1.0
    assert ph["ellipsis"]["intent_accuracy"] == 0.0 and ph["ellipsis"]["state_accuracy"] == 0.0
    assert ph["slot_replaced"]["n"] == 1 and ph["slot_set"]["n"] == 1 and ph["carry_over"]["n"] == 2
    assert ph["intent_change"]["n"] == 1  # gold changes intent once (the topic change)
    slots = out["slots"]
    assert slots["amount"]["replaced"] == {"n": 1, "right": 0, "accuracy": 0.0}
    assert slots["amount"]["carried"] == {"n": 2, "right": 2, "accuracy": 1.0}
    assert slots["currency"]["set"]["right"] == 1 and slots["currency"]["wrong"] == 0
    assert slots["org"] == {"wrong": 1, "absent": {"n": 1, "right": 0, "accuracy": 0.0}}


def test_single_turn_dialogues_give_an_empty_breakdown():
    gold = [{"id": "s", "lang": "zh", "turns": [user("greeting", {})]}]
    assert multi_turn_breakdown(gold, gold, ["amount"]) == {"phenomena": {}, "slots": {"amount": {"wrong": 0}}}
