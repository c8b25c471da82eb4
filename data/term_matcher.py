"""Find the glossary's listed surface forms in running text (a gazetteer for PRODUCT / TERM).

The annotation guidelines make a listed form the mention ("when one surface form
contains another, the longest listed form is the mention"), so a form written
as listed is found here exactly, span and term id, whatever the NER model made
of it. Matching is on the ``fold``-ed text (case, full/half width, hyphens and
runs of spaces), with offsets mapped back to the original string; the longest
match wins, then the leftmost. A form that starts or ends with a Latin letter or
digit only matches at a word boundary ("etf" is not found in "netflix"); an
English plural ``s``/``es`` right after the form is part of the mention.

A single English word not written in capitals ("check", "funds", "wire",
"checking") is also an everyday word, so such a match is flagged ``common``:
``merge_terms`` takes it only where the NER model tagged a terminology span
over it. Chinese forms, phrases and acronyms ("ETF", "LPR") need no such support.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from findial.data.labelbook import Glossary, fold

_WORD = re.compile(r"[0-9a-z]")


@dataclass(frozen=True)
class TermMatch:
    start: int
    end: int
    label: str
    term_id: str
    common: bool = False

    def as_entity(self, text: str) -> dict:
        return {"start": self.start, "end": self.end, "label": self.label, "term_id": self.term_id,
                "text": text[self.start:self.end]}


def folded_view(text: str) -> tuple[str, list[int]]:
    """``fold(text)`` built character by character, and for each folded character its index in ``text``."""
    chars: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        piece = unicodedata.normalize("NFKC", ch).casefold().replace("-", " ")
        for c in piece:
            if c.isspace():
                if not chars or chars[-1] == " ":
                    continue
                c = " "
            chars.append(c)
            index.append(i)
    while chars and chars[-1] == " ":
        chars.pop()
        index.pop()
    return "".join(chars), index


class GlossaryMatcher:
    def __init__(self, glossary: Glossary):
        forms: dict[str, str] = {}
        for term in glossary.terms.values():
            for form in term.surface_forms:
                key = fold(form)
                if key:
                    forms.setdefault(key, term.id)
        self._forms = sorted(forms.items(), key=lambda kv: -len(kv[0]))  # longest first
        self._label = {t.id: t.label for t in glossary.terms.values()}

    def find(self, text: str) -> list[TermMatch]:
        view, index = folded_view(text)
        taken = [False] * len(view)
        found: list[tuple[int, int, str]] = []
        for key, term_id in self._forms:
            start = view.find(key)
            while start >= 0:
                end = start + len(key)
                if self._bounded(view, start, end) and not any(taken[start:end]):
                    end = self._plural_end(view, end, key)
                    for k in range(start, end):
                        taken[k] = True
                    found.append((start, end, term_id))
                start = view.find(key, start + 1)
        out = []
        for s, e, t in sorted(found):
            start, end = index[s], index[e - 1] + 1
            out.append(TermMatch(start, end, self._label[t], t, _common_word(text[start:end])))
        return out

    @staticmethod
    def _bounded(view: str, start: int, end: int) -> bool:
        if _WORD.match(view[start]) and start > 0 and _WORD.match(view[start - 1]):
            return False
        if _WORD.match(view[end - 1]) and end < len(view) and _WORD.match(view[end]):
            return _plural_suffix(view, end, view[start:end]) > 0
        return True

    @staticmethod
    def _plural_end(view: str, end: int, key: str) -> int:
        return end + _plural_suffix(view, end, key)


def _common_word(surface: str) -> bool:
    return surface.isascii() and surface.isalpha() and not surface.isupper()


def _plural_suffix(view: str, end: int, key: str) -> int:
    """Length of an English plural ending after ``key`` at ``end`` (0 when none)."""
    if not key[-1].isascii() or not key[-1].isalpha():
        return 0
    for suffix in ("es", "s"):
        stop = end + len(suffix)
        if view.startswith(suffix, end) and (stop == len(view) or not _WORD.match(view[stop])):
            return len(suffix)
    return 0


def _overlaps(a: dict, b) -> bool:
    return a["start"] < b.end and b.start < a["end"]


def merge_terms(text: str, model_entities: list[dict], matches: list[TermMatch], terminology_labels,
                mode: str = "glossary") -> list[dict]:
    """The model's entities with listed glossary forms put in for terminology mentions.

    mode ``glossary``: every listed form found is a mention (a ``common`` one only where the model tagged a
    terminology span over it); a model span overlapping it gives way.
    mode ``confirmed``: a listed form counts only where the model tagged a terminology span over it.
    mode ``model``: the model's spans alone (linking is the caller's).
    Model terminology spans that overlap no accepted form are kept for the linker (typos, variants).
    """
    if mode == "model":
        return [dict(e) for e in model_entities]
    if mode not in ("glossary", "confirmed"):
        raise ValueError(f"term matching mode {mode!r}: expected glossary, confirmed or model")
    accepted = []
    for m in matches:
        over = [e for e in model_entities if _overlaps(e, m)]
        if (mode == "confirmed" or m.common) and not any(e["label"] in terminology_labels for e in over):
            continue
        conf = min((e.get("confidence", 1.0) for e in over), default=1.0)
        accepted.append({**m.as_entity(text), "confidence": conf, "source": "glossary"})
        accepted[-1].pop("text")
    kept = [dict(e) for e in model_entities if not any(_overlaps(e, TermMatch(a["start"], a["end"], "", ""))
                                                       for a in accepted)]
    return sorted(kept + accepted, key=lambda e: (e["start"], e["end"]))
