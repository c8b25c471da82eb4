"""Public banking NLU benchmarks as findial corpora: BANKING77 and NLU++ (banking domain).

The data (CC BY 4.0, PolyAI-LDN/task-specific-datasets) stay where they are: a
loader reads them from a datasets directory (``../shared/datasets`` from the
repository root by default, ``$FINDIAL_DATASETS`` or an explicit path to move it)
and builds, in memory, one-user-turn dialogues in the findial corpus format plus
a generated label book for them. Nothing is copied into the repository;
``Benchmark.write`` puts the splits and the label book in a directory of the
caller's choosing (a temporary one in ``benchmarks/public_benchmarks.py``).

Protocols (seeded, documented in each ``Benchmark.protocol``):

- BANKING77: the official ``test.csv`` is the test split; a validation split of
  ``val_fraction`` (10%) of ``train.csv`` is held out, stratified per intent.
- NLU++ banking: the paper's "large" regime as in the authors' ``data_loader.py``:
  train on 18 folds, test on a held-out pair of consecutive folds (``test_folds``,
  default 0 and 1, the first of its 10 splits); ``val_fraction`` of the training
  folds is held out (seeded) as validation. Slots become entities (``date`` ->
  ``DATE``, ``person_name`` -> ``PERSON``, a PII label). NLU++ intents are
  multi-label, which findial's single intent head does not model: each turn's
  ``intent`` is the placeholder ``nlupp_multi_label`` and the gold intent set is
  kept in the turn's extra field ``intents``.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import yaml

DATASETS_ENV = "FINDIAL_DATASETS"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASETS_DIR = "../shared/datasets"  # relative to the repository root
BANKING77_DIR = "banking77"
NLUPP_DIR = "nluplusplus-banking"
NLUPP_FOLDS = 20
NLUPP_PLACEHOLDER_INTENT = "nlupp_multi_label"
NLUPP_DOMAINS = ("banking", "general")  # ontology.json domains that belong to the banking data
SLOT_LABELS = {"person_name": "PERSON"}  # otherwise the slot name upper-cased
PII_ENTITY_LABELS = frozenset({"PERSON"})
MAX_REPORTED = 50


class BenchmarkDataError(ValueError):
    """A benchmark file is missing or malformed; lists every problem as ``file:where: field: message``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        super().__init__(f"{len(problems)} problem(s) in benchmark data:\n  {shown}{more}")


def resolve_datasets_dir(explicit: str | Path | None = None, configured: str | Path = DEFAULT_DATASETS_DIR) -> Path:
    """Where the public datasets are: ``explicit`` (a flag) > ``$FINDIAL_DATASETS`` > ``configured``.

    The first two are taken relative to the working directory, ``configured``
    relative to the repository root. The directory must exist.
    """
    chosen = explicit or os.environ.get(DATASETS_ENV)
    if chosen:
        path = Path(chosen).expanduser().resolve()
    else:
        path = Path(configured).expanduser()
        path = (path if path.is_absolute() else REPO_ROOT / path).resolve()
    if not path.is_dir():
        raise BenchmarkDataError([f"{path}: datasets directory not found (pass --datasets-dir or set {DATASETS_ENV})"])
    return path


@dataclass
class Benchmark:
    """One benchmark as findial dialogues: splits ``train``, ``validation``, ``test`` and its label book."""

    name: str
    splits: dict[str, list[dict]]
    ontology: dict
    protocol: str
    task: str  # the findial task it measures: "intent" or "ner"
    info: dict = field(default_factory=dict)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``ontology.yaml``, an empty ``glossary.yaml`` and ``<split>.jsonl`` (atomically); return their paths."""
        from findial.tracking import atomic_write_text

        out = Path(out_dir)
        paths = write_labelbook(self.ontology, out, header=f"Generated label book for {self.name}. {self.protocol}")
        for split, dialogues in self.splits.items():
            text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogues)
            paths[split] = atomic_write_text(out / f"{split}.jsonl", text)
        return paths


def write_labelbook(ontology: dict, out_dir: str | Path, header: str = "") -> dict[str, Path]:
    """Write a label book (``ontology.yaml``) and an empty glossary (``glossary.yaml``) for ``LabelBook.load``."""
    from findial.tracking import atomic_write_text

    out = Path(out_dir)
    comment = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    body = yaml.safe_dump(ontology, sort_keys=False, allow_unicode=True, width=120)
    return {
        "ontology": atomic_write_text(out / "ontology.yaml", comment + body),
        "glossary": atomic_write_text(
            out / "glossary.yaml", "# No glossary terms: no terminology labels.\nversion: 1\nterms: []\n"
        ),
    }


def _dialogue(did: str, text: str, intent: str, entities: list[dict], **extra) -> dict:
    turn = {"speaker": "user", "text": text, "intent": intent, "entities": entities, **extra}
    return {"id": did, "lang": "en", "turns": [turn]}


def split_off(items: list, fraction: float, seed: int, key: Callable | None = None) -> tuple[list, list]:
    """(kept, held out): ``fraction`` of the items held out, per ``key`` group when given (stratified), seeded."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction}: expected a value strictly between 0 and 1")
    groups: dict = defaultdict(list)
    for i, item in enumerate(items):
        groups[key(item) if key else None].append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for name in sorted(groups, key=str):
        idx = groups[name][:]
        rng.shuffle(idx)
        held.update(idx[: max(1, round(len(idx) * fraction))] if len(idx) > 1 else [])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def take(items: list, n: int | None, seed: int, key: Callable | None = None) -> list:
    """At most ``n`` items (seeded); with ``key``, drawn round-robin over the groups so every group appears early."""
    if n is None or n >= len(items):
        return list(items)
    rng = random.Random(seed)
    groups: dict = defaultdict(list)
    for i, item in enumerate(items):
        groups[key(item) if key else None].append(i)
    queues = []
    for name in sorted(groups, key=str):
        idx = groups[name][:]
        rng.shuffle(idx)
        queues.append(idx)
    rng.shuffle(queues)
    chosen: list[int] = []
    while len(chosen) < n:
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop())
    return [items[i] for i in sorted(chosen)]


def intent_of(dialogue: dict) -> str:
    return dialogue["turns"][0]["intent"]


# ------------------------------------------------------------------ BANKING77


def _read_banking77_csv(path: Path, intents: set[str], split: str) -> list[dict]:
    problems, out = [], []
    if not path.is_file():
        raise BenchmarkDataError([f"{path}: file not found"])
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"text", "category"} - set(reader.fieldnames or ())
        if missing:
            raise BenchmarkDataError([f"{path}:1: header: missing column(s) {sorted(missing)}"])
        end = reader.line_num  # the header's last line
        for n, row in enumerate(reader, start=1):
            where, end = f"{path}:{end + 1}", reader.line_num  # a quoted field may span lines: report the first
            text, cat = (row.get("text") or ""), (row.get("category") or "").strip()
            if not text.strip():
                problems.append(f"{where}: text: empty")
            elif cat not in intents:
                problems.append(f"{where}: category: {cat!r} is not in categories.json")
            else:
                out.append(_dialogue(f"banking77-{split}-{n:05d}", text, cat, []))
    if problems:
        raise BenchmarkDataError(problems)
    return out


def load_banking77(root: str | Path, val_fraction: float = 0.1, seed: int = 13) -> Benchmark:
    """BANKING77 (Casanueva et al., 2020): 77 intents; official test split; stratified validation from train."""
    base = Path(root) / BANKING77_DIR
    cats_path = base / "categories.json"
    try:
        intents = json.loads(cats_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BenchmarkDataError([f"{cats_path}: cannot read the intent list: {exc}"]) from exc
    if (
        not isinstance(intents, list)
        or not all(isinstance(i, str) for i in intents)
        or len(set(intents)) != len(intents)
    ):
        raise BenchmarkDataError([f"{cats_path}: expected a JSON list of distinct intent names"])
    train = _read_banking77_csv(base / "train.csv", set(intents), "train")
    test = _read_banking77_csv(base / "test.csv", set(intents), "test")
    train, val = split_off(train, val_fraction, seed, key=intent_of)
    ontology = {
        "version": 1,
        "languages": ["en"],
        "intents": [{"name": i, "domain": "banking77"} for i in intents],
        "entities": [],
        "emotions": [],
    }
    protocol = (
        f"BANKING77: official test.csv as test; {val_fraction:.0%} of train.csv held out as validation "
        f"(stratified per intent, seed {seed})."
    )
    return Benchmark(
        "banking77",
        {"train": train, "validation": val, "test": test},
        ontology,
        protocol,
        "intent",
        info={"intents": len(intents)},
    )


# ------------------------------------------------------------------ NLU++ (banking)


def _slot_label(slot: str) -> str:
    return SLOT_LABELS.get(slot, slot.upper())


def _read_nlupp_fold(path: Path, fold: int, slots: set[str], intents: set[str]) -> list[dict]:
    if not path.is_file():
        raise BenchmarkDataError([f"{path}: file not found"])
    try:
        examples = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BenchmarkDataError([f"{path}: not valid UTF-8 JSON: {exc}"]) from exc
    if not isinstance(examples, list):
        raise BenchmarkDataError([f"{path}: expected a JSON list of examples"])
    problems, out = [], []
    for i, ex in enumerate(examples):
        where = f"{path}: examples[{i}]"
        text = ex.get("text") if isinstance(ex, dict) else None
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{where}.text: required non-empty string")
            continue
        gold_intents = ex.get("intents") or []
        unknown = [x for x in gold_intents if x not in intents]
        if unknown:
            problems.append(f"{where}.intents: unknown intent(s) {unknown} (not a banking intent of ontology.json)")
        entities = []
        for slot, value in (ex.get("slots") or {}).items():
            span = value.get("span") if isinstance(value, dict) else None
            if slot not in slots:
                problems.append(f"{where}.slots.{slot}: not a banking slot of ontology.json")
            elif not (
                isinstance(span, list)
                and len(span) == 2
                and all(isinstance(s, int) for s in span)
                and 0 <= span[0] < span[1] <= len(text)
            ):
                problems.append(f"{where}.slots.{slot}.span: {span!r} is not a range [start, end) inside the text")
            elif text[span[0] : span[1]] != value.get("text"):
                problems.append(
                    f"{where}.slots.{slot}.span: text[{span[0]}:{span[1]}] is "
                    f"{text[span[0] : span[1]]!r}, the slot text is {value.get('text')!r}"
                )
            else:
                entities.append({"start": span[0], "end": span[1], "label": _slot_label(slot)})
        entities.sort(key=lambda e: (e["start"], e["end"]))
        out.append(
            _dialogue(
                f"nlupp-banking-f{fold:02d}-{i:04d}",
                text,
                NLUPP_PLACEHOLDER_INTENT,
                entities,
                intents=list(gold_intents),
            )
        )
    if problems:
        raise BenchmarkDataError(problems)
    return out


def load_nlupp_folds(root: str | Path) -> tuple[dict[int, list[dict]], dict]:
    """The 20 NLU++ banking folds as dialogues (fold -> list), and the generated label book."""
    base = Path(root) / NLUPP_DIR
    onto_path = base / "ontology.json"
    try:
        onto = json.loads(onto_path.read_text(encoding="utf-8"))
        intents = {k: v for k, v in onto["intents"].items() if set(v["domain"]) & set(NLUPP_DOMAINS)}
        slots = {k: v for k, v in onto["slots"].items() if set(v["domain"]) & set(NLUPP_DOMAINS)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BenchmarkDataError([f"{onto_path}: cannot read intents/slots with their domains: {exc!r}"]) from exc
    folds = {f: _read_nlupp_fold(base / f"fold{f}.json", f, set(slots), set(intents)) for f in range(NLUPP_FOLDS)}
    ontology = {
        "version": 1,
        "languages": ["en"],
        "intents": [
            {
                "name": NLUPP_PLACEHOLDER_INTENT,
                "domain": "placeholder",
                "description": "NLU++ intents are multi-label; the gold set is in each turn's `intents`",
            }
        ]
        + [
            {"name": k, "domain": "/".join(v["domain"]), "description": v.get("description", "")}
            for k, v in intents.items()
        ],
        "entities": [
            {
                "name": _slot_label(s),
                "slot": s,
                "terminology": False,
                **({"pii": True} if _slot_label(s) in PII_ENTITY_LABELS else {}),
            }
            for s in slots
        ],
        "emotions": [],
    }
    return folds, ontology


def load_nlupp_banking(
    root: str | Path, test_folds: Iterable[int] = (0, 1), val_fraction: float = 0.1, seed: int = 13
) -> Benchmark:
    """NLU++ banking (Casanueva et al., 2022) for slot labelling: train on 18 folds, test on ``test_folds``."""
    test_folds = sorted(set(int(f) for f in test_folds))
    bad = [f for f in test_folds if not 0 <= f < NLUPP_FOLDS]
    if not test_folds or bad or len(test_folds) == NLUPP_FOLDS:
        raise ValueError(f"test_folds={test_folds}: expected some (not all) fold numbers in 0..{NLUPP_FOLDS - 1}")
    folds, ontology = load_nlupp_folds(root)
    train = [d for f in range(NLUPP_FOLDS) if f not in test_folds for d in folds[f]]
    test = [d for f in test_folds for d in folds[f]]
    train, val = split_off(train, val_fraction, seed)
    train_folds = NLUPP_FOLDS - len(test_folds)
    protocol = (
        f"NLU++ banking, 'large' regime of the authors' data_loader.py: train on {train_folds} folds, "
        f"test on folds {test_folds}; {val_fraction:.0%} of the training folds held out as validation "
        f"(seed {seed}). Slots -> entities; intents are multi-label (not scored)."
    )
    return Benchmark(
        "nlupp-banking",
        {"train": train, "validation": val, "test": test},
        ontology,
        protocol,
        "ner",
        info={"test_folds": test_folds, "examples": sum(len(v) for v in folds.values())},
    )
