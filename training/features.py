"""Turn records (see ``findial.data.corpus.turn_records``) into model inputs, and back.

Intent: the current turn is the first sequence, the preceding turns (newest
first) the second, so truncation drops the oldest context. NER: the current
turn alone, with character spans aligned to tokens through offset mappings;
decoding reads a word's tag from its first token (``june`` = ``▁ju`` + ``ne``
is one DATE word, never a DATE ``ju`` beside a DATE ``ne``). A word is a run of
letters and digits, one CJK character or one other symbol: the annotation
guidelines' span boundaries always fall between words. The word tags are read as
one sequence under the BIO rules (``bio_viterbi``). A NER model with a stand head
also learns, per gold mention of a slot-filling label, whether it stands: becomes the
slot's value after the turn (``stand_labels``).
"""

from __future__ import annotations

import functools
import json
import re

IGNORE = -100
_CJK_CHARS = "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f"
_CJK = re.compile(f"[{_CJK_CHARS}]")


def context_text(row: dict, previous_intent: bool = False) -> str | None:
    """The preceding turns, newest first; with ``previous_intent`` the last user turn's intent leads
    ("intent: card lost report | agent: ... | user: ...")."""
    ctx = list(reversed(row.get("context") or []))
    if previous_intent and row.get("previous_intent"):
        ctx.insert(0, "intent: " + row["previous_intent"].replace("_", " "))
    return " | ".join(ctx) if ctx else None


def encode_intent(
    tokenizer, row: dict, max_length: int, intents: list[str], emotions: list[str], previous_intent: bool = False
) -> dict:
    ctx = context_text(row, previous_intent)
    enc = tokenizer(row["text"], ctx, truncation="only_second" if ctx else True, max_length=max_length)
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if row.get("intent") is not None:
        out["intent_label"] = intents.index(row["intent"])
    if emotions:
        out["emotion_label"] = emotions.index(row["emotion"]) if row.get("emotion") else IGNORE
    return out


def encode_ner(
    tokenizer, row: dict, max_length: int, tags: list[str], state_slots: dict[str, str] | None = None
) -> dict:
    """Token ids, offsets and, for a row with gold entities, ``tag_labels``; with ``state_slots`` (the label
    book's slot -> label, given when the model has a stand head) also per-token ``stand_labels``."""
    enc = tokenizer(row["text"], truncation=True, max_length=max_length, return_offsets_mapping=True)
    out = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "offsets": _drop_prefix_pieces([tuple(o) for o in enc["offset_mapping"]]),
    }
    if row.get("entities") is not None:
        out["tag_labels"] = align_labels(out["offsets"], row["entities"], tags)
        if state_slots is not None:
            out["stand_labels"] = stand_labels(out["offsets"], row, state_slots)
    return out


def _inside_word(text: str, i: int) -> bool:
    """Whether character position ``i`` cuts a word (it lies between two non-CJK letters/digits)."""
    if i <= 0 or i >= len(text):
        return False
    a, b = text[i - 1], text[i]
    return a.isalnum() and b.isalnum() and not _CJK.match(a) and not _CJK.match(b)


def word_units(text: str, offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token offsets -> the offsets NER tags: a token that starts a word gets the span up to the end of
    the last token of that word (leading spaces dropped); a token inside a word, and special tokens,
    get an empty span (untagged, skipped when decoding)."""
    out: list[tuple[int, int]] = []
    lead = None
    for start, end in offsets:
        while start < end and text[start].isspace():
            start += 1
        if start == end:
            out.append((start, start))
        elif lead is not None and _inside_word(text, start) and out[lead][1] == start:
            out[lead] = (out[lead][0], end)
            out.append((start, start))
        else:
            lead = len(out)
            out.append((start, end))
    return out


def _drop_prefix_pieces(offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Empty the offsets of a piece that overlaps the next one (a lone Metaspace "▁" before "房")."""
    out = list(offsets)
    for k in range(len(out) - 1):
        (s, e), (s2, e2) = out[k], out[k + 1]
        if s < e and s2 < e2 and s2 < e:
            out[k] = (s, s)
    return out


def _token_entities(offsets, entities: list[dict]) -> list[dict | None]:
    """Per token, the entity it is tagged with: the first one its first character falls in (or that starts
    inside it); None for a token outside every entity and for special or empty tokens."""
    return [
        None
        if start == end
        else next((e for e in entities if e["start"] <= start < e["end"] or start < e["start"] < end), None)
        for start, end in offsets
    ]


def align_labels(offsets, entities: list[dict], tags: list[str]) -> list[int]:
    """BIO tag ids per token: a token takes the entity its first character falls in."""
    index = {t: i for i, t in enumerate(tags)}
    labels = []
    for (start, end), e in zip(offsets, _token_entities(offsets, entities)):
        if start == end:  # special or empty token
            labels.append(IGNORE)
        else:
            labels.append(index["O" if e is None else ("B-" if start <= e["start"] else "I-") + e["label"]])
    return labels


def stand_labels(offsets, row: dict, state_slots: dict[str, str]) -> list[float]:
    """Per token, whether the gold mention it is tagged with (``align_labels``) stands: 1.0 when the turn's
    gold state (``row["state"]``, the state after the turn, a dict or its JSON string) holds the mention's
    value (its ``term_id`` when it has one, else its text) in a slot its label fills, 0.0 when not. IGNORE
    on tokens outside a mention of a slot-filling label, and everywhere when the row has no (or an empty)
    state: an unannotated state says nothing about which mention stands."""
    state: dict = (json.loads(row["state"]) if isinstance(row.get("state"), str) else row.get("state")) or {}
    slots_of: dict[str, list[str]] = {}
    for slot, label in state_slots.items():
        slots_of.setdefault(label, []).append(slot)

    def stands(e: dict) -> float:
        value = e.get("term_id") or row["text"][e["start"] : e["end"]]
        return float(any(state.get(slot) == value for slot in slots_of[e["label"]]))

    return [
        float(IGNORE) if not state or e is None or e["label"] not in slots_of else stands(e)
        for e in _token_entities(offsets, row["entities"])
    ]


@functools.lru_cache(maxsize=8)
def _bio_transitions(tags: tuple[str, ...], side_by_side: frozenset = frozenset()):
    """Log-space scores: where a sequence may start (not on ``I-``), and [previous, next] transitions."""
    import numpy as np

    inside = [t[2:] if t.startswith("I-") else None for t in tags]
    begin = [t[2:] if t.startswith("B-") else None for t in tags]
    label = [t[2:] if t != "O" else None for t in tags]
    start = np.where([x is None for x in inside], 0.0, -np.inf)
    allowed = np.array(
        [
            [
                (inside[j] is None or inside[j] == label[i])
                and (begin[j] is None or begin[j] != label[i] or begin[j] in side_by_side)
                for j in range(len(tags))
            ]
            for i in range(len(tags))
        ]
    )
    return start, np.where(allowed, 0.0, -np.inf)


def bio_viterbi(logprobs, tags: list[str], keep: list[bool], side_by_side=frozenset()) -> list[int]:
    """The most probable tag per position under BIO rules (an ``I-X`` only after ``B-X`` or ``I-X``),
    over the positions in ``keep`` (the tagged words); the others get ``O``. ``logprobs``: [n, tags].
    A ``B-X`` never directly follows an ``X`` word either, unless X is in ``side_by_side``: the
    annotation has no two values of one label next to each other (the bundled corpus has none; tests
    check it), so "the" + "end of the month" is decided as one DATE or one word outside it, never two
    DATEs. Terminology labels are the exception ("境外电汇" + "手续费" are two terms)."""
    import numpy as np

    lp = np.asarray(logprobs, dtype=np.float64)
    start, penalty = _bio_transitions(tuple(tags), frozenset(side_by_side))
    rows = [k for k, kept in enumerate(keep) if kept]
    out = [tags.index("O")] * len(keep)
    if not rows:
        return out
    score = lp[rows[0]] + start
    back = []
    for k in rows[1:]:
        total = score[:, None] + penalty
        back.append(total.argmax(0))
        score = total.max(0) + lp[k]
    best = int(score.argmax())
    for k, ptr in zip(reversed(rows), reversed([None] + back)):
        out[k] = best
        if ptr is not None:
            best = int(ptr[best])
    return out


# Chinese particles that a multi-character sub-word piece can glue to a value ("了一整天", "是两万",
# "8000元的", "五千起"). No value or glossary form starts or ends with one (the annotation guidelines
# tag the value only; tests check the glossary), so decoding trims them off a span's ends.
LEADING_PARTICLES = frozenset("了的是把给")
TRAILING_PARTICLES = frozenset("的了起吗吧呢啊呀嘛")
# Clause punctuation a piece can glue to a value (" 19," in "April 19, I believe"); no value starts or
# ends with one (tests check the bundled corpus). A full stop is not among them ("3 p.m.").
EDGE_PUNCTUATION = frozenset(",;:!?，。；：！？、")


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """A span without the whitespace, clause punctuation and particles at its ends (a particle alone is
    kept; punctuation alone leaves an empty span, which is dropped)."""
    while True:
        before = (start, end)
        while start < end and (text[start].isspace() or text[start] in EDGE_PUNCTUATION):
            start += 1
        while end > start and (text[end - 1].isspace() or text[end - 1] in EDGE_PUNCTUATION):
            end -= 1
        while end - start > 1 and text[start] in LEADING_PARTICLES:
            start += 1
        while end - start > 1 and text[end - 1] in TRAILING_PARTICLES:
            end -= 1
        if (start, end) == before:
            return start, end


def decode_spans(text: str, offsets, tag_ids: list[int], tags: list[str], scores=None, units=None) -> list[dict]:
    """Merge B/I words into character spans; a stray I- starts a new span. A word's tag is its first
    token's (``word_units``, or ``units`` when the caller has them already), so a span never starts or
    ends inside a word."""
    spans: list[dict] = []
    cur = None
    for k, ((start, end), tid) in enumerate(zip(word_units(text, offsets) if units is None else units, tag_ids)):
        if start == end:
            continue
        tag = tags[tid]
        prefix, label = (tag.split("-", 1) + [None])[:2] if tag != "O" else ("O", None)
        if cur is not None and prefix == "I" and label == cur["label"] and start <= cur["end"] + 1:
            cur["end"] = end
            cur["scores"].append(1.0 if scores is None else float(scores[k]))
            continue
        if cur is not None:
            spans.append(cur)
            cur = None
        if label is not None:
            cur = {"start": start, "end": end, "label": label, "scores": [1.0 if scores is None else float(scores[k])]}
    if cur is not None:
        spans.append(cur)
    result = []
    for s in spans:
        start, end = _trim(text, s["start"], s["end"])
        if start < end:
            result.append({"start": start, "end": end, "label": s["label"], "confidence": round(min(s["scores"]), 4)})
    return result
