"""Build the natural corpus (``{train,validation,test}.jsonl`` beside this file) from the writers' sources,
and summarise a set of dialogues against the label book (coverage, lengths, phenomena)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import yaml

from findial.data.corpus import load_corpus, user_turns
from findial.data.labelbook import Glossary, LabelBook

from .authoring import PHENOMENA, check_or_raise

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "sources"
SPLITS = HERE / "splits.yaml"


def summary(dialogues: list[dict], labelbook: LabelBook, glossary: Glossary) -> dict:
    users = [t for d in dialogues for _, t in user_turns(d)]
    n_user = Counter(sum(1 for _ in user_turns(d)) for d in dialogues)
    intents = Counter(t["intent"] for t in users)
    labels = Counter(e["label"] for t in users for e in t["entities"])
    terms = {e["term_id"] for t in users for e in t["entities"] if e.get("term_id")}
    n = max(len(dialogues), 1)
    return {
        "dialogues": len(dialogues),
        "user_turns": len(users),
        "zh_share": round(sum(d["lang"] == "zh" for d in dialogues) / n, 3),
        "share_3_to_7_user_turns": round(sum(v for k, v in n_user.items() if 3 <= k <= 7) / n, 3),
        "user_turns_per_dialogue": dict(sorted(n_user.items())),
        "intents_missing": [i for i in labelbook.intents if i not in intents],
        "emotions": {e: sum(t.get("emotion") == e for t in users) for e in labelbook.emotions},
        "entity_labels": {lab: labels[lab] for lab in labelbook.entities},
        "glossary_terms_used": len(terms),
        "glossary_terms_total": len(glossary.terms),
        "phenomena": {p: sum(p in (t.get("phenomena") or ()) for t in users) for p in PHENOMENA},
    }


def build(labelbook: LabelBook, glossary: Glossary, out_dir: Path = HERE) -> dict:
    """Convert every writer's sources and write one file per split (atomically); returns per-split summaries."""
    from findial.tracking import atomic_write_text

    splits = yaml.safe_load(SPLITS.read_text(encoding="utf-8"))
    writers = [w for ws in splits.values() for w in ws]
    if len(writers) != len(set(writers)):
        raise ValueError(f"{SPLITS}: a writer is in two splits")
    result = {}
    for split, ws in splits.items():
        dialogues = check_or_raise([SOURCES / w for w in ws if (SOURCES / w).is_dir()], labelbook, glossary)
        text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogues)
        path = Path(out_dir) / f"{split}.jsonl"
        atomic_write_text(path, text)
        load_corpus(path, labelbook, glossary)  # the corpus loader accepts what was written
        result[split] = summary(dialogues, labelbook, glossary)
    return result
