"""The authoring format of the hand-written corpus, and its conversion to the corpus format.

Writers write one dialogue per line, with entities given by their surface text instead of character
offsets, and personal data as placeholders::

    {"id": "a-001", "lang": "zh", "branch": "shanghai", "turns": [
      {"user": "卡号<CARD>，上周五在京东被刷了六千八", "intent": "bill_dispute", "emotion": "anxious",
       "entities": [["<CARD>", "CARD_NUMBER"], ["上周五", "DATE"], ["京东", "MERCHANT"], ["六千八", "AMOUNT"]],
       "phenomena": ["multi_fact"]},
      {"agent": "..."}]}

- ``entities``: ``[surface, label]`` or ``[surface, label, term_id]`` in text order; each surface is looked
  for left to right after the previous one, which gives its ``[start, end)``.
- placeholders (``PLACEHOLDERS``) become valid synthetic surrogates (Luhn-valid card numbers, checksum-valid
  ID numbers, example.com e-mails), drawn from a generator seeded by the dialogue id;
- ``state`` is the guidelines' state (``DialogueStateTracker``: each slot keeps the latest tagged value) unless
  the turn writes it; a written state may only keep a slot's value or take one of the turn's own mentions
  for it, and never drops a slot (no reset);
- ``phenomena`` (``PHENOMENA``) tags what the turn does; the evaluation report breaks errors down by them.

Every problem is reported as ``file:line: field: message``; a file with a problem yields nothing.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import yaml

from findial.data.corpus import CorpusError, Problem, json_lines
from findial.data.generator.fillers import Fillers
from findial.data.labelbook import Glossary, LabelBook
from findial.data.state import DialogueStateTracker
from findial.data.term_matcher import GlossaryMatcher

PHENOMENA = (
    "multi_fact",
    "correction",
    "change_of_mind",
    "ellipsis",
    "reference",
    "topic_change",
    "supplies_value",
    "complaint_in_request",
    "implicit_emotion",
    "noise",
)
PLACEHOLDERS = ("CARD", "ID", "PASSPORT", "PHONE", "PHONE_INTL", "EMAIL")
_PLACEHOLDER = re.compile(r"<(" + "|".join(sorted(PLACEHOLDERS, key=len, reverse=True)) + r")>")
_LEXICON = Path(__file__).resolve().parent.parent / "generator" / "lexicon.yaml"


class Surrogates:
    """Valid synthetic personal data for the placeholders of one dialogue (seeded by its id)."""

    def __init__(self, dialogue_id: str, lang: str, glossary: Glossary, lexicon: dict):
        seed = int(hashlib.sha256(dialogue_id.encode()).hexdigest()[:12], 16)
        self.lang = lang
        self.fillers = Fillers(lexicon, glossary, random.Random(seed))

    def draw(self, kind: str) -> str:
        f = self.fillers
        return {
            "CARD": f.card,
            "ID": lambda: f.idnum("zh", None),
            "PASSPORT": lambda: f.idnum(self.lang, "passport"),
            "PHONE": lambda: f.phone("zh", None),
            "PHONE_INTL": lambda: f.phone(self.lang, "intl"),
            "EMAIL": f.email,
        }[kind]()


class AuthoringConverter:
    def __init__(self, labelbook: LabelBook, glossary: Glossary):
        self.lb, self.gl = labelbook, glossary
        self.tracker = DialogueStateTracker(labelbook)
        self.matcher = GlossaryMatcher(glossary)
        self.lexicon = yaml.safe_load(_LEXICON.read_text(encoding="utf-8"))

    # ------------------------------------------------------------------ one file
    def convert_file(self, path: str | Path) -> tuple[list[dict], list[Problem], list[Problem]]:
        """(dialogues, errors, warnings); dialogues is empty when there is any error."""
        path = str(path)
        out, errors, warnings = [], [], []
        seen: dict[str, int] = {}
        for lineno, record, problem in json_lines(path):

            def err(field, msg, _l=lineno):
                errors.append(Problem(path, _l, field, msg))

            def warn(field, msg, _l=lineno):
                warnings.append(Problem(path, _l, field, msg))

            if problem:
                err("(line)", problem)
                continue
            before = len(errors)
            dialogue = self.convert_dialogue(record, err, warn)
            did = record.get("id") if isinstance(record, dict) else None
            if isinstance(did, str):
                if did in seen:
                    err("id", f"duplicate id {did!r} (first on line {seen[did]})")
                seen.setdefault(did, lineno)
            if dialogue is not None and len(errors) == before:
                out.append(dialogue)
        return ([] if errors else out), errors, warnings

    # ------------------------------------------------------------------ one dialogue
    def convert_dialogue(self, d, err, warn) -> dict | None:
        if not isinstance(d, dict):
            err("(record)", "expected a JSON object")
            return None
        for key in ("id", "lang", "turns"):
            if key not in d:
                err(key, "required")
        if not isinstance(d.get("id"), str) or not isinstance(d.get("turns"), list) or not d["turns"]:
            if isinstance(d.get("turns"), list) and not d["turns"]:
                err("turns", "required non-empty list")
            return None
        if d.get("lang") not in self.lb.languages:
            err("lang", f"{d.get('lang')!r} is not one of {list(self.lb.languages)}")
        sur = Surrogates(d["id"], d.get("lang", "zh"), self.gl, self.lexicon)
        turns: list[dict] = []
        state: dict = {}
        for i, t in enumerate(d["turns"]):
            where = f"turns[{i}]"
            if not isinstance(t, dict) or (("user" in t) == ("agent" in t)):
                err(where, "a turn is an object with exactly one of 'user' or 'agent'")
                continue
            if "agent" in t:
                extra = set(t) - {"agent"}
                if extra:
                    err(where, f"an agent turn has only 'agent' (found {sorted(extra)})")
                text = self._fill(t["agent"], sur, f"{where}.agent", err)
                if text is not None:
                    turns.append({"speaker": "agent", "text": text})
                continue
            turn = self._user_turn(t, where, sur, state, err, warn)
            if turn is not None:
                state = turn["state"]
                turns.append(turn)
        branch = {"branch": d["branch"]} if "branch" in d else {}
        return {"id": d["id"], "lang": d.get("lang"), **branch, "turns": turns}

    def _fill(self, text, sur: Surrogates, field: str, err) -> str | None:
        if not isinstance(text, str) or not text.strip():
            err(field, "required non-empty string")
            return None
        return _PLACEHOLDER.sub(lambda m: sur.draw(m.group(1)), text)

    def _user_turn(self, t: dict, where: str, sur: Surrogates, state: dict, err, warn) -> dict | None:
        extra = set(t) - {"user", "intent", "emotion", "entities", "state", "phenomena"}
        if extra:
            err(where, f"unknown field(s) {sorted(extra)}")
        raw = t["user"]
        if not isinstance(raw, str) or not raw.strip():
            err(f"{where}.user", "required non-empty string")
            return None
        # placeholders -> surrogates, remembering each one's value in order
        values: list[tuple[str, str]] = []

        def sub(m):
            v = sur.draw(m.group(1))
            values.append((m.group(1), v))
            return v

        text = _PLACEHOLDER.sub(sub, raw)
        intent, emotion = t.get("intent"), t.get("emotion")
        if intent not in self.lb.intents:
            err(f"{where}.intent", f"unknown intent {intent!r}")
        if emotion is not None and emotion not in self.lb.emotions:
            err(f"{where}.emotion", f"unknown emotion {emotion!r} (one of {list(self.lb.emotions)})")
        entities = self._entities(t.get("entities"), text, values, f"{where}.entities", err)
        if entities is None:
            return None
        self._warn_untagged_terms(text, entities, where, warn)
        if "state" in t:
            new_state = self._written_state(t["state"], state, entities, text, f"{where}.state", err)
            if new_state is None:
                return None
        else:
            new_state = self.tracker.update(state, entities, text)
        phenomena = t.get("phenomena") or []
        if not isinstance(phenomena, list) or any(p not in PHENOMENA for p in phenomena):
            err(f"{where}.phenomena", f"{phenomena!r}: a list of {list(PHENOMENA)}")
            phenomena = []
        turn = {"speaker": "user", "text": text, "intent": intent}
        if emotion is not None:
            turn["emotion"] = emotion
        turn.update(entities=entities, state=new_state)
        if phenomena:
            turn["phenomena"] = sorted(set(phenomena), key=PHENOMENA.index)
        return turn

    def _entities(self, ents, text: str, values, field: str, err) -> list[dict] | None:
        if ents is None:
            err(field, "required (may be [])")
            return None
        if not isinstance(ents, list):
            err(field, "must be a list of [surface, label(, term_id)]")
            return None
        used = {k: 0 for k in PLACEHOLDERS}
        out, cursor, ok = [], 0, True
        for j, e in enumerate(ents):
            f = f"{field}[{j}]"
            if not (isinstance(e, list) and len(e) in (2, 3) and all(isinstance(x, str) for x in e)):
                err(f, f"{e!r}: expected [surface, label] or [surface, label, term_id]")
                ok = False
                continue
            surface, label = e[0], e[1]
            term_id = e[2] if len(e) == 3 else None

            def fill(m):
                kind = m.group(1)
                taken = [v for k, v in values if k == kind]
                if used[kind] >= len(taken):
                    return m.group(0)
                used[kind] += 1
                return taken[used[kind] - 1]

            surface = _PLACEHOLDER.sub(fill, surface)
            if not surface.strip():
                err(f, "empty surface")
                ok = False
                continue
            start = text.find(surface, cursor)
            if start < 0:
                again = text.find(surface)
                hint = (
                    f" (it occurs at {again}, before the previous entity: list entities in text order)"
                    if again >= 0
                    else ""
                )
                err(f, f"{surface!r} not found in the text after position {cursor}{hint}")
                ok = False
                continue
            end = start + len(surface)
            cursor = end
            if label not in self.lb.entities:
                err(f"{f}.label", f"unknown entity label {label!r}")
                ok = False
                continue
            ent = {"start": start, "end": end, "label": label}
            if label in self.lb.terminology_labels:
                if term_id is None:
                    err(f"{f}.term_id", f"required on {label} mentions")
                    ok = False
                elif term_id not in self.gl.terms:
                    err(f"{f}.term_id", f"unknown glossary term {term_id!r}")
                    ok = False
                elif self.gl.label_of(term_id) != label:
                    err(f"{f}.term_id", f"{term_id!r} is a {self.gl.label_of(term_id)}, not a {label}")
                    ok = False
                else:
                    listed = self.gl.lookup(surface)
                    if listed is not None and listed != term_id:
                        err(f"{f}.term_id", f"{surface!r} is a listed form of {listed!r}, not {term_id!r}")
                        ok = False
                ent["term_id"] = term_id
            elif term_id is not None:
                err(f"{f}.term_id", f"only {sorted(self.lb.terminology_labels)} mentions carry a term_id")
                ok = False
            out.append(ent)
        for k in PLACEHOLDERS:
            n = sum(1 for kind, _ in values if kind == k)
            if used[k] < n:
                err(field, f"<{k}> occurs {n} time(s) in the text but is tagged {used[k]} time(s)")
                ok = False
        return out if ok else None

    def _warn_untagged_terms(self, text: str, entities: list[dict], where: str, warn) -> None:
        spans = [(e["start"], e["end"]) for e in entities]
        for m in self.matcher.find(text):
            if m.common or any(s < m.end and m.start < e for s, e in spans):
                continue
            warn(
                f"{where}.entities",
                f"glossary form {text[m.start : m.end]!r} ({m.term_id}, {m.label}) is not "
                "tagged: tag it unless it is not a mention (a verb, part of another word)",
            )

    def _written_state(self, written, before: dict, entities: list[dict], text: str, field: str, err) -> dict | None:
        if not isinstance(written, dict):
            err(field, "must be an object slot -> value")
            return None
        mentioned: dict[str, set] = {}
        for e in entities:
            for slot in self.tracker.slots_of(e["label"]):
                mentioned.setdefault(slot, set()).add(self.tracker.value_of(e, text))
        ok = True
        for slot in before:
            if slot not in written:
                err(f"{field}.{slot}", f"dropped (was {before[slot]!r}): a slot keeps its value, no reset")
                ok = False
        for slot, value in written.items():
            if slot not in self.lb.state_slots:
                err(f"{field}.{slot}", f"unknown state slot {slot!r}")
                ok = False
            elif value != before.get(slot) and value not in mentioned.get(slot, ()):
                err(
                    f"{field}.{slot}",
                    f"{value!r} is neither the slot's earlier value {before.get(slot)!r} nor a "
                    f"value this turn tags for it {sorted(mentioned.get(slot, ()))}",
                )
                ok = False
        return dict(written) if ok else None


def convert_paths(paths, labelbook: LabelBook, glossary: Glossary):
    """Convert authoring files (or folders of ``*.jsonl``); (dialogues, errors, warnings)."""
    conv = AuthoringConverter(labelbook, glossary)
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    dialogues, errors, warnings = [], [], []
    first: dict[str, Path] = {}
    for f in files:
        d, e, w = conv.convert_file(f)
        dialogues += d
        errors += e
        warnings += w
        for dialogue in d:
            if dialogue["id"] in first:
                errors.append(
                    Problem(str(f), 0, "id", f"duplicate id {dialogue['id']!r} (also in {first[dialogue['id']]})")
                )
            first.setdefault(dialogue["id"], f)
    return dialogues, errors, warnings


def check_or_raise(paths, labelbook: LabelBook, glossary: Glossary) -> list[dict]:
    dialogues, errors, _ = convert_paths(paths, labelbook, glossary)
    if errors:
        raise CorpusError(errors)
    return dialogues
