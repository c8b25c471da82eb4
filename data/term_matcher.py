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
over it. Chinese forms, phrases and acronyms ("ETF", "LPR") need no such support,
nor do the common words a training split always tags (``settled_forms``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from findial.data.labelbook import Glossary

_WORD = re.compile(r"[0-9a-z]")


@dataclass(frozen=True)
class TermMatch:
    start: int
    end: int
    label: str
    term_id: str
    common: bool = False


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
    def __init__(self, glossary: Glossary, settled=frozenset()):
        """``settled``: folded common words (see ``settled_forms``) that are mentions without the model."""
        self._glossary = glossary
        self._settled = frozenset(settled)
        # the glossary's own folded index; longest form first, ties in glossary order
        self._forms = sorted(((k, v) for k, v in glossary.alias_index.items() if k), key=lambda kv: -len(kv[0]))

    def find(self, text: str) -> list[TermMatch]:
        view, index = folded_view(text)
        taken = [False] * len(view)
        found: list[tuple[int, int, str]] = []
        for key, term_id in self._forms:
            start = view.find(key)
            while start >= 0:
                end = _match_end(view, start, start + len(key))
                if end is not None and not any(taken[start:end]):
                    taken[start:end] = [True] * (end - start)
                    found.append((start, end, term_id))
                start = view.find(key, start + 1)
        out = []
        for s, e, t in sorted(found):
            start, end = index[s], index[e - 1] + 1
            common = _common_word(text[start:end]) and view[s:e] not in self._settled
            out.append(TermMatch(start, end, self._glossary.label_of(t), t, common))
        return out


def settled_forms(dialogues, matcher: GlossaryMatcher, min_count: int = 5) -> list[str]:
    """The common words (``TermMatch.common``) the annotation tags as a mention every time: found at least
    ``min_count`` times in the user turns of ``dialogues`` (a training split), each time a gold mention
    with the same span and term id ("password", "mortgage"; never "check" or "funds"). Folded, sorted.
    Stored with a NER model, they let ``merge_terms`` take such a word where the model missed it."""
    seen: dict[str, int] = {}
    broken: set[str] = set()
    for dialogue in dialogues:
        for turn in dialogue["turns"]:
            if turn.get("speaker") != "user":
                continue
            gold = {(e["start"], e["end"], e.get("term_id")) for e in turn.get("entities") or []}
            for m in matcher.find(turn["text"]):
                if m.common:
                    form = folded_view(turn["text"][m.start : m.end])[0]
                    seen[form] = seen.get(form, 0) + 1
                    if (m.start, m.end, m.term_id) not in gold:
                        broken.add(form)
    return sorted(f for f, n in seen.items() if n >= min_count and f not in broken)


def _match_end(view: str, start: int, end: int) -> int | None:
    """Where a form found at view[start:end] ends, its plural included; None when it is inside a word."""
    if _WORD.match(view[start]) and start > 0 and _WORD.match(view[start - 1]):
        return None
    plural = _plural_suffix(view, end, view[start:end])
    if not plural and _WORD.match(view[end - 1]) and end < len(view) and _WORD.match(view[end]):
        return None
    return end + plural


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


def _span(x: dict) -> tuple[int, int]:
    return x["start"], x["end"]


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def merge_terms(
    text: str, model_entities: list[dict], matches: list[TermMatch], terminology_labels, mode: str = "glossary"
) -> list[dict]:
    """The model's entities with listed glossary forms put in for terminology mentions.

    mode ``glossary``: every listed form found is a mention (a ``common`` one only where the model tagged a
    terminology span over it); a model span overlapping it gives way.
    mode ``confirmed``: a listed form counts only where the model tagged a terminology span over it.
    mode ``model``: the model's spans alone (linking is the caller's).
    Model terminology spans that overlap no accepted form are kept for the linker (typos, variants).
    An accepted form takes the lowest ``confidence`` and ``stands`` (a stand head's) of the model spans
    over it.
    """
    if mode == "model":
        return [dict(e) for e in model_entities]
    if mode not in ("glossary", "confirmed"):
        raise ValueError(f"term matching mode {mode!r}: expected glossary, confirmed or model")
    accepted = []
    for m in matches:
        over = [e for e in model_entities if _overlaps(_span(e), (m.start, m.end))]
        if (mode == "confirmed" or m.common) and not any(e["label"] in terminology_labels for e in over):
            continue
        accepted.append(
            {
                "start": m.start,
                "end": m.end,
                "label": m.label,
                "term_id": m.term_id,
                "confidence": min((e.get("confidence", 1.0) for e in over), default=1.0),
                "source": "glossary",
            }
        )
        stands = [e["stands"] for e in over if "stands" in e]
        if stands:
            accepted[-1]["stands"] = min(stands)
    kept = [dict(e) for e in model_entities if not any(_overlaps(_span(e), _span(a)) for a in accepted)]
    return sorted(kept + accepted, key=lambda e: (e["start"], e["end"]))
