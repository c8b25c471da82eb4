"""The label book (intents, entities, emotions, state slots) and the glossary.

Both are plain YAML files (see ``data/spec``); the bundled ones are the default,
a user may point the config at their own. Nothing else in findial hard-codes a
label name.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

SPEC_DIR = Path(__file__).resolve().parent / "spec"
DEFAULT_ONTOLOGY = SPEC_DIR / "ontology.yaml"
DEFAULT_GLOSSARY = SPEC_DIR / "glossary.yaml"


class LabelBookError(ValueError):
    """A label book or glossary file is malformed."""


def fold(text: str) -> str:
    """Case, width and whitespace folding used for glossary look-ups.

    NFKC maps full-width Latin and digits to half-width (ＬＰＲ -> LPR) and
    roman-numeral compatibility forms (Ⅱ -> II); casefold handles case.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(text.replace("-", " ").split())


@dataclass(frozen=True)
class Term:
    id: str
    label: str
    domain: str
    zh: str
    en: str
    zh_aliases: tuple[str, ...] = ()
    en_aliases: tuple[str, ...] = ()

    @property
    def surface_forms(self) -> tuple[str, ...]:
        return (self.zh, self.en, *self.zh_aliases, *self.en_aliases)


@dataclass
class Glossary:
    terms: dict[str, Term]
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path = DEFAULT_GLOSSARY) -> "Glossary":
        path = Path(path)
        raw = _read_yaml(path)
        terms: dict[str, Term] = {}
        for i, t in enumerate(raw.get("terms") or []):
            missing = [k for k in ("id", "label", "zh", "en") if k not in t]
            if missing:
                raise LabelBookError(f"{path}: terms[{i}]: missing field(s) {missing}")
            if t["id"] in terms:
                raise LabelBookError(f"{path}: terms[{i}].id: duplicate term id {t['id']!r}")
            terms[t["id"]] = Term(
                id=t["id"],
                label=t["label"],
                domain=t.get("domain", "general"),
                zh=t["zh"],
                en=t["en"],
                zh_aliases=tuple(t.get("zh_aliases") or ()),
                en_aliases=tuple(t.get("en_aliases") or ()),
            )
        return cls(terms=terms, path=path)

    @cached_property
    def alias_index(self) -> dict[str, str]:
        """folded surface form -> term id (a form belongs to exactly one id)."""
        index: dict[str, str] = {}
        for term in self.terms.values():
            for form in term.surface_forms:
                key = fold(form)
                owner = index.setdefault(key, term.id)
                if owner != term.id:
                    raise LabelBookError(
                        f"{self.path}: surface form {form!r} listed under both {owner!r} and {term.id!r}"
                    )
        return index

    def lookup(self, surface: str) -> str | None:
        """Exact (folded) look-up of a surface form; None when unknown."""
        return self.alias_index.get(fold(surface))

    def label_of(self, term_id: str) -> str:
        return self.terms[term_id].label


@dataclass
class LabelBook:
    intents: list[str]
    entities: list[str]
    emotions: list[str]
    state_slots: dict[str, str]  # slot -> entity label it is filled from
    terminology_labels: frozenset[str]
    pii_labels: frozenset[str]
    intent_domains: dict[str, str] = field(default_factory=dict)
    languages: tuple[str, ...] = ()
    version: int | str | None = None
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path = DEFAULT_ONTOLOGY) -> "LabelBook":
        path = Path(path)
        raw = _read_yaml(path)
        try:
            intents = [i["name"] if isinstance(i, dict) else str(i) for i in raw["intents"]]
            ents = raw["entities"]
            entities = [e["name"] if isinstance(e, dict) else str(e) for e in ents]
            emotions = [str(e) for e in raw.get("emotions") or []]
            slots = {k: (v or {}).get("from", k.upper()) for k, v in (raw.get("state_slots") or {}).items()}
        except (KeyError, TypeError) as exc:
            raise LabelBookError(f"{path}: missing or malformed section: {exc}") from exc
        for name, seq in (("intents", intents), ("entities", entities), ("emotions", emotions)):
            dup = {x for x in seq if seq.count(x) > 1}
            if dup:
                raise LabelBookError(f"{path}: {name}: duplicate name(s) {sorted(dup)}")
        for slot, label in slots.items():
            if label not in entities:
                raise LabelBookError(f"{path}: state_slots.{slot}.from: unknown entity label {label!r}")
        flags = {e["name"]: e for e in ents if isinstance(e, dict)}
        return cls(
            intents=intents,
            entities=entities,
            emotions=emotions,
            state_slots=slots,
            terminology_labels=frozenset(n for n, e in flags.items() if e.get("terminology")),
            pii_labels=frozenset(n for n, e in flags.items() if e.get("pii")),
            intent_domains={i["name"]: i.get("domain", "") for i in raw["intents"] if isinstance(i, dict)},
            languages=tuple(raw.get("languages") or ()),
            version=raw.get("version"),
            path=path,
        )

    @cached_property
    def bio_tags(self) -> list[str]:
        """Token tags for NER: O, then B-/I- for every entity label."""
        return ["O"] + [f"{p}-{e}" for e in self.entities for p in ("B", "I")]


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise LabelBookError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LabelBookError(f"{path}: not valid UTF-8 YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise LabelBookError(f"{path}: expected a mapping at the top level")
    return raw
