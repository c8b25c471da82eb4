"""The grounded responder as a registrable response package: its settings, not the KB itself.

A grounded package is a directory with ``findial_model.json``::

    {"task": "response", "responder": "grounded", "format_version": 1, "threshold": 0.968693,
     "max_sentences": 3, "k": 5, "fusion": "weighted", "weight": 0.8, "encoder": "e5-small:1a2b3c4d"}

The knowledge base stays outside the package: it is updated several times a week without a new version, and
serving reloads it without a restart (``serving/kb.py``); every reply names the KB version that answered.
What a version fixes is how it answers (confidence threshold, sentences per answer, retrieval depth and fusion) and
which encoder it was evaluated with (``model_id`` of the embedding model; serving refuses another one).
``findial run`` registers one beside the NLU bundle, evaluates it on the KB's test queries and promotes it
through the response gates of ``configs/policy.yaml`` like any model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from findial import tracking

from .grounded import DEFAULT_THRESHOLD, MAX_SENTENCES
from .index import DEFAULT_FUSION, DEFAULT_WEIGHT, fuse

META = "findial_model.json"
FORMAT_VERSION = 1


class PackageError(ValueError):
    pass


@dataclass(frozen=True)
class GroundedSettings:
    threshold: float = DEFAULT_THRESHOLD  # the best article's fused score below which the turn is handed off
    max_sentences: int = MAX_SENTENCES
    k: int = 5  # articles retrieved per turn
    fusion: str = DEFAULT_FUSION  # how dense and BM25 scores combine (findial.data.kb.index.fuse)
    weight: float = DEFAULT_WEIGHT
    encoder: str | None = None  # model_id of the embedding model (None: whatever serving is given)

    def __post_init__(self):
        import numpy as np

        try:
            fuse(np.zeros(1), np.zeros(1), self.fusion, self.weight)
        except ValueError as exc:
            raise PackageError(f"fusion/weight: {exc}") from None
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise PackageError(f"threshold: {self.threshold} is not in [0, 1]")
        for key in ("max_sentences", "k"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PackageError(f"{key}: {value!r} is not a positive integer")


def is_grounded(path: str | Path) -> bool:
    meta = Path(path) / META
    return meta.is_file() and json.loads(meta.read_text(encoding="utf-8")).get("responder") == "grounded"


def save(out_dir: str | Path, settings: GroundedSettings) -> Path:
    """Write the package directory atomically (a failed write leaves nothing at ``out_dir``)."""
    meta = {"task": "response", "responder": "grounded", "format_version": FORMAT_VERSION, **asdict(settings)}
    with tracking.atomic_directory(out_dir) as tmp:
        (Path(tmp) / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


def load(path: str | Path) -> GroundedSettings:
    meta_path = Path(path) / META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PackageError(f"{meta_path}: not a grounded responder package ({exc})") from None
    if meta.get("responder") != "grounded":
        raise PackageError(f"{meta_path}: responder: {meta.get('responder')!r}, not 'grounded'")
    if meta.get("format_version") != FORMAT_VERSION:
        raise PackageError(
            f"{meta_path}: format_version {meta.get('format_version')!r}, this findial reads {FORMAT_VERSION}"
        )
    known = set(GroundedSettings.__dataclass_fields__)
    unknown = sorted(set(meta) - known - {"task", "responder", "format_version"})
    if unknown:
        raise PackageError(f"{meta_path}: unknown key(s) {', '.join(unknown)}")
    try:
        return GroundedSettings(**{k: meta[k] for k in known if k in meta})
    except PackageError as exc:
        raise PackageError(f"{meta_path}: {exc}") from None


def answerer(settings: GroundedSettings, retriever, articles: list[dict], glossary=None):
    """The ``GroundedAnswerer`` these settings describe over ``retriever`` (its fusion set from them)."""
    from .grounded import GroundedAnswerer

    retriever.fusion, retriever.weight = settings.fusion, settings.weight
    return GroundedAnswerer(retriever, articles, glossary, settings.threshold, settings.max_sentences, settings.k)
