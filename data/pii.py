"""Masking of personal data (PII) in text, corpus records, logs and JSON artifacts.

Personal data must never reach a log, an MLflow artifact, a federated message or
a checkpoint unmasked. Each PII span is replaced by ``[LABEL]`` (``[CARD_NUMBER]``,
``[PHONE]``, ``[ID_NUMBER]``, ``[PERSON]``, ``[EMAIL]``).

What is detected (rules run on an NFKC view of the text, so full-width digits,
``＋`` and ``＠`` count; the replacement is made in the original string):

- ID_NUMBER: an 18-character Chinese resident ID (17 digits + digit or X/x,
  optionally grouped 6-8-4) whose GB 11643 check character is right and whose
  birth date is a real date from 1900 to today. An 18-digit run failing these
  is left alone, unless it passes Luhn (then it is a CARD_NUMBER). 15-digit
  (pre-1999) IDs and passport numbers are not guessed: tag them.
- CARD_NUMBER: 13-19 digits, contiguous or in groups of 4 (the last may be
  shorter; Amex 4-6-5) split by spaces or by hyphens, passing the Luhn check.
- PHONE: mainland mobiles (1[3-9]x + 8 digits, optional +86/0086/(+86) prefix,
  optional spaces/hyphens), landlines written 0xx(x)-xxxxxxx(x), and numbers
  in international form (leading + or 00, 8-15 digits, spaces, hyphens, brackets).
- EMAIL: addresses.
- Any entity passed in with a PII label, masked as given. PERSON is only
  masked this way: names are never guessed.

A number never matches inside a longer digit run. Masked numbers ("尾号5521",
"ending in 0093", "6222 **** **** 1234") have too few digits to match, and the
placeholders have none, so masking is idempotent. Of overlapping spans the
tagged entity wins, then the rule listed first above (so the e-mail
13812345678@163.com is one EMAIL, +8613812345678 one PHONE).
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, NamedTuple

PII_LABELS = frozenset({"CARD_NUMBER", "PHONE", "ID_NUMBER", "PERSON", "EMAIL"})


@dataclass(frozen=True, order=True)
class Span:
    """A PII span ``[start, end)`` in the original text."""

    start: int
    end: int
    label: str


class Edit(NamedTuple):
    """One replacement: ``text[old_start:old_end]`` became ``masked[new_start:new_end]``."""

    old_start: int
    old_end: int
    new_start: int
    new_end: int
    label: str


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_checksum_ok(number: str) -> bool:
    """GB 11643 check character and a plausible birth date (1900..today)."""
    if len(number) != 18 or not (number[:17].isascii() and number[:17].isdigit()):
        return False
    total = sum(int(d) * w for d, w in zip(number, _ID_WEIGHTS))
    if "10X98765432"[total % 11] != number[17].upper():
        return False
    try:
        born = _dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    return _dt.date(1900, 1, 1) <= born <= _dt.date.today()


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check used by card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        total += (d * 2 - 9 if d > 4 else d * 2) if i % 2 else d
    return total % 10 == 0


def _strip(s: str) -> str:
    return re.sub(r"[^0-9Xx]", "", s)


# A check takes the matched text and returns the part of it that is PII ("" for none).
def _card(s: str) -> str:
    digits = _strip(s)
    return s if 13 <= len(digits) <= 19 and luhn_ok(digits) else ""


def _id(s: str) -> str:
    return s if id_checksum_ok(_strip(s)) else ""


def _intl(s: str) -> str:
    """At most 15 digits after + or 00 (E.164): drop trailing groups, e.g. a year said after it."""

    def count(x: str) -> int:
        return len(_strip(x)) - 2 * x.startswith("00")

    cut = s
    while count(cut) > 15:
        cut = re.sub(r"[ -]?\(?\d{1,4}\)?$", "", cut)
    return cut if count(cut) >= 8 and not s[len(cut) : len(cut) + 1].isdigit() else ""


_A = re.ASCII  # the patterns run on the NFKC view, where digits are ASCII
_DETECTORS = (  # (label, pattern, check); the earlier wins an overlap
    ("EMAIL", re.compile(r"(?<![\w.%+-])[\w.%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])", _A), None),
    ("ID_NUMBER", re.compile(r"(?<!\d)(?<!\d\.)\d{6}([ -]?)\d{8}\1\d{3}[\dXx](?![\dXx])", _A), _id),
    (
        "PHONE",
        re.compile(r"(?<![\d+])(?<!\d\.)(?:(?:\+|00)86[ -]?|\(\+?86\)[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)", _A),
        None,
    ),
    ("PHONE", re.compile(r"(?<![\d+-])0\d{2,3}-\d{7,8}(?![\d-])", _A), None),
    ("PHONE", re.compile(r"(?<![\w+])(?<!\d\.)(?:\+|00)[1-9]\d{0,2}(?:[ -]?\(?\d{1,4}\)?){2,5}(?!\d)", _A), _intl),
    ("CARD_NUMBER", re.compile(r"(?<!\d)(?<!\d\.)\d{13,19}(?![\dXx])", _A), _card),
    (
        "CARD_NUMBER",
        re.compile(
            r"(?<!\d)(?<!\d[ -])(?:\d{4}([ -])\d{4}(?:\1\d{4}){1,3}(?:\1\d{1,3})?|\d{4}([ -])\d{6}\2\d{5})(?![ -]?\d)",
            _A,
        ),
        _card,
    ),
)


def _nfkc_view(text: str) -> tuple[str, list[int] | None]:
    """NFKC-normalised text and, when it differs, the original index of each char."""
    if text.isascii() or unicodedata.is_normalized("NFKC", text):
        return text, None
    parts, index = [], []
    for i, ch in enumerate(text):
        n = unicodedata.normalize("NFKC", ch)
        parts.append(n)
        index.extend([i] * len(n))
    return "".join(parts), index


class PIIMasker:
    """Finds and masks PII. Stateless after construction; patterns are precompiled.

    ``pii_labels``: the entity labels that count as personal data when passed in
    ``entities`` (default: the bundled label book's, ``LabelBook.pii_labels``).
    """

    def __init__(self, pii_labels: Iterable[str] = PII_LABELS):
        self.pii_labels = frozenset(pii_labels)

    def find(self, text: str, entities: list[dict] | None = None) -> list[Span]:
        """Non-overlapping PII spans in ``text``, sorted by start."""
        n = len(text)
        cands: list[tuple[int, Span]] = []
        for e in entities or ():
            if e.get("label") in self.pii_labels:
                s, t = max(0, int(e["start"])), min(n, int(e["end"]))
                if s < t:
                    cands.append((0, Span(s, t, e["label"])))
        norm, index = _nfkc_view(text)
        for prio, (label, rx, check) in enumerate(_DETECTORS, 1):
            for m in rx.finditer(norm):
                hit = check(m.group()) if check else m.group()
                if hit:
                    s, t = m.start(), m.start() + len(hit)
                    if index is not None:
                        s, t = index[s], index[t - 1] + 1
                    cands.append((prio, Span(s, t, label)))
        cands.sort(key=lambda c: (c[0], c[1].start - c[1].end, c[1].start))
        chosen: list[Span] = []
        for _, sp in cands:
            if all(sp.end <= c.start or c.end <= sp.start for c in chosen):
                chosen.append(sp)
        return sorted(chosen)

    def mask_with_spans(self, text: str, entities: list[dict] | None = None) -> tuple[str, list[Edit]]:
        """The masked text and one ``Edit`` per replaced span, in order.

        Offsets outside the edits shift by the length change of the edits before
        them; ``remap_span`` does that for an entity span.
        """
        out, edits, pos, shift = [], [], 0, 0
        for sp in self.find(text, entities):
            ph = f"[{sp.label}]"
            out += [text[pos : sp.start], ph]
            edits.append(Edit(sp.start, sp.end, sp.start + shift, sp.start + shift + len(ph), sp.label))
            shift += len(ph) - (sp.end - sp.start)
            pos = sp.end
        out.append(text[pos:])
        return "".join(out), edits

    def mask(self, text: str, entities: list[dict] | None = None) -> str:
        return self.mask_with_spans(text, entities)[0]

    def is_clean(self, text: str, entities: list[dict] | None = None) -> bool:
        return not self.find(text, entities)


@lru_cache(maxsize=1)
def default_masker() -> PIIMasker:
    return PIIMasker()


def remap_span(start: int, end: int, edits: list[Edit]) -> tuple[int, int] | None:
    """Map ``[start, end)`` of the original text into the masked text; None if it overlaps an edit."""
    shift = 0
    for ed in edits:
        if ed.old_end <= start:
            shift = ed.new_end - ed.old_end
        elif ed.old_start < end:
            return None
        else:
            break
    return start + shift, end + shift


def _literal_entities(text: str, known: dict[str, str]) -> list[dict]:
    """Entity dicts for every literal occurrence of a known PII surface form."""
    found = []
    for surface, label in known.items():
        for m in re.finditer(re.escape(surface), text):
            found.append({"start": m.start(), "end": m.end(), "label": label})
    return found


def mask_record(record: dict, masker: PIIMasker | None = None) -> dict:
    """A deep copy of a corpus dialogue with PII masked in every turn.

    Text is masked (detected PII, tagged PII entities, and any other literal
    occurrence in the dialogue of a tagged PII surface, e.g. a name the agent
    repeats); PII entities then point at their placeholders, other entities are
    shifted to the masked text (one overlapping detected PII is dropped, as its
    text held personal data), and string state values are masked alike.
    """
    masker = masker or default_masker()
    out = copy.deepcopy(record)
    turns = [t for t in out.get("turns") or [] if isinstance(t, dict)]
    known = {
        t["text"][e["start"] : e["end"]]: e["label"]
        for t in turns
        for e in t.get("entities") or []
        if e.get("label") in masker.pii_labels and isinstance(t.get("text"), str)
    }
    known.pop("", None)
    for turn in turns:
        text, ents = turn.get("text"), turn.get("entities") or []
        if isinstance(text, str):
            tagged = [e for e in ents if e.get("label") in masker.pii_labels]
            masked, edits = masker.mask_with_spans(text, tagged + _literal_entities(text, known))
            new_ents: list[dict] = []
            turn["text"] = masked
            for e in ents:
                if e.get("label") in masker.pii_labels:
                    hit = next((ed for ed in edits if ed.old_start <= e["start"] and e["end"] <= ed.old_end), None)
                    span = (hit.new_start, hit.new_end) if hit else None
                    if span and any((x["start"], x["end"]) == span for x in new_ents):
                        span = None  # a second (overlapping) tag of the same placeholder
                else:
                    span = remap_span(e["start"], e["end"], edits)
                if span:
                    new_ents.append({**e, "start": span[0], "end": span[1]})
            if "entities" in turn:
                turn["entities"] = new_ents
        if isinstance(turn.get("state"), dict):
            turn["state"] = {
                k: masker.mask(v, _literal_entities(v, known)) if isinstance(v, str) else redact_json(v, masker)
                for k, v in turn["state"].items()
            }
    return out


def redact_json(obj: Any, masker: PIIMasker | None = None) -> Any:
    """A copy of a JSON-like object with every string (keys included) masked."""
    masker = masker or default_masker()
    if isinstance(obj, str):
        return masker.mask(obj)
    if isinstance(obj, dict):
        return {redact_json(k, masker): redact_json(v, masker) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_json(v, masker) for v in obj)
    return obj


# ---------------------------------------------------------------- logging
def _redact_record(record: logging.LogRecord, masker: PIIMasker) -> None:
    """Format and mask a record in place (msg, args, traceback, stack); idempotent."""
    if getattr(record, "_pii_redacted", False):
        return
    try:
        msg = record.getMessage()
    except Exception:  # a bad format: logging would print msg and args raw
        msg = f"{record.msg!r} {record.args!r}"
    record.msg, record.args = masker.mask(msg), None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = masker.mask(record.exc_text)
    record.exc_info = None  # the traceback lives on, masked, in exc_text
    if record.stack_info:
        record.stack_info = masker.mask(record.stack_info)
    record._pii_redacted = True


class PIIRedactingFilter(logging.Filter):
    """Masks the formatted message, traceback and stack of every record it sees."""

    def __init__(self, masker: PIIMasker | None = None, name: str = ""):
        super().__init__(name)
        self.masker = masker or default_masker()

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record, self.masker)
        return True


_log_masker: PIIMasker | None = None


def install_log_redaction(masker: PIIMasker | None = None) -> None:
    """Redact PII from everything logged through ``logging``, now and later. Idempotent.

    The main hook is the log-record factory: every record any logger makes
    (ours, MLflow's, Lightning's, non-propagating loggers included) is masked
    when it is created, before any handler or formatter, whether the handler
    exists yet or not, with no reliance on ``Formatter.format`` not being
    overridden. As a backstop for records built by ``logging.makeLogRecord``
    (e.g. received over a socket), a ``PIIRedactingFilter`` goes on the root
    handlers and ``logging.lastResort``. Not covered: ``print``, direct writes to
    stderr, and custom attributes passed with ``extra=``.
    """
    global _log_masker
    _log_masker = masker or _log_masker or default_masker()
    current = logging.getLogRecordFactory()
    if not getattr(current, "_findial_pii", False):
        logging.setLogRecordFactory(_RedactingRecordFactory(current))
    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is not None and not any(isinstance(f, PIIRedactingFilter) for f in handler.filters):
            handler.addFilter(PIIRedactingFilter(_log_masker))


class _RedactingRecordFactory:
    """The log-record factory ``install_log_redaction`` sets: the one it replaced, then the masking."""

    _findial_pii = True

    def __init__(self, wrapped: Callable[..., logging.LogRecord]):
        self._wrapped = wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self._wrapped(*args, **kwargs)
        if _log_masker is not None:  # set before this factory is
            _redact_record(record, _log_masker)
        return record


def uninstall_log_redaction() -> None:
    """Undo ``install_log_redaction`` (for tests)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_findial_pii", False):
        logging.setLogRecordFactory(getattr(factory, "_wrapped"))
    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is None:
            continue
        for f in [f for f in handler.filters if isinstance(f, PIIRedactingFilter)]:
            handler.removeFilter(f)
