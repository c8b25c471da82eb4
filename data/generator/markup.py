"""Template markup and the glossary matcher.

Markup (one template = one string; spans are computed, never hand-counted)

    {slot}              draw a filler of type ``slot`` and tag it with the slot's label
                        (product, term, amount, currency, date, duration, rate, merchant,
                        org, card, phone, idnum, person, email; untagged helpers: last4, num)
    {slot:filter}       restrict the draw; for product/term the filter is ``a|b|c`` where each
                        item is a group from lexicon.yaml, a glossary domain or a term_id; for
                        the others a variant name from lexicon.yaml/fillers.py (``amount:large``)
    {~slot[:filter]}    same draw, left UNTAGGED: the retracted value of a correction (it then
                        repeats the value that stands in the dialogue when there is one)
    {a|b|}              free alternation of plain text (any brace content whose head is not
                        a slot name); an empty alternative is allowed
    [text](LABEL)       a literal annotated mention; [text](PRODUCT:term_id) for terminology
    <text>              literal text that is never auto-tagged ("<check> my balance")
    @emotion            optional prefix of a template: overrides the intent's default emotion

Plain text is auto-annotated: every glossary surface form found in it (leftmost-longest,
case/width-folded, ASCII word boundaries) becomes a PRODUCT/TERM mention with its term_id,
so a template cannot leave a glossary mention untagged by mistake. Forms listed in
lexicon.yaml ``not_mentions`` (verbs such as "check", "wire") are never auto-tagged.
A rendering whose filler merges with the surrounding text into a longer glossary form
(信用卡 + 年费 = 信用卡年费) is rejected and redrawn.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from findial.data.labelbook import Glossary, fold

TOKEN = re.compile(r"\[([^\]]+)\]\(([A-Z_]+)(?::([a-z0-9_]+))?\)|\{([^{}]*)\}|<([^<>]*)>")


@dataclass
class Seg:
    """A piece of rendered text: plain, escaped (never tagged) or an entity mention."""

    text: str
    label: str | None = None
    term_id: str | None = None
    kind: str = "plain"  # plain | escaped | fill | lit | auto
    slot: str | None = None


def parse(template: str, slot_names: set[str]) -> tuple[str | None, list[tuple]]:
    """Split a template into tokens: ('text', s) ('lit', s, LABEL, id) ('esc', s) ('alt', [..])
    ('slot', name, filter, tagged). Returns (emotion override, tokens)."""
    emotion = None
    m = re.match(r"@(\w+)\s+", template)
    if m:
        emotion, template = m.group(1), template[m.end() :]
    toks: list[tuple] = []
    pos = 0
    for m in TOKEN.finditer(template):
        if m.start() > pos:
            toks.append(("text", template[pos : m.start()]))
        if m.group(1) is not None:
            toks.append(("lit", m.group(1), m.group(2), m.group(3)))
        elif m.group(5) is not None:
            toks.append(("esc", m.group(5)))
        else:
            body = m.group(4)
            tagged = not body.startswith("~")
            name, _, filt = body.lstrip("~").partition(":")
            if name in slot_names:
                toks.append(("slot", name, filt or None, tagged))
            else:
                toks.append(("alt", body.split("|")))
        pos = m.end()
    if pos < len(template):
        toks.append(("text", template[pos:]))
    return emotion, toks


def _fold_char(ch: str) -> str:
    f = unicodedata.normalize("NFKC", ch).casefold()
    return f if len(f) == 1 else ch.lower()


class Matcher:
    """Leftmost-longest finder of glossary surface forms in raw text.

    Text and forms are compared folded (NFKC, casefold, hyphen = space) character by
    character, so offsets map 1:1 back to the raw text; a form that starts or ends with
    an ASCII letter or digit must not touch another one (word boundary)."""

    def __init__(self, glossary: Glossary):
        self.glossary = glossary
        self.forms: dict[str, str] = {}
        for term in glossary.terms.values():
            for form in term.surface_forms:
                self.forms[fold(form)] = term.id
        self.by_first: dict[str, list[str]] = {}
        for f in sorted(self.forms, key=lambda s: (-len(s), s)):
            self.by_first.setdefault(f[0], []).append(f)

    def find(self, text: str) -> list[tuple[int, int, str]]:
        folded = "".join(_fold_char(c) for c in text).replace("-", " ")
        out, i, n = [], 0, len(folded)
        while i < n:
            for f in self.by_first.get(folded[i], ()):
                j = i + len(f)
                if (
                    folded.startswith(f, i)
                    and not (_alnum(f[0]) and i > 0 and _alnum(folded[i - 1]))
                    and not (_alnum(f[-1]) and j < n and _alnum(folded[j]))
                ):
                    out.append((i, j, self.forms[f]))
                    i = j
                    break
            else:
                i += 1
        return out


def _alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def seg_spans(segs: list[Seg]) -> list[tuple[int, int, Seg]]:
    out, pos = [], 0
    for s in segs:
        out.append((pos, pos + len(s.text), s))
        pos += len(s.text)
    return out


def autotag(segs: list[Seg], matcher: Matcher, not_mentions: set[str]) -> list[Seg] | None:
    """Tag glossary forms found in plain text; None if a filler merges into a longer form."""
    text = "".join(s.text for s in segs)
    spans = seg_spans(segs)
    cuts: list[tuple[int, int, str]] = []
    for a, b, tid in matcher.find(text):
        hit = [(x, y, s) for x, y, s in spans if x < b and a < y and s.text]
        if any(s.kind == "escaped" for _, _, s in hit):
            continue
        tagged = [(x, y, s) for x, y, s in hit if s.label]
        if not tagged:
            if all(s.kind == "plain" for _, _, s in hit) and fold(text[a:b]) not in not_mentions:
                cuts.append((a, b, tid))
            continue
        if len(tagged) == 1:
            x, y, s = tagged[0]
            if (x, y) == (a, b) and s.term_id == tid:
                continue  # the filler itself
            if s.label not in ("PRODUCT", "TERM") and x <= a and b <= y:
                continue  # inside an e-mail, an ORG name...
        return None
    if not cuts:
        return segs
    out: list[Seg] = []
    pos = 0
    text_segs = spans
    for a, b, tid in cuts:
        for x, y, s in text_segs:
            lo, hi = max(x, pos), min(y, a)
            if lo < hi:
                out.append(Seg(s.text[lo - x : hi - x], s.label, s.term_id, s.kind, s.slot))
        out.append(Seg(text[a:b], matcher.glossary.label_of(tid), tid, "auto", None))
        pos = b
    for x, y, s in text_segs:
        lo = max(x, pos)
        if lo < y:
            out.append(Seg(s.text[lo - x :], s.label, s.term_id, s.kind, s.slot))
    return out


def consistent(segs: list[Seg], matcher: Matcher, not_mentions: set[str]) -> bool:
    """After noise: every glossary form in the text is exactly a tagged mention of its id."""
    text = "".join(s.text for s in segs)
    spans = seg_spans(segs)
    for a, b, tid in matcher.find(text):
        hit = [(x, y, s) for x, y, s in spans if x < b and a < y and s.text]
        if any(s.kind == "escaped" for _, _, s in hit):
            continue
        tagged = [(x, y, s) for x, y, s in hit if s.label]
        if not tagged:
            if fold(text[a:b]) in not_mentions:
                continue
            return False
        if len(tagged) != 1:
            return False
        x, y, s = tagged[0]
        if (x, y) == (a, b) and s.term_id == tid:
            continue
        if s.label not in ("PRODUCT", "TERM") and x <= a and b <= y:
            continue
        return False
    return True


def assemble(segs: list[Seg]) -> tuple[str, list[dict]]:
    text, ents, pos = [], [], 0
    for s in segs:
        if s.label and s.text:
            e = {"start": pos, "end": pos + len(s.text), "label": s.label}
            if s.term_id:
                e["term_id"] = s.term_id
            ents.append(e)
        text.append(s.text)
        pos += len(s.text)
    return "".join(text), ents
