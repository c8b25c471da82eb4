"""Link PRODUCT / TERM mentions to glossary term ids (entity linking).

``TermLinker.link`` tries, in order:

1. exact: ``Glossary.lookup`` (``fold``: case, full/half width, hyphens and
   spaces collapsed), then the same look-up on a generic variant key (internal
   spaces and hyphens dropped, Latin plural ``s``/``ies`` reduced), e.g.
   "ＬＰＲ", "lpr", "credit cards", "co branded card"; score 1.0;
2. fuzzy: the most similar listed surface form among the terms of the given
   label (all terms when no label is given): normalised optimal-string-alignment
   distance on the variant keys (a typo, a transposition, an ASR slip) and, for
   Chinese when ``pypinyin`` is importable, on their tone-less pinyin (IME
   homophones such as 信用咔 for 信用卡). Without ``pypinyin`` Chinese falls
   back to character similarity;
3. unknown: the best score is below ``min_score``, or two different terms tie
   for it. The term id is then None and the method "unknown": reported to the
   caller (``link_entities`` returns them), never guessed silently.

When a label is given only terms of that label are candidates, for exact look-up
too: a term id of another label would contradict the mention's label.
Pure Python; candidate lists are built once per label and results are cached.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from findial.data.labelbook import Glossary, LabelBook, fold

try:  # optional: pinyin comparison for Chinese IME homophones
    from pypinyin import lazy_pinyin

    _lazy_pinyin: Callable[..., list[str]] | None = lazy_pinyin
except ImportError:  # pragma: no cover - depends on the environment
    _lazy_pinyin = None

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[a-z]{3,}")


@dataclass(frozen=True)
class LinkResult:
    term_id: str | None
    method: str  # "exact" | "fuzzy" | "unknown"
    score: float
    surface: str


def variant_key(surface: str) -> str:
    """Generic zh/en normal form: folded, Latin plurals reduced, spaces and hyphens dropped."""

    def singular(m: re.Match) -> str:
        w = m.group(0)
        if w.endswith("ies"):
            return w[:-3] + "y"
        if w.endswith("s") and not w.endswith("ss"):
            return w[:-1]
        return w

    return _LATIN_WORD.sub(singular, fold(surface)).replace(" ", "")


def similarity(a: str, b: str, floor: float = 0.0) -> float:
    """1 - optimal-string-alignment distance / longer length; 0.0 when below ``floor``."""
    if a == b:
        return 1.0
    longest = max(len(a), len(b))
    budget = int((1.0 - floor) * longest + 1e-9)  # the most edits that can still reach floor
    if abs(len(a) - len(b)) > budget:
        return 0.0
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > budget:
            return 0.0
        prev2, prev = prev, cur
    score = 1.0 - prev[-1] / longest
    return score if score >= floor - 1e-9 else 0.0


def _pinyin(key: str) -> str | None:
    if _lazy_pinyin is None or not _CJK.search(key):
        return None
    return "".join(_lazy_pinyin(key))


class TermLinker:
    def __init__(self, glossary: Glossary, min_score: float = 0.8, labelbook: LabelBook | None = None):
        self.glossary = glossary
        self.min_score = min_score
        # labels whose mentions carry a term_id: from the label book, else the glossary's own
        self.labels = frozenset(
            labelbook.terminology_labels if labelbook is not None else (t.label for t in glossary.terms.values())
        )
        self._variants: dict[str, str | None] = {}  # variant key -> id (None: ambiguous)
        self._candidates: dict[str | None, list[tuple[str, Counter, str | None, str]]] = {None: []}
        seen: set[tuple[str, str]] = set()
        for term in glossary.terms.values():
            for form in term.surface_forms:
                key = variant_key(form)
                if self._variants.setdefault(key, term.id) != term.id:
                    self._variants[key] = None
                if (key, term.id) not in seen:
                    seen.add((key, term.id))
                    cand = (key, Counter(key), _pinyin(key), term.id)
                    self._candidates[None].append(cand)
                    self._candidates.setdefault(term.label, []).append(cand)
        self._link = functools.lru_cache(maxsize=8192)(self._link_uncached)

    def link(self, surface: str, label: str | None = None) -> LinkResult:
        return self._link(surface, label)

    def _label_ok(self, term_id: str | None, label: str | None) -> bool:
        return term_id is not None and (label is None or self.glossary.label_of(term_id) == label)

    def _link_uncached(self, surface: str, label: str | None) -> LinkResult:
        key = variant_key(surface)
        for term_id in (self.glossary.lookup(surface), self._variants.get(key)):
            if self._label_ok(term_id, label):
                return LinkResult(term_id, "exact", 1.0, surface)
        if not key:
            return LinkResult(None, "unknown", 0.0, surface)
        py, chars = _pinyin(key), Counter(key)
        best, best_ids = 0.0, set()
        for cand_key, cand_chars, cand_py, cand_id in self._candidates.get(label, ()):
            # cheap bound: edits >= longer length - shared characters (multiset)
            shared = sum(min(n, cand_chars[c]) for c, n in chars.items())
            longest = max(len(key), len(cand_key))
            score = (
                similarity(key, cand_key, self.min_score)
                if 1.0 - (longest - shared) / longest >= self.min_score - 1e-9
                else 0.0
            )
            if py and cand_py:
                score = max(score, similarity(py, cand_py, self.min_score))
            if score > best:
                best, best_ids = score, {cand_id}
            elif score == best and score > 0:
                best_ids.add(cand_id)
        if best >= self.min_score and len(best_ids) == 1:
            return LinkResult(best_ids.pop(), "fuzzy", best, surface)
        return LinkResult(None, "unknown", best, surface)

    def link_entities(self, text: str, entities: Iterable[Mapping]) -> tuple[list[dict], list[LinkResult]]:
        """Copies of ``entities`` with ``term_id`` set on terminology mentions.

        A terminology mention that cannot be linked gets no ``term_id`` (any old
        one is dropped); the second value lists those unknown mentions.
        """
        linked: list[dict] = []
        unknown: list[LinkResult] = []
        for ent in entities:
            ent = dict(ent)
            if ent["label"] in self.labels:
                res = self.link(text[ent["start"] : ent["end"]], ent["label"])
                ent.pop("term_id", None)
                if res.term_id is None:
                    unknown.append(res)
                else:
                    ent["term_id"] = res.term_id
            linked.append(ent)
        return linked, unknown
