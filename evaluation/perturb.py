"""Seeded perturbations of corpus dialogues that keep the annotations consistent.

Every perturbation edits the text of user turns only (agent turns are left as
they are) and re-maps every entity span after the edit, so a perturbed corpus
loads with ``load_corpus`` like the original. ``perturb_dialogues`` draws one
random generator per dialogue from ``(seed, perturbation name, dialogue id)``:
the output of a dialogue does not depend on the order or on the other dialogues.

Which text may change (the annotation guidelines in ``data/spec/corpus-format.md``):

- Entities without a ``term_id`` (AMOUNT, DATE, CURRENCY, ORG, PII, ...) are
  never edited inside: their surface text is what the state holds, so it stays
  exact and the gold state stays right without rewriting it.
- Terminology mentions (entities with a ``term_id``) may be edited inside, and
  keep their label and term_id: the guidelines say a misspelt, IME-homophone or
  ASR-garbled form of a glossary term is still a mention of that term. An edit
  is refused when the new surface is a listed form of *another* term. The state
  holds term_ids, so it does not change either.
  - ``typo`` edits inside terms (``inside_terms``); the new surface may no
    longer link exactly (that is what is being measured);
  - ``homophone`` edits inside terms only when the toneless pinyin of the
    mention is unchanged (so the mention is a true homophone of the term);
  - ``codemix`` replaces a whole mention by the term's canonical form in the
    other language (it still looks up to the same term_id);
  - ``width`` maps characters one to one to their full-/half-width form, which
    the glossary look-up folds away;
  - ``punctuation`` and ``chitchat`` never touch an entity.

An insertion at the start of an entity goes before it, one at its end after it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from findial.data.labelbook import Glossary

try:  # homophones inside glossary terms are checked on pinyin
    from pypinyin import lazy_pinyin

    _lazy_pinyin: Callable[..., list[str]] | None = lazy_pinyin
except ImportError:  # pragma: no cover - pypinyin is a dependency
    _lazy_pinyin = None


# ---------------------------------------------------------------- edits and span re-mapping
@dataclass(frozen=True, order=True)
class Edit:
    """Replace ``text[start:end]`` by ``new`` (an insertion when start == end, a deletion when new == "")."""

    start: int
    end: int
    new: str


class SpanError(ValueError):
    """An edit cuts an entity span or deletes it (a bug in a perturbation)."""


def apply_edits(text: str, entities: list[dict], edits: Iterable[Edit]) -> tuple[str, list[dict]]:
    """The edited text and the entities re-mapped onto it (copies; other entity fields kept)."""
    edits = sorted(edits)
    for a, b in zip(edits, edits[1:]):
        if b.start < a.end or (a.start == a.end == b.start == b.end):
            raise SpanError(f"overlapping edits {a} and {b}")
    out, pos = [], 0
    for ed in edits:
        out += [text[pos : ed.start], ed.new]
        pos = ed.end
    out.append(text[pos:])
    new_text = "".join(out)
    new_entities = []
    for e in entities:
        s, t = e["start"], e["end"]
        for ed in edits:
            if ed.start < s < ed.end or ed.start < t < ed.end:
                raise SpanError(f"edit {ed} cuts entity [{s}, {t}) {e['label']}")
        # an edit wholly before the start moves it (an insertion at the start goes before the entity);
        # the end also moves with edits inside the entity, but not with an insertion at the end
        ns = s + sum(len(ed.new) - (ed.end - ed.start) for ed in edits if ed.end <= s)
        nt = t + sum(len(ed.new) - (ed.end - ed.start) for ed in edits if ed.end <= t and not ed.start == ed.end == t)
        if not (ns < nt and new_text[ns:nt].strip()):
            raise SpanError(f"edits delete entity [{s}, {t}) {e['label']}")
        new_entities.append({**e, "start": ns, "end": nt})
    return new_text, new_entities


def _term_spans(entities: list[dict]) -> list[tuple[int, int]]:
    return [(e["start"], e["end"]) for e in entities if e.get("term_id") is not None]


def _protected_spans(entities: list[dict]) -> list[tuple[int, int]]:
    """Spans never edited inside: entities whose state value is their surface text."""
    return [(e["start"], e["end"]) for e in entities if e.get("term_id") is None]


def _inside(i: int, j: int, spans: list[tuple[int, int]]) -> bool:
    """Does [i, j) overlap any span?"""
    return any(i < t and s < j for s, t in spans)


def _straddles(i: int, j: int, entities: list[dict]) -> bool:
    """Does [i, j) cross an entity boundary (part inside, part outside)?"""
    return any(i < e["start"] < j or i < e["end"] < j for e in entities)


def _entity_at(i: int, j: int, entities: list[dict]) -> dict | None:
    return next((e for e in entities if e["start"] <= i and j <= e["end"]), None)


# ---------------------------------------------------------------- the perturbation protocol
class Perturbation(Protocol):
    name: str

    def apply(self, dialogue: dict, rng: random.Random) -> dict:
        """A perturbed copy of ``dialogue`` (user turns only, annotations re-mapped)."""


class TurnPerturbation:
    """Base: a perturbed copy of a dialogue, one user turn at a time.

    ``rate`` is the probability that a user turn is perturbed at all;
    ``skip_intents`` are intents whose turns are left alone (e.g. small talk a
    filler would change the meaning of). Subclasses return the edits of one turn.
    """

    name = "identity"

    def __init__(self, rate: float = 1.0, skip_intents: Iterable[str] = (), glossary: Glossary | None = None):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{self.name}: rate must be in [0, 1], got {rate}")
        self.rate = rate
        self.skip_intents = frozenset(skip_intents)
        self.glossary = glossary

    def edits(self, text: str, entities: list[dict], lang: str, rng: random.Random) -> list[Edit]:
        return []

    def apply(self, dialogue: dict, rng: random.Random) -> dict:
        out = copy.deepcopy(dialogue)
        for turn in out["turns"]:
            if turn.get("speaker") != "user":
                continue
            if rng.random() >= self.rate or turn.get("intent") in self.skip_intents:
                continue
            entities = turn.get("entities") or []
            edits = self.edits(turn["text"], entities, dialogue.get("lang", ""), rng)
            if not edits:
                continue
            text, entities = apply_edits(turn["text"], entities, edits)
            if not text.strip():  # never produce an empty turn (the loader rejects it)
                continue
            turn["text"] = text
            if "entities" in turn:
                turn["entities"] = entities
        return out

    def _other_term(self, surface: str, term_id: str) -> bool:
        """Is ``surface`` a listed form of a term other than ``term_id``?"""
        if self.glossary is None:
            return False
        found = self.glossary.lookup(surface)
        return found is not None and found != term_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rate={self.rate})"


def _pick(rng: random.Random, candidates: list, share: float) -> list:
    """Each candidate with probability ``share``, at least one when there are any (in input order)."""
    if not candidates:
        return []
    chosen = [c for c in candidates if rng.random() < share]
    return chosen or [rng.choice(candidates)]


# ---------------------------------------------------------------- typos (Latin letters)
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


class Typo(TurnPerturbation):
    """Keyboard typos in Latin words: swap two adjacent letters, drop a letter, or double one.

    Words with a digit next to them are never touched (no edits inside numbers
    such as "A320" or "3rd"); one typo per ``per_words`` eligible words, at least one.
    """

    name = "typo"

    def __init__(self, per_words: int = 4, min_length: int = 3, inside_terms: bool = True, **kw):
        super().__init__(**kw)
        self.per_words, self.min_length, self.inside_terms = max(1, per_words), min_length, inside_terms

    def edits(self, text, entities, lang, rng):
        protected = _protected_spans(entities) + ([] if self.inside_terms else _term_spans(entities))
        words = [
            m
            for m in _WORD.finditer(text)
            if len(m.group()) >= self.min_length
            and not _inside(m.start(), m.end(), protected)
            and not _straddles(m.start(), m.end(), entities)
            and not (m.start() > 0 and text[m.start() - 1].isdigit())
            and not (m.end() < len(text) and text[m.end()].isdigit())
        ]
        if not words:
            return []
        n = max(1, round(len(words) / self.per_words))
        edits = []
        for m in sorted(rng.sample(words, min(n, len(words))), key=lambda m: m.start()):
            ed = self._typo(m, rng)
            if ed and not self._collides(text, entities, ed):
                edits.append(ed)
        return edits

    def _typo(self, m: re.Match, rng: random.Random) -> Edit | None:
        word, at = m.group(), m.start()
        letters = [i for i, c in enumerate(word) if c.isalpha()]
        op = rng.choice(("swap", "drop", "double"))
        if op == "swap":
            pairs = [i for i in letters[:-1] if word[i + 1].isalpha() and word[i] != word[i + 1]]
            if pairs:
                i = rng.choice(pairs)
                return Edit(at + i, at + i + 2, word[i + 1] + word[i])
            op = "double"
        i = rng.choice(letters)
        if op == "drop" and len(letters) >= 4:  # "LPR" -> "LR" is no longer a word
            return Edit(at + i, at + i + 1, "")
        return Edit(at + i, at + i + 1, word[i] * 2)

    def _collides(self, text: str, entities: list[dict], ed: Edit) -> bool:
        ent = _entity_at(ed.start, ed.end, entities)
        if ent is None or ent.get("term_id") is None:
            return False
        surface = text[ent["start"] : ed.start] + ed.new + text[ed.end : ent["end"]]
        return self._other_term(surface, ent["term_id"])


# ---------------------------------------------------------------- Chinese homophones (IME / ASR)
# character -> common IME / ASR confusions (same or near-same toneless pinyin)
HOMOPHONES: dict[str, str] = {
    "卡": "咔",
    "账": "帐",
    "额": "鹅",
    "率": "律",
    "款": "宽",
    "期": "其",
    "费": "废",
    "息": "夕",
    "贷": "代",
    "转": "专",
    "利": "力",
    "保": "宝",
    "险": "显",
    "理": "里",
    "财": "材",
    "金": "今",
    "基": "鸡",
    "户": "护",
    "码": "马",
    "钱": "前",
    "存": "村",
    "信": "新",
    "用": "永",
    "汇": "会",
    "查": "茶",
    "询": "寻",
    "办": "半",
    "吗": "嘛",
    "的": "得",
    "在": "再",
    "是": "事",
    "想": "响",
    "要": "药",
    "问": "文",
    "请": "清",
    "帮": "邦",
    "证": "正",
    "价": "架",
    "值": "直",
    "投": "头",
    "赔": "陪",
    "资": "姿",
    "购": "够",
    "记": "计",
    "储": "除",
    "蓄": "续",
}


def _pinyin(s: str) -> list[str] | None:
    return _lazy_pinyin(s) if _lazy_pinyin is not None else None


class Homophone(TurnPerturbation):
    """Chinese IME-homophone / ASR substitutions from a small table (``HOMOPHONES``).

    Each eligible character is replaced with probability ``share`` (at least one
    per turn). Inside a glossary mention (``inside_terms``) a substitution is
    kept only if the mention's toneless pinyin is unchanged.
    """

    name = "homophone"

    def __init__(self, share: float = 0.3, inside_terms: bool = True, table: Mapping[str, str] | None = None, **kw):
        super().__init__(**kw)
        self.share, self.inside_terms = share, inside_terms
        self.table = dict(HOMOPHONES if table is None else table)

    def edits(self, text, entities, lang, rng):
        protected = _protected_spans(entities) + ([] if self.inside_terms else _term_spans(entities))
        cands = [i for i, c in enumerate(text) if c in self.table and not _inside(i, i + 1, protected)]
        edits = []
        for i in _pick(rng, cands, self.share):
            ent = _entity_at(i, i + 1, entities)
            if ent is not None and not self._keeps_term(text, ent, i):
                continue
            edits.append(Edit(i, i + 1, self.table[text[i]]))
        return edits

    def _keeps_term(self, text: str, ent: dict, i: int) -> bool:
        old = text[ent["start"] : ent["end"]]
        new = text[ent["start"] : i] + self.table[text[i]] + text[i + 1 : ent["end"]]
        if self._other_term(new, ent["term_id"]):
            return False
        return _lazy_pinyin is not None and _pinyin(old) == _pinyin(new)


# ---------------------------------------------------------------- dropped punctuation
PUNCTUATION = frozenset("，。！？；：、,.!?;:~…")


class DropPunctuation(TurnPerturbation):
    """Drop sentence punctuation outside entities (each mark with probability ``share``).

    A mark between two digits ("3.5", "6,000") is part of a number and stays.
    """

    name = "punctuation"

    def __init__(self, share: float = 0.8, **kw):
        super().__init__(**kw)
        self.share = share

    def edits(self, text, entities, lang, rng):
        spans = [(e["start"], e["end"]) for e in entities]
        cands = [
            i
            for i, c in enumerate(text)
            if c in PUNCTUATION
            and not _inside(i, i + 1, spans)
            and not (0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit())
        ]
        edits = [Edit(i, i + 1, "") for i in _pick(rng, cands, self.share)]
        if lang == "en":  # "yes, please" -> "yes please", not "yes  please"
            edits = [Edit(e.start, e.end, " ") if _between_words(text, e.start) else e for e in edits]
        return edits


def _between_words(text: str, i: int) -> bool:
    return 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()


# ---------------------------------------------------------------- full-width / half-width
_TO_HALF = {"。": ".", "、": ",", "「": '"', "」": '"', "　": " "}


def to_fullwidth(c: str) -> str:
    return chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c


def to_halfwidth(c: str) -> str:
    if "！" <= c <= "～":
        return chr(ord(c) - 0xFEE0)
    return _TO_HALF.get(c, c)


class Width(TurnPerturbation):
    """Full-width / half-width confusion, one character for one (no span moves).

    Runs of ASCII letters and digits (and ASCII punctuation) become full-width
    with probability ``share`` each, as an IME left in full-width mode types
    them; Chinese punctuation becomes half-width with the same probability.
    Glossary look-ups fold width (NFKC), so terms still link; entities without
    a term_id are left alone.
    """

    name = "width"

    def __init__(self, share: float = 0.5, **kw):
        super().__init__(**kw)
        self.share = share

    def edits(self, text, entities, lang, rng):
        protected = _protected_spans(entities)
        runs = [
            m
            for m in re.finditer(r"[A-Za-z0-9]+|[!-/:-@\[-`{-~]", text)
            if not _inside(m.start(), m.end(), protected) and not _straddles(m.start(), m.end(), entities)
        ]
        marks = [i for i, c in enumerate(text) if to_halfwidth(c) != c and not _inside(i, i + 1, protected)]
        cands = [(m.start(), m.end()) for m in runs] + [(i, i + 1) for i in marks]
        cands.sort()
        edits = []
        for s, t in _pick(rng, cands, self.share):
            chunk = text[s:t]
            new = "".join(to_fullwidth(c) for c in chunk) if chunk.isascii() else "".join(map(to_halfwidth, chunk))
            if new != chunk:
                edits.append(Edit(s, t, new))
        return edits


# ---------------------------------------------------------------- code-mixing
# common words that are not glossary forms, zh <-> en (checked against the glossary in use)
COMMON_WORDS: dict[str, str] = {
    "转账": "transfer",
    "余额": "balance",
    "账单": "bill",
    "客服": "customer service",
    "还款": "repayment",
    "申请": "apply",
    "取消": "cancel",
    "手机": "phone",
    "截图": "screenshot",
    "问题": "problem",
    "退款": "refund",
    "订单": "order",
}
_CJK = re.compile(r"[\u3400-\u9fff]")


class CodeMix(TurnPerturbation):
    """Code-mixing: a glossary mention or a common word switches language.

    A terminology mention written in Chinese becomes the term's English
    canonical form, and one written in Latin letters its Chinese form; the
    span is updated and label and term_id kept (the new surface looks up to the
    same term, or the mention is left alone). Common words (``COMMON_WORDS``,
    outside entities, never a glossary form) switch the same way. Each
    candidate switches with probability ``share`` (at least one per turn).
    """

    name = "codemix"

    def __init__(self, share: float = 0.7, words: Mapping[str, str] | None = None, **kw):
        super().__init__(**kw)
        if self.glossary is None:
            raise ValueError("codemix needs the glossary (glossary=...)")
        self.share = share
        pairs = dict(COMMON_WORDS if words is None else words)
        pairs = {
            zh: en for zh, en in pairs.items() if self.glossary.lookup(zh) is None and self.glossary.lookup(en) is None
        }
        self.zh_words = pairs
        self.en_words = {en.casefold(): zh for zh, en in pairs.items()}
        self._zh_rx = re.compile("|".join(map(re.escape, sorted(pairs, key=len, reverse=True)))) if pairs else None
        self._en_rx = (
            re.compile(
                r"\b(" + "|".join(map(re.escape, sorted(self.en_words, key=len, reverse=True))) + r")\b", re.IGNORECASE
            )
            if pairs
            else None
        )

    def edits(self, text, entities, lang, rng):
        cands: list[Edit] = []
        for e in entities:
            if e.get("term_id") is None or e["term_id"] not in self.glossary.terms:
                continue
            surface, term = text[e["start"] : e["end"]], self.glossary.terms[e["term_id"]]
            new = term.en if _CJK.search(surface) else term.zh
            if new != surface and self.glossary.lookup(new) == term.id:
                cands.append(Edit(e["start"], e["end"], new))
        spans = [(e["start"], e["end"]) for e in entities]
        for rx, table in ((self._zh_rx, self.zh_words), (self._en_rx, self.en_words)):
            for m in rx.finditer(text) if rx else ():
                if not _inside(m.start(), m.end(), spans):
                    cands.append(
                        Edit(
                            m.start(),
                            m.end(),
                            table[m.group().casefold()] if table is self.en_words else table[m.group()],
                        )
                    )
        cands.sort()
        return [self._spaced(text, ed) for ed in _pick(rng, cands, self.share)]

    @staticmethod
    def _spaced(text: str, ed: Edit) -> Edit:
        """Latin inserted next to a Latin letter or digit gets a space on that side."""
        new = ed.new
        if (
            new[:1].isascii()
            and new[:1].isalnum()
            and ed.start > 0
            and text[ed.start - 1].isascii()
            and text[ed.start - 1].isalnum()
        ):
            new = " " + new
        if (
            new[-1:].isascii()
            and new[-1:].isalnum()
            and ed.end < len(text)
            and text[ed.end].isascii()
            and text[ed.end].isalnum()
        ):
            new = new + " "
        return Edit(ed.start, ed.end, new)


# ---------------------------------------------------------------- chit-chat
FILLERS = {
    "zh": {
        "prefix": ["嗯那个，", "那个，", "嗯，", "呃，", "麻烦问一下，", "不好意思打扰一下，"],
        "suffix": ["，谢谢啦", "，麻烦了", "。谢谢", "哈", "，辛苦了"],
    },
    "en": {
        "prefix": ["hi, quick question: ", "um, ", "hey there, ", "sorry to bother you, ", "ok so "],
        "suffix": [" thanks!", ", thank you", " pls", " :)"],
    },
}


class ChitChat(TurnPerturbation):
    """Prefix and/or suffix filler ("嗯那个，", "hi, quick question: ", "，谢谢啦"); spans shift.

    ``skip_intents`` should name the small-talk intents (greeting, thanks, ...)
    whose meaning a filler would change. Languages without fillers are left alone.
    """

    name = "chitchat"

    def __init__(self, fillers: Mapping[str, Mapping[str, list[str]]] | None = None, **kw):
        super().__init__(**kw)
        self.fillers = {lang: {k: list(v) for k, v in f.items()} for lang, f in (fillers or FILLERS).items()}

    def edits(self, text, entities, lang, rng):
        f = self.fillers.get(lang)
        if not f:
            return []
        where = rng.choice(("prefix", "suffix", "both"))
        edits = []
        if where in ("prefix", "both") and f.get("prefix"):
            edits.append(Edit(0, 0, rng.choice(f["prefix"])))
        if where in ("suffix", "both") and f.get("suffix"):
            suffix = rng.choice(f["suffix"])
            end = len(text.rstrip("。.!！"))  # "...丢了。" + "，谢谢啦" -> "...丢了，谢谢啦"
            if end < len(text) and not _inside(end, len(text), [(e["start"], e["end"]) for e in entities]):
                edits.append(Edit(end, len(text), suffix))
            else:
                edits.append(Edit(len(text), len(text), suffix))
        return edits


# ---------------------------------------------------------------- suites and application
PERTURBATIONS: dict[str, type[TurnPerturbation]] = {
    cls.name: cls for cls in (Typo, Homophone, DropPunctuation, Width, CodeMix, ChitChat)
}


def build_suite(spec: Mapping[str, Mapping[str, Any] | None], glossary: Glossary) -> list[TurnPerturbation]:
    """Perturbations from a mapping name -> keyword arguments (None disables one), in the given order."""
    suite = []
    for name, params in spec.items():
        if params is None:
            continue
        if name not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {name!r}; known: {sorted(PERTURBATIONS)}")
        try:
            suite.append(PERTURBATIONS[name](glossary=glossary, **dict(params)))
        except TypeError as exc:
            raise ValueError(f"perturbations.{name}: {exc}") from exc
    return suite


def dialogue_seed(seed: int, perturbation: str, dialogue_id: str) -> int:
    """The seed of one dialogue's generator: independent of order and of the other dialogues."""
    digest = hashlib.sha256(f"{seed}\x1f{perturbation}\x1f{dialogue_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def perturb_dialogues(dialogues: list[dict], perturbation: Perturbation, seed: int) -> list[dict]:
    return [perturbation.apply(d, random.Random(dialogue_seed(seed, perturbation.name, d["id"]))) for d in dialogues]


def changed_turns(before: list[dict], after: list[dict]) -> tuple[int, int]:
    """(user turns whose text changed, user turns)."""
    changed = total = 0
    for a, b in zip(before, after):
        for ta, tb in zip(a["turns"], b["turns"]):
            if ta["speaker"] == "user":
                total += 1
                changed += ta["text"] != tb["text"]
    return changed, total


def validate_dialogues(dialogues: list[dict], labelbook, glossary) -> list[dict]:
    """Run the corpus loader's checks on in-memory dialogues (raises ``CorpusError``)."""
    from findial.data.corpus import load_corpus

    with tempfile.TemporaryDirectory(prefix="findial-perturb-") as tmp:
        path = Path(tmp) / "perturbed.jsonl"
        path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogues), encoding="utf-8")
        return load_corpus(path, labelbook, glossary)
