"""Compliance rules for generated responses: forbidden promises and requests, as regular expressions.

The rule list is a YAML file (``configs/generation_rules/default.yaml`` documents the format). A rule
fires when one of its ``zh`` or ``en`` patterns matches the NFKC form of the text, unless a negation
cue ("不能", "cannot", ...) stands shortly before the match in the same clause. Hits come back as
flags ``compliance:<rule id>``.
"""

from __future__ import annotations

import importlib.resources
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_RULES = Path(str(importlib.resources.files("findial.configs") / "generation_rules" / "default.yaml"))
LANGS = ("zh", "en")
_CLAUSE_END = re.compile(r"[，。,.;；!！?？:：\n]")


class RuleError(ValueError):
    """A rule file is malformed."""


@dataclass(frozen=True)
class RuleHit:
    rule: str
    lang: str
    start: int
    end: int
    text: str

    @property
    def flag(self) -> str:
        return f"compliance:{self.rule}"


@dataclass
class Rule:
    id: str
    description: str
    patterns: dict[str, list[re.Pattern]]


@dataclass
class RuleSet:
    rules: list[Rule]
    negations: dict[str, list[str]] = field(default_factory=dict)
    negation_window: dict[str, int] = field(default_factory=dict)
    fallback: dict[str, str] = field(default_factory=dict)
    source: str = "<dict>"

    @classmethod
    def load(cls, path: str | Path = DEFAULT_RULES) -> "RuleSet":
        path = Path(path)
        if not path.is_file():
            raise RuleError(f"{path}: rule file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise RuleError(f"{path}: not valid UTF-8 YAML: {exc}") from exc
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<dict>") -> "RuleSet":
        if not isinstance(raw, dict) or not isinstance(raw.get("rules"), list):
            raise RuleError(f"{source}: expected a mapping with a 'rules' list")
        rules, seen = [], set()
        for i, r in enumerate(raw["rules"]):
            where = f"{source}: rules[{i}]"
            if not isinstance(r, dict) or not isinstance(r.get("id"), str) or not r["id"]:
                raise RuleError(f"{where}.id: required non-empty string")
            if r["id"] in seen:
                raise RuleError(f"{where}.id: duplicate rule id {r['id']!r}")
            seen.add(r["id"])
            patterns: dict[str, list[re.Pattern[str]]] = {}
            for lang in LANGS:
                items = r.get(lang) or []
                if not isinstance(items, list):
                    raise RuleError(f"{where}.{lang}: must be a list of regular expressions")
                patterns[lang] = []
                for j, p in enumerate(items):
                    try:
                        patterns[lang].append(re.compile(str(p), re.IGNORECASE))
                    except re.error as exc:
                        raise RuleError(f"{where}.{lang}[{j}]: bad regular expression {p!r}: {exc}") from exc
            if not any(patterns.values()):
                raise RuleError(f"{where}: no zh or en pattern")
            rules.append(Rule(r["id"], str(r.get("description", "")), patterns))
        window = raw.get("negation_window", 0)
        window = window if isinstance(window, dict) else {lang: window for lang in LANGS}
        return cls(
            rules=rules,
            negations={k: list(v or []) for k, v in (raw.get("negations") or {}).items()},
            negation_window={k: int(v) for k, v in window.items()},
            fallback=dict(raw.get("fallback") or {}),
            source=source,
        )

    def to_dict(self) -> dict:
        """The plain form (what a model package stores beside the weights)."""
        return {
            "version": 1,
            "negation_window": dict(self.negation_window),
            "negations": dict(self.negations),
            "fallback": dict(self.fallback),
            "rules": [
                {
                    "id": r.id,
                    "description": r.description,
                    **{lang: [p.pattern for p in ps] for lang, ps in r.patterns.items()},
                }
                for r in self.rules
            ],
        }

    def _negated(self, text: str, start: int, lang: str) -> bool:
        window = self.negation_window.get(lang, 0)
        cues = self.negations.get(lang) or []
        if not window or not cues:
            return False
        before = text[max(0, start - window) : start]
        before = _CLAUSE_END.split(before)[-1]  # the window stops at the clause boundary
        if lang == "zh":
            return any(c in before for c in cues)
        return any(re.search(rf"(?<!\w){re.escape(c)}(?!\w)", before, re.IGNORECASE) for c in cues)

    def check(self, text: str) -> list[RuleHit]:
        """Every rule that fires on ``text`` (first un-negated match per rule)."""
        norm = unicodedata.normalize("NFKC", text)
        hits = []
        for rule in self.rules:
            hit = self._first_hit(rule, norm)
            if hit:
                hits.append(hit)
        return hits

    def _first_hit(self, rule: Rule, text: str) -> RuleHit | None:
        for lang, patterns in rule.patterns.items():
            for rx in patterns:
                for m in rx.finditer(text):
                    if not self._negated(text, m.start(), lang):
                        return RuleHit(rule.id, lang, m.start(), m.end(), m.group(0))
        return None

    def flags(self, text: str) -> list[str]:
        return [h.flag for h in self.check(text)]
