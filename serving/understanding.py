"""Understanding one new user turn per item, in batches, with an ``NLUPipeline``.

``predict_turns`` gives the same intent, emotion, entities and state for a
turn as ``NLUPipeline.predict_dialogues`` gives on the whole dialogue (a test
checks it), but runs the models on the new turn only: the session supplies the
preceding turns (the intent model's context window) and the state so far (the
tracker accumulates on it).

Texts reaching here are already masked (``mask_text``). Names are never guessed
by the rules, so after the models run, spans the NER model labels as personal
data are masked too (``mask_predicted_pii``) before anything is stored or logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from findial.data.corpus import turn_records
from findial.data.pii import PII_LABELS, default_masker, remap_span

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_PLACEHOLDER = re.compile(r"\[(?:%s)\]" % "|".join(sorted(PII_LABELS)))


@dataclass(frozen=True)
class TurnInput:
    text: str  # the user's turn, masked
    lang: str = "en"
    history: tuple[tuple[str, str], ...] = ()  # (speaker, masked text) of the preceding turns
    state: dict = field(default_factory=dict)  # the dialogue state before this turn
    previous_intents: tuple[str, ...] = ()  # predicted for earlier user turns (Session.intents)


def detect_lang(text: str) -> str:
    """zh if the text holds any CJK ideograph, else en (the label book's two languages)."""
    return "zh" if _CJK.search(text) else "en"


def mask_text(text: str) -> tuple[str, list[str]]:
    """The text with detected personal data masked, and the labels masked (in order)."""
    masked, edits = default_masker().mask_with_spans(text)
    return masked, [e.label for e in edits]


def understand_batch(pipeline, items: list[TurnInput]) -> list[dict]:
    """One result per item: text (masked, see ``mask_predicted_pii``), intent, confidence, emotion,
    emotion_confidence, entities (offsets into that text), state, unknown_terms."""
    out = []
    for it, result in zip(items, predict_turns(pipeline, items)):
        text, result = mask_predicted_pii(it.text, result, pipeline.labelbook.pii_labels)
        out.append({"text": text, **result})
    return out


def predict_turns(pipeline, items: list[TurnInput]) -> list[dict]:
    """The models' output for each item's turn, offsets into ``item.text`` (what predict_dialogues gives)."""
    if not items:
        return []
    window = pipeline.context_turns
    rows = []
    for i, it in enumerate(items):
        turns = [{"speaker": s, "text": t} for s, t in (it.history[-window:] if window else ())]
        turns.append({"speaker": "user", "text": it.text})
        row = turn_records([{"id": str(i), "lang": it.lang, "turns": turns}], window)[-1]
        rows.append({**row, "previous_intent": pipeline.intent.dialogue_task(it.previous_intents)})
    intents = pipeline.intent.predict(rows)
    entities = pipeline.ner.predict([it.text for it in items])
    out = []
    for it, intent, ents in zip(items, intents, entities):
        ents, state, unknown = pipeline.resolve_turn(it.text, ents, it.state, intent["intent"])
        out.append({**intent, "entities": ents, "state": state, "unknown_terms": unknown})
    return out


def _outside_placeholders(start: int, end: int, text: str) -> tuple[int, int] | None:
    """The longest part of [start, end) that overlaps no placeholder already in the text ("[PHONE]")."""
    free, pos = [], start
    for m in _PLACEHOLDER.finditer(text, max(0, start - 16), min(len(text), end + 16)):
        if m.end() <= start or m.start() >= end:
            continue
        free.append((pos, max(pos, m.start())))
        pos = max(pos, m.end())
    free.append((pos, end))
    best = max(free, key=lambda s: s[1] - s[0])
    return best if best[1] > best[0] else None


def mask_predicted_pii(text: str, result: dict, pii_labels) -> tuple[str, dict]:
    """Mask spans the model labelled as personal data; other entity spans move to the masked text.

    A predicted span that overlaps a placeholder of the rules is cut back to the part outside it,
    so placeholders stay whole (``[ID_NUMBER]`` never becomes ``[ID_NUMBER[EMAIL]``).
    """
    tagged = []
    for e in result["entities"]:
        if e["label"] in pii_labels:
            span = _outside_placeholders(e["start"], e["end"], text)
            if span:
                tagged.append({**e, "start": span[0], "end": span[1]})
    masked, edits = default_masker().mask_with_spans(text, tagged)
    if not edits:
        return text, result
    entities = []
    for e in tagged + [e for e in result["entities"] if e["label"] not in pii_labels]:
        if e["label"] in pii_labels:
            hit = next((ed for ed in edits if ed.old_start <= e["start"] and e["end"] <= ed.old_end), None)
            span = (hit.new_start, hit.new_end) if hit else None
        else:
            span = remap_span(e["start"], e["end"], edits)
        if span:
            entities.append({**e, "start": span[0], "end": span[1]})
    entities.sort(key=lambda e: (e["start"], e["end"]))
    # predicted entities never overlap, so unknown terms and state values hold no tagged span
    return masked, {**result, "entities": entities}
