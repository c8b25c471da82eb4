"""Load and validate corpus files in the findial JSON Lines format.

The format is specified in ``data/spec/corpus-format.md``. Every problem is
reported with the file, the line and the field; a file with any bad record is
rejected as a whole (never silently dropped, never half-loaded).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .labelbook import Glossary, LabelBook

MAX_REPORTED = 50
# Limits that keep one bad record from exhausting memory (a dialogue is a few kB; the longest bundled turn is
# a few hundred characters): a longer line, turn or dialogue is an error naming it.
MAX_LINE_BYTES = 1 << 20
MAX_TEXT_CHARS = 4000
MAX_TURNS = 200


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


class ProblemsError(ValueError):
    """Records of a file are invalid: every problem, as ``file:line: field: message`` (the first MAX_REPORTED)."""

    what = "file"

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        shown = "\n  ".join(str(p) for p in problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        super().__init__(f"{len(problems)} problem(s) in {self.what}:\n  {shown}{more}")


class CorpusError(ProblemsError):
    """One or more records of a corpus file are invalid."""

    what = "corpus"


class _Checker:
    def __init__(self, path: str, labelbook: LabelBook | None, glossary: Glossary | None, require_nlu: bool):
        self.path, self.lb, self.gl, self.require_nlu = path, labelbook, glossary, require_nlu
        self.problems: list[Problem] = []
        self.line = 0

    def fail(self, field: str, message: str) -> None:
        self.problems.append(Problem(self.path, self.line, field, message))

    def check_dialogue(self, d: Any) -> None:
        if not isinstance(d, dict):
            return self.fail("(record)", f"expected a JSON object, got {type(d).__name__}")
        if not isinstance(d.get("id"), str) or not d.get("id"):
            self.fail("id", "required non-empty string")
        lang = d.get("lang")
        if not isinstance(lang, str) or (self.lb and self.lb.languages and lang not in self.lb.languages):
            allowed = list(self.lb.languages) if self.lb and self.lb.languages else "a language code"
            self.fail("lang", f"{lang!r} is not one of {allowed}")
        if "branch" in d and not isinstance(d["branch"], str):
            self.fail("branch", "must be a string")
        turns = d.get("turns")
        if not isinstance(turns, list) or not turns:
            return self.fail("turns", "required non-empty list")
        if len(turns) > MAX_TURNS:
            return self.fail("turns", f"{len(turns)} turns; at most {MAX_TURNS} per dialogue")
        for i, turn in enumerate(turns):
            self.check_turn(f"turns[{i}]", turn)

    def check_turn(self, where: str, t: Any) -> None:
        if not isinstance(t, dict):
            return self.fail(where, "expected an object")
        speaker = t.get("speaker")
        if speaker not in ("user", "agent"):
            self.fail(f"{where}.speaker", f"{speaker!r} is not 'user' or 'agent'")
        text = t.get("text")
        if not isinstance(text, str) or not text.strip():
            return self.fail(f"{where}.text", "required non-empty string")
        if len(text) > MAX_TEXT_CHARS:
            return self.fail(f"{where}.text", f"{len(text)} characters; at most {MAX_TEXT_CHARS} per turn")
        if speaker != "user":
            return
        lb = self.lb
        intent = t.get("intent")
        if intent is None:
            if self.require_nlu:
                self.fail(f"{where}.intent", "required on user turns of NLU data")
        elif lb and intent not in lb.intents:
            self.fail(f"{where}.intent", f"unknown intent {intent!r}")
        emotion = t.get("emotion")
        if emotion is not None and lb and emotion not in lb.emotions:
            self.fail(f"{where}.emotion", f"unknown emotion {emotion!r}")
        ents = t.get("entities")
        if ents is None:
            if self.require_nlu:
                self.fail(f"{where}.entities", "required on user turns of NLU data (may be empty)")
        elif not isinstance(ents, list):
            self.fail(f"{where}.entities", "must be a list")
        else:
            self.check_entities(where, text, ents)
        state = t.get("state")
        if state is not None:
            self.check_state(f"{where}.state", state)

    def check_entities(self, where: str, text: str, ents: list) -> None:
        spans = []
        for j, e in enumerate(ents):
            f = f"{where}.entities[{j}]"
            if not isinstance(e, dict):
                self.fail(f, "expected an object")
                continue
            start, end, label = e.get("start"), e.get("end"), e.get("label")
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
                self.fail(f, f"span [{start}, {end}) is not a non-empty range inside the text (length {len(text)})")
                continue
            if not text[start:end].strip():
                self.fail(f, f"span [{start}, {end}) covers only whitespace")
            if self.lb and label not in self.lb.entities:
                self.fail(f"{f}.label", f"unknown entity label {label!r}")
            term_id = e.get("term_id")
            if self.lb and label in self.lb.terminology_labels:
                if term_id is None:
                    self.fail(f"{f}.term_id", f"required on {label} mentions")
                elif self.gl and term_id not in self.gl.terms:
                    self.fail(f"{f}.term_id", f"unknown glossary term {term_id!r}")
                elif self.gl and self.gl.label_of(term_id) != label:
                    self.fail(f"{f}.term_id", f"{term_id!r} is a {self.gl.label_of(term_id)}, not a {label}")
            spans.append((start, end, j))
        spans.sort()
        for (s1, e1, j1), (s2, e2, j2) in zip(spans, spans[1:]):
            if s2 < e1:
                self.fail(f"{where}.entities[{j2}]", f"span [{s2}, {e2}) overlaps entities[{j1}] [{s1}, {e1})")

    def check_state(self, f: str, state: Any) -> None:
        if not isinstance(state, dict):
            return self.fail(f, "must be an object")
        for slot, value in state.items():
            if self.lb and slot not in self.lb.state_slots:
                self.fail(f"{f}.{slot}", f"unknown state slot {slot!r}")
            elif not isinstance(value, str):
                self.fail(f"{f}.{slot}", "value must be a string")
            elif (
                self.lb
                and self.gl
                and self.lb.state_slots[slot] in self.lb.terminology_labels
                and value not in self.gl.terms
            ):
                self.fail(f"{f}.{slot}", f"unknown glossary term {value!r}")


def json_lines(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterable[tuple[int, Any, str | None]]:
    """``(line number, record, None)`` per non-blank line of a JSON Lines file, or ``(line number, None,
    message)`` for a line that is too long (never read whole), not valid UTF-8 or not JSON."""
    with Path(path).open("rb") as fh:
        lineno = 0
        while raw := fh.readline(max_line_bytes + 1):
            lineno += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                while (rest := fh.readline(1 << 16)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of the line
                yield lineno, None, f"line longer than {max_line_bytes} bytes"
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield lineno, None, f"not valid JSON: {exc.msg} at column {exc.colno}"
            except RecursionError:
                yield lineno, None, "not valid JSON: nested too deeply"


def load_corpus(
    path: str | Path, labelbook: LabelBook | None = None, glossary: Glossary | None = None, require_nlu: bool = True
) -> list[dict]:
    """Read and validate one JSON Lines corpus file; raise CorpusError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError([Problem(str(path), 0, "(file)", "file not found")])
    checker = _Checker(str(path), labelbook, glossary, require_nlu)
    dialogues: list[dict] = []
    seen: dict[str, int] = {}
    for lineno, record, problem in json_lines(path):
        checker.line = lineno
        if problem:
            checker.fail("(line)", problem)
            continue
        before = len(checker.problems)
        checker.check_dialogue(record)
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            if record["id"] in seen:
                checker.fail("id", f"duplicate id {record['id']!r} (first on line {seen[record['id']]})")
            seen.setdefault(record["id"], lineno)
        if len(checker.problems) == before:
            dialogues.append(record)
    if not dialogues and not checker.problems:
        checker.line = 0
        checker.fail("(file)", "no dialogues: the file is empty")
    if checker.problems:
        raise CorpusError(checker.problems)
    return dialogues


def corpus_files(spec) -> list[tuple[str, int]]:
    """``(path, repeat)`` pairs of a ``data.train_file`` / ``data.val_file`` value: one path, or a list whose
    entries are paths or ``{path: ..., repeat: N}`` (the file's dialogues are read N times: a weight)."""
    entries = [spec] if isinstance(spec, (str, Path)) else list(spec)
    out = []
    for entry in entries:
        if isinstance(entry, (str, Path)):
            out.append((str(entry), 1))
            continue
        try:
            path, repeat = str(entry["path"]), int(entry.get("repeat", 1))
        except (TypeError, KeyError, ValueError, AttributeError):
            raise ValueError(f"corpus file entry {entry!r}: expected a path or {{path: ..., repeat: N}}") from None
        if repeat < 1:
            raise ValueError(f"corpus file entry {entry!r}: repeat must be >= 1")
        out.append((path, repeat))
    if not out:
        raise ValueError("no corpus file given")
    return out


def load_corpora(spec, labelbook: LabelBook | None = None, glossary: Glossary | None = None) -> list[dict]:
    """The dialogues of every file of ``spec`` (``corpus_files``), each validated by ``load_corpus``,
    in order, a file repeated as often as it says."""
    dialogues: list[dict] = []
    for path, repeat in corpus_files(spec):
        dialogues += load_corpus(path, labelbook, glossary) * repeat
    return dialogues


def user_turns(dialogue: dict) -> Iterable[tuple[int, dict]]:
    return ((i, t) for i, t in enumerate(dialogue["turns"]) if t["speaker"] == "user")


def fingerprint(dialogues: list[dict], *extra_files: str | Path) -> str:
    """Stable content hash of a corpus (record order matters) and of the label files used with it."""
    h = hashlib.sha256()
    for d in dialogues:
        h.update(json.dumps(d, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        h.update(b"\n")
    for f in extra_files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def dialogue_task(intents, non_task_intents=()) -> str | None:
    """The dialogue's task so far: the last of ``intents`` (oldest first) outside ``non_task_intents``
    (a greeting, a "yes", a thank-you does not change what the customer came for)."""
    return next((i for i in reversed(list(intents)) if i and i not in non_task_intents), None)


def turn_records(dialogues: list[dict], context_turns: int = 3, non_task_intents=()) -> list[dict]:
    """Flatten dialogues into one record per user turn with its preceding turns as context.

    ``previous_intent`` is the dialogue's task before the turn (``dialogue_task`` over the annotated
    intents of the earlier user turns): the last one, skipping ``non_task_intents``."""
    rows = []
    for d in dialogues:
        history: list[tuple[str, str]] = []
        previous_intent = None
        for i, t in enumerate(d["turns"]):
            if t["speaker"] == "user":
                rows.append(
                    {
                        "dialogue_id": d["id"],
                        "turn_index": i,
                        "lang": d["lang"],
                        "branch": d.get("branch", ""),
                        "text": t["text"],
                        "context": [f"{s}: {x}" for s, x in history[-context_turns:]] if context_turns else [],
                        "intent": t.get("intent"),
                        "emotion": t.get("emotion"),
                        "entities": [
                            {"start": e["start"], "end": e["end"], "label": e["label"], "term_id": e.get("term_id")}
                            for e in t.get("entities") or []
                        ],
                        "state": dict(t.get("state") or {}),
                        "previous_intent": previous_intent,
                    }
                )
                previous_intent = dialogue_task([previous_intent, t.get("intent")], non_task_intents)
            history.append((t["speaker"], t["text"]))
    return rows


def to_dataset(dialogues: list[dict], context_turns: int = 3, non_task_intents=()):
    """The in-memory form used by training: a Hugging Face `datasets.Dataset` of user turns."""
    import datasets

    rows = turn_records(dialogues, context_turns, non_task_intents)
    for r in rows:  # Arrow needs a fixed schema: state becomes a JSON string
        r["state"] = json.dumps(r["state"], ensure_ascii=False, sort_keys=True)
    return datasets.Dataset.from_list(rows)
