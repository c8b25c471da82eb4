"""Perturbations: deterministic, user turns only, annotations re-mapped and still valid."""

import random
import re
import unicodedata
from pathlib import Path

import pytest
import yaml

from findial.data.corpus import load_corpus
from findial.data.labelbook import Glossary, LabelBook
from findial.data.state import DialogueStateTracker
from findial.data.term_linker import TermLinker
from findial.evaluation.perturb import (
    PERTURBATIONS,
    CodeMix,
    Edit,
    SpanError,
    apply_edits,
    build_suite,
    perturb_dialogues,
    validate_dialogues,
)

MINI = Path(__file__).parent / "fixtures" / "mini.jsonl"
CONFIG = Path(__file__).parent.parent / "configs" / "robustness.yaml"
LB, GL = LabelBook.load(), Glossary.load()
GOLD = load_corpus(MINI, LB, GL)
# the suite as `findial robustness` runs it by default
SUITE = build_suite(yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["perturbations"], GL)
NAMES = [p.name for p in SUITE]


def _turn(text: str, intent: str, *mentions: tuple[str, str, str | None], state: dict) -> dict:
    ents = []
    for surface, label, term_id in mentions:
        start = text.index(surface)
        ents.append(
            {"start": start, "end": start + len(surface), "label": label, **({"term_id": term_id} if term_id else {})}
        )
    return {"speaker": "user", "text": text, "intent": intent, "emotion": "neutral", "entities": ents, "state": state}


# longer turns with more punctuation than the mini corpus has
EXTRA = [
    {
        "id": "zh-x",
        "lang": "zh",
        "turns": [
            _turn(
                "你好，请问信用卡的年费怎么收？我上个月刚办的，能免吗？谢谢！",
                "annual_fee_query",
                ("信用卡", "PRODUCT", "credit_card"),
                ("年费", "TERM", "annual_fee"),
                ("上个月", "DATE", None),
                state={"product": "credit_card", "term": "annual_fee", "date": "上个月"},
            ),
            {"speaker": "agent", "text": "您好，首年免年费。"},
            _turn(
                "好的，那账单分期呢？手续费是多少，3.5%吗？",
                "installment_apply",
                ("账单分期", "PRODUCT", "bill_installment"),
                ("手续费", "TERM", "handling_fee"),
                ("3.5%", "RATE", None),
                state={"product": "bill_installment", "term": "handling_fee", "date": "上个月"},
            ),
        ],
    },
    {
        "id": "en-x",
        "lang": "en",
        "turns": [
            _turn(
                "Hi, I lost my credit card yesterday. Can you block it, please? Also, what's the annual fee?",
                "card_lost_report",
                ("credit card", "PRODUCT", "credit_card"),
                ("yesterday", "DATE", None),
                ("annual fee", "TERM", "annual_fee"),
                state={"product": "credit_card", "date": "yesterday", "term": "annual_fee"},
            )
        ],
    },
]


def _copies(n: int) -> list[dict]:
    """The mini corpus and EXTRA n times under other ids (more dialogues, so seeds have room to differ)."""
    return [{**d, "id": f"{d['id']}-{k}"} for k in range(n) for d in GOLD + EXTRA]


def test_the_default_suite_holds_every_perturbation():
    assert sorted(NAMES) == sorted(PERTURBATIONS) and len(NAMES) == 6


@pytest.mark.parametrize("p", SUITE, ids=NAMES)
def test_output_validates_and_keeps_annotations(p):
    gold = validate_dialogues(GOLD + EXTRA, LB, GL)
    out = perturb_dialogues(gold, p, seed=13)
    assert validate_dialogues(out, LB, GL) == out  # the corpus loader accepts it as it is
    tracker, linker = DialogueStateTracker(LB), TermLinker(GL)
    changed = 0
    for g, o in zip(gold, out):
        assert (o["id"], o["lang"], o.get("branch")) == (g["id"], g["lang"], g.get("branch"))
        assert [t["speaker"] for t in o["turns"]] == [t["speaker"] for t in g["turns"]]
        for gt, ot in zip(g["turns"], o["turns"]):
            if gt["speaker"] == "agent":
                assert ot == gt  # agent turns untouched
                continue
            changed += gt["text"] != ot["text"]
            assert {k: v for k, v in ot.items() if k not in ("text", "entities")} == {
                k: v for k, v in gt.items() if k not in ("text", "entities")
            }  # intent, emotion, state
            assert [(e["label"], e.get("term_id")) for e in ot["entities"]] == [
                (e["label"], e.get("term_id")) for e in gt["entities"]
            ]
            for ge, oe in zip(gt["entities"], ot["entities"]):
                surface = ot["text"][oe["start"] : oe["end"]]
                if ge.get("term_id") is None:  # amounts, dates, ...: the surface the state holds, unchanged
                    assert surface == gt["text"][ge["start"] : ge["end"]]
                elif p.name != "typo":  # a homophone, width or language switch still links to the same term
                    assert linker.link(surface, oe["label"]).term_id == oe["term_id"], (p.name, surface)
        users = [t for t in o["turns"] if t["speaker"] == "user"]
        assert tracker.track([(t["text"], t["entities"]) for t in users]) == [t["state"] for t in users]
    assert changed >= 2, f"{p.name} changed {changed} user turns of the mini corpus"


@pytest.mark.parametrize("p", SUITE, ids=NAMES)
def test_deterministic_per_dialogue_and_seeded(p):
    data = _copies(4)
    first = perturb_dialogues(data, p, seed=13)
    assert perturb_dialogues(data, p, seed=13) == first
    # a dialogue's output depends on its id and the seed only, not on order or on the other dialogues
    assert perturb_dialogues(data[::-1], p, seed=13) == first[::-1]
    assert perturb_dialogues(data[5:6], p, seed=13) == first[5:6]
    assert perturb_dialogues(data, p, seed=14) != first
    assert data == _copies(4)  # the input is not modified


def test_typos_only_in_latin_words_never_in_numbers():
    typo = next(p for p in SUITE if p.name == "typo")
    data = _copies(6)
    out = perturb_dialogues(data, typo, seed=5)
    edited = 0
    for g, o in zip(data, out):
        for gt, ot in zip(g["turns"], o["turns"]):
            if gt["speaker"] == "user":
                assert re.findall(r"\d+", ot["text"]) == re.findall(r"\d+", gt["text"])
                assert re.sub(r"[A-Za-z]", "", ot["text"]) == re.sub(r"[A-Za-z]", "", gt["text"])
                edited += ot["text"] != gt["text"]
    assert edited > 10


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(str.maketrans({"。": ".", "、": ",", "「": '"', "」": '"'}))


def test_width_maps_one_character_for_one_and_folds_back():
    width = next(p for p in SUITE if p.name == "width")
    out = perturb_dialogues(_copies(3), width, seed=2)
    seen_fullwidth = False
    for g, o in zip(_copies(3), out):
        for gt, ot in zip(g["turns"], o["turns"]):
            assert len(ot["text"]) == len(gt["text"])
            assert [(e["start"], e["end"]) for e in ot.get("entities", [])] == [
                (e["start"], e["end"]) for e in gt.get("entities", [])
            ]
            seen_fullwidth |= any("\uff01" <= c <= "\uff5e" for c in ot["text"])
            assert _fold(ot["text"]) == _fold(gt["text"])  # nothing but width changed
    assert seen_fullwidth


def test_codemix_switches_a_term_to_the_other_language():
    mix = CodeMix(share=1.0, glossary=GL)
    zh = next(d for d in GOLD if d["id"] == "zh-1")
    out = mix.apply(zh, random.Random(0))["turns"][0]
    e = out["entities"][0]
    assert out["text"][e["start"] : e["end"]] == GL.terms["credit_card"].en and e["term_id"] == "credit_card"
    assert out["text"][out["entities"][1]["start"] : out["entities"][1]["end"]] == "昨天"  # DATE moved with it
    en = next(d for d in GOLD if d["id"] == "en-2")
    out = mix.apply(en, random.Random(0))["turns"][0]
    assert [out["text"][e["start"] : e["end"]] for e in out["entities"]] == [
        GL.terms["annual_fee"].zh,
        GL.terms["platinum_card"].zh,
    ]


def test_chitchat_shifts_spans_and_skips_small_talk():
    chat = next(p for p in SUITE if p.name == "chitchat")
    out = perturb_dialogues(GOLD, chat, seed=13)
    for g, o in zip(GOLD, out):
        for gt, ot in zip(g["turns"], o["turns"]):
            if gt["speaker"] == "user" and gt["intent"] in chat.skip_intents:
                assert ot["text"] == gt["text"]
            elif gt["speaker"] == "user" and ot["text"] != gt["text"]:
                assert gt["text"].rstrip("。.!！") in ot["text"]  # the original sits inside the fillers


def test_apply_edits_remaps_spans():
    text = "我的信用卡昨天丢了"
    ents = [
        {"start": 2, "end": 5, "label": "PRODUCT", "term_id": "credit_card"},
        {"start": 5, "end": 7, "label": "DATE"},
    ]
    # an insertion at an entity's start goes before it, one at its end after it; an edit inside moves the end
    new, out = apply_edits(text, ents, [Edit(0, 0, "嗯，"), Edit(2, 2, "那张"), Edit(4, 5, "咔咔"), Edit(7, 7, "晚上")])
    assert new == "嗯，我的那张信用咔咔昨天晚上丢了"
    assert [new[e["start"] : e["end"]] for e in out] == ["信用咔咔", "昨天"]
    assert out[0]["term_id"] == "credit_card" and ents[0]["start"] == 2  # copies, input untouched
    with pytest.raises(SpanError, match="cuts entity"):
        apply_edits(text, ents, [Edit(4, 6, "x")])
    with pytest.raises(SpanError, match="delete"):
        apply_edits(text, ents, [Edit(5, 7, "")])
    with pytest.raises(SpanError, match="overlapping"):
        apply_edits(text, ents, [Edit(0, 2, "a"), Edit(1, 3, "b")])


def test_unknown_perturbation_or_parameter_is_named():
    with pytest.raises(ValueError, match="unknown perturbation 'tyop'"):
        build_suite({"tyop": {}}, GL)
    with pytest.raises(ValueError, match="perturbations.typo"):
        build_suite({"typo": {"per_word": 3}}, GL)
    assert [p.name for p in build_suite({"typo": {}, "width": None}, GL)] == ["typo"]


def test_a_word_or_run_crossing_an_entity_boundary_is_left_alone():
    # "credit card" is the mention, the plural s is not: an edit over "cards" would cut the span
    d = {
        "id": "x",
        "lang": "en",
        "turns": [
            _turn(
                "credit cards",
                "card_bill_query",
                ("credit card", "PRODUCT", "credit_card"),
                state={"product": "credit_card"},
            )
        ],
    }
    for p in build_suite({"typo": {"per_words": 1}, "width": {"share": 1.0}}, GL):
        texts = set()
        for seed in range(20):
            (t,) = perturb_dialogues([d], p, seed)[0]["turns"]
            assert t["text"].endswith(" cards") and t["text"][t["entities"][0]["end"] :] == "s"
            texts.add(t["text"])
        assert texts - {"credit cards"}  # "credit", inside the mention, was still edited
