"""Rule-based dialogue state tracking, as the annotation guidelines define it.

The state after a user turn is a flat mapping slot -> value accumulated over the
dialogue (``data/spec/corpus-format.md``, "Annotation guidelines"):

- a slot is filled from the entity label the label book names for it
  (``LabelBook.state_slots``: slot -> label);
- slots filled from a terminology label (``terminology: true``, e.g. PRODUCT,
  TERM) take the mention's ``term_id``; a mention without one (an unknown
  surface form) leaves the slot unchanged; other slots take the surface text;
- a slot keeps its value until a later user turn mentions a new value; there is
  no reset on a topic change, and a correction overwrites (only the standing
  value is tagged, so "the latest mention wins" covers it);
- when one turn mentions several values for the same slot, the last mention in
  text order wins;
- labels that feed no slot (PII, RATE, ...) are ignored.

A NER model with a stand head marks each predicted mention with ``stands``, its
probability that the mention becomes the slot's value (a fallback, "12期吧，
手续费高的话就6期", or a background value does not); a mention whose ``stands``
is below the tracker's ``stand_threshold`` leaves its slots alone. Mentions
without ``stands`` always stand.

Nothing here names a label: the tracker is driven entirely by the label book.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from findial.data.labelbook import LabelBook


class DialogueStateTracker:
    def __init__(self, labelbook: LabelBook, stand_threshold: float = 0.5):
        self.labelbook = labelbook
        self.stand_threshold = stand_threshold
        # label -> slots it fills (a label book may feed several slots from one label)
        self._slots_of: dict[str, list[str]] = {}
        for slot, label in labelbook.state_slots.items():
            self._slots_of.setdefault(label, []).append(slot)
        self._term_labels = frozenset(labelbook.terminology_labels)

    def slots_of(self, label: str) -> list[str]:
        """The slots a mention of ``label`` fills (none for PII, RATE, ...)."""
        return self._slots_of.get(label, [])

    def value_of(self, ent: Mapping, text: str) -> str | None:
        """The slot value a mention gives: its ``term_id`` for a terminology label (None for an unknown
        surface form: never guess a term), else its surface text."""
        return ent.get("term_id") if ent["label"] in self._term_labels else text[ent["start"] : ent["end"]]

    def update(self, state: Mapping[str, str], entities: Iterable[Mapping], text: str) -> dict:
        """The state after one user turn; ``state`` is left untouched."""
        new = dict(state)
        for ent in sorted(entities, key=lambda e: (e["start"], e["end"])):
            slots = self.slots_of(ent["label"])
            value = self.value_of(ent, text)
            if not slots or value is None or ent.get("stands", 1.0) < self.stand_threshold:
                continue
            for slot in slots:
                new[slot] = value
        return new

    def track(self, user_turns: Iterable[tuple[str, Iterable[Mapping]]]) -> list[dict]:
        """The state after each user turn of one dialogue, from an empty state."""
        states: list[dict] = []
        state: dict = {}
        for text, entities in user_turns:
            state = self.update(state, entities, text)
            states.append(state)
        return states
