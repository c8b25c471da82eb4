"""NER features: spans are decoded per word, never cut inside one."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from findial.training.features import IGNORE, decode_spans, encode_ner, word_units

TAGS = ["O", "B-AMOUNT", "I-AMOUNT", "B-DATE", "I-DATE"]


@pytest.fixture(scope="module")
def sentencepiece_like():
    """A SentencePiece-style tokenizer (Unigram + Metaspace), as e5-small's: "june" is "▁ju" + "ne"."""
    pieces = [
        "<unk>",
        "<s>",
        "</s>",
        "<pad>",
        "▁",
        "那",
        "100",
        "万",
        "行",
        "▁how",
        "▁about",
        "▁ju",
        "ne",
        "▁15",
        "th",
        "?",
        "j",
        "u",
        "n",
        "e",
        "1",
        "5",
        "t",
        "h",
    ]
    vocab = [(p, -1.0 if len(p) > 1 else -5.0) for p in dict.fromkeys(pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def _pieces(tokenizer, text):
    return tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])


def test_a_span_never_starts_or_ends_inside_a_word(sentencepiece_like):
    text = "how about june 15th?"
    f = encode_ner(
        sentencepiece_like, {"text": text, "entities": [{"start": 10, "end": 19, "label": "DATE"}]}, 32, TAGS
    )
    pieces = _pieces(sentencepiece_like, text)
    assert {"▁ju", "ne", "th"} <= set(pieces)
    gold = [t if t != IGNORE else 0 for t in f["tag_labels"]]
    assert [(s["start"], s["end"]) for s in decode_spans(text, f["offsets"], gold, TAGS)] == [(10, 19)]
    # a model that starts a new DATE at "ne" and leaves "th" outside still gets whole words: "june 15th"
    b, i = TAGS.index("B-DATE"), TAGS.index("I-DATE")
    ids = [b if p in ("▁ju", "ne") else i if p == "▁15" else 0 for p in pieces]
    assert [(s["start"], s["end"]) for s in decode_spans(text, f["offsets"], ids, TAGS)] == [(10, 19)]


def test_word_units_keep_cjk_characters_and_symbols_apart():
    text = "那100万 £5,000"
    offsets = [(0, 0), (0, 1), (1, 4), (4, 5), (5, 7), (7, 8), (8, 12)]  # ▁那 100 万 ▁£ 5 ,000
    assert word_units(text, offsets) == [(0, 0), (0, 1), (1, 4), (4, 5), (6, 7), (7, 8), (8, 12)]
    assert word_units("june", [(0, 2), (2, 4)]) == [(0, 4), (2, 2)]


def test_bio_viterbi_never_lets_an_inside_tag_follow_another_label():
    import numpy as np

    from findial.training.features import bio_viterbi

    o, ba, ia, bd, id_ = (TAGS.index(t) for t in ("O", "B-AMOUNT", "I-AMOUNT", "B-DATE", "I-DATE"))
    # "七" leans B-AMOUNT, "天" leans I-DATE: argmax gives a stray I-DATE after an AMOUNT
    probs = np.full((4, len(TAGS)), 0.01)
    probs[0, o] = 0.96  # a special token position, not a word
    probs[1, ba], probs[1, bd] = 0.6, 0.35
    probs[2, id_], probs[2, ia] = 0.5, 0.45
    probs[3, o] = 0.96
    keep = [False, True, True, True]
    ids = bio_viterbi(np.log(probs), TAGS, keep)
    assert ids == [o, ba, ia, o]  # one AMOUNT over both words: .6 x .45 beats B-D I-D's .35 x .5
    for prev, cur in zip(ids, ids[1:]):
        assert not TAGS[cur].startswith("I-") or TAGS[prev][2:] == TAGS[cur][2:]
    # a sentence never starts inside a span; a valid B-DATE I-DATE stays as the argmax has it
    probs2 = np.full((3, len(TAGS)), 0.01)
    probs2[0, id_], probs2[1, bd], probs2[2, id_] = 0.9, 0.9, 0.9
    assert bio_viterbi(np.log(probs2), TAGS, [True, True, True]) == [o, bd, id_]
    assert bio_viterbi(np.log(probs2), TAGS, [False, False, False]) == [o, o, o]


def test_chinese_particles_glued_to_a_value_are_trimmed_off_the_span():
    tags = ["O", "B-AMOUNT", "I-AMOUNT", "B-DURATION", "I-DURATION"]
    text = "等了一整天，8000元的那笔"
    # pieces as a sentencepiece vocabulary may cut them: 等 | 了一 | 整天 | ， | 8000 | 元的 | 那笔
    offsets = [(0, 1), (1, 3), (3, 5), (5, 6), (6, 10), (10, 12), (12, 14)]
    ids = [0, 3, 4, 0, 1, 2, 0]
    spans = decode_spans(text, offsets, ids, tags)
    assert [(text[s["start"] : s["end"]], s["label"]) for s in spans] == [("一整天", "DURATION"), ("8000元", "AMOUNT")]
    # a span that is a particle alone is kept (nothing else to keep)
    assert [(s["start"], s["end"]) for s in decode_spans("了", [(0, 1)], [1], tags)] == [(0, 1)]


def test_no_glossary_form_starts_or_ends_with_a_trimmed_particle():
    from findial.data.labelbook import Glossary
    from findial.training.features import LEADING_PARTICLES, TRAILING_PARTICLES

    forms = [f for t in Glossary.load().terms.values() for f in t.surface_forms if f]
    assert len(forms) > 300
    assert [f for f in forms if f[0] in LEADING_PARTICLES or f[-1] in TRAILING_PARTICLES] == []


def test_clause_punctuation_a_piece_glues_to_a_value_is_trimmed_off():
    text = "April 19, I believe"
    offsets = [(0, 0), (0, 5), (5, 9), (9, 11), (11, 19), (0, 0)]  # ▁April | ▁19, | ▁I | ▁believe
    spans = decode_spans(text, offsets, [0, 3, 4, 0, 0, 0], TAGS)
    assert [(text[s["start"] : s["end"]], s["label"]) for s in spans] == [("April 19", "DATE")]
    # a span of punctuation alone is no span; a full stop stays ("3 p.m.")
    assert decode_spans("，", [(0, 1)], [3], TAGS) == []
    assert [s["end"] for s in decode_spans("3 p.m.", [(0, 1), (1, 6)], [3, 4], TAGS)] == [6]


def test_two_values_of_one_label_never_stand_side_by_side_but_two_terms_may():
    import numpy as np

    from findial.training.features import bio_viterbi

    tags = ["O", "B-DATE", "I-DATE", "B-TERM", "I-TERM"]
    o, bd, id_, bt = 0, 1, 2, 3
    # "the end of the month": "end" leans B-DATE after a B-DATE "the"
    probs = np.full((4, len(tags)), 0.01)
    probs[0, bd], probs[0, o] = 0.8, 0.15
    probs[1, bd], probs[1, id_] = 0.6, 0.35
    probs[2, id_] = probs[3, id_] = 0.9
    keep = [True] * 4
    assert bio_viterbi(np.log(probs), tags, keep, {"DATE", "TERM"}) == [bd, bd, id_, id_]  # two DATEs
    assert bio_viterbi(np.log(probs), tags, keep, {"TERM"}) == [bd, id_, id_, id_]  # .8 x .35 beats .15 x .6
    probs[0, bd], probs[0, o] = 0.15, 0.8  # where "the" leans outside, the DATE starts at "end"
    assert bio_viterbi(np.log(probs), tags, keep, {"TERM"}) == [o, bd, id_, id_]
    # two terms side by side ("境外电汇" + "手续费") stay two when TERM may
    probs2 = np.full((2, len(tags)), 0.01)
    probs2[:, bt] = 0.9
    assert bio_viterbi(np.log(probs2), tags, [True, True], {"TERM"}) == [bt, bt]
    assert bio_viterbi(np.log(probs2), tags, [True, True]) != [bt, bt]


def test_the_bundled_annotation_has_what_decoding_assumes():
    """No value starts or ends with clause punctuation, and no two values of one non-terminology label
    stand side by side (nothing but whitespace between): what ``decode_spans`` and ``bio_viterbi`` rely on."""
    import json
    from pathlib import Path

    from findial.data.labelbook import LabelBook
    from findial.training.features import EDGE_PUNCTUATION

    terminology = LabelBook.load().terminology_labels
    edges, side_by_side, n = [], [], 0
    for split in ("train", "validation", "test"):
        for line in (Path(__file__).parents[1] / "data" / "corpus" / f"{split}.jsonl").open(encoding="utf-8"):
            for turn in json.loads(line)["turns"]:
                ents = sorted(turn.get("entities") or [], key=lambda e: e["start"])
                n += len(ents)
                text = turn["text"]
                edges += [e for e in ents if {text[e["start"]], text[e["end"] - 1]} & EDGE_PUNCTUATION]
                side_by_side += [
                    (a, b)
                    for a, b in zip(ents, ents[1:])
                    if a["label"] == b["label"]
                    and a["label"] not in terminology
                    and not text[a["end"] : b["start"]].strip()
                ]
    assert n > 10000
    assert edges == [] and side_by_side == []
