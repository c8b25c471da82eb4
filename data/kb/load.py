"""Load and validate a knowledge base (``articles.jsonl``) and its labelled query set (``queries.jsonl``).

The format is specified in ``data/kb/README.md``. As with corpus files (``findial.data.corpus``), every
problem is reported as ``file:line: field: message`` and a file with any bad record is rejected whole.
``kb_version`` is a stable content hash of the articles, for serving to report which KB it answers from.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..corpus import Problem, ProblemsError, json_lines
from ..labelbook import Glossary, LabelBook

KB_DIR = Path(__file__).resolve().parent
DEFAULT_ARTICLES = KB_DIR / "articles.jsonl"
DEFAULT_QUERIES = KB_DIR / "queries.jsonl"
LANGS = ("zh", "en")
CATEGORIES = ("product", "fee", "rate", "procedure", "policy")
SPLITS = ("validation", "test")
MAX_TITLE, MAX_BODY, MAX_QUERY = 80, 1500, 500
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# The disclaimer a reference_only article's body must carry, per language (matched case-insensitively).
DISCLAIMER = {"zh": "仅供参考", "en": "for reference only"}
# A quoted figure that may change: a percentage, basis points or an amount of money.
FIGURE = re.compile(
    r"\d(?:[\d,.]*\d)?\s*(?:[%％‰]|个?基点|bps?\b|basis points?|[万千亿]?(?:元|港元|港币|美元|人民币)|yuan\b"
    r"|dollars?\b|HKD|USD|RMB|CNY)|(?:HK\$|US\$|\$|¥|￥|HKD|USD|RMB|CNY)\s?\d",
    re.I,
)


class KBError(ProblemsError):
    """One or more records of a knowledge-base or query file are invalid."""

    what = "knowledge base"


def _records(path: Path, what: str, check) -> list[dict]:
    """Run ``check(record, fail)`` on every record of a JSON Lines file; ids must be unique ASCII."""
    if not path.is_file():
        raise KBError([Problem(str(path), 0, "(file)", "file not found")])
    problems: list[Problem] = []
    out: list[dict] = []
    seen: dict[str, int] = {}
    for lineno, rec, bad in json_lines(path):

        def fail(field: str, message: str, _line=lineno) -> None:
            problems.append(Problem(str(path), _line, field, message))

        if bad or not isinstance(rec, dict):
            fail("(line)", bad or f"expected a JSON object, got {type(rec).__name__}")
            continue
        before = len(problems)
        rid = rec.get("id")
        if not isinstance(rid, str) or not ID.fullmatch(rid):
            fail("id", f"{rid!r} is not an ASCII id (letters, digits, . _ -; at most 64)")
        elif rid in seen:
            fail("id", f"duplicate id {rid!r} (first on line {seen[rid]})")
        else:
            seen[rid] = lineno
        if rec.get("lang") not in LANGS:
            fail("lang", f"{rec.get('lang')!r} is not one of {list(LANGS)}")
        check(rec, fail)
        if len(problems) == before:
            out.append(rec)
    if not out and not problems:
        problems.append(Problem(str(path), 0, "(file)", f"no {what}: the file is empty"))
    if problems:
        raise KBError(problems)
    return out


def _text(rec: dict, field: str, limit: int, fail) -> str:
    value = rec.get(field)
    if not isinstance(value, str) or not value.strip():
        fail(field, "required non-empty string")
        return ""
    if len(value) > limit:
        fail(field, f"{len(value)} characters; at most {limit}")
    return value


def load_kb(path: str | Path = DEFAULT_ARTICLES, glossary: Glossary | None = None) -> list[dict]:
    """Read and validate a knowledge-base file; raise KBError listing every problem."""
    glossary = Glossary.load() if glossary is None else glossary

    def check(a: dict, fail) -> None:
        _text(a, "title", MAX_TITLE, fail)
        body = _text(a, "body", MAX_BODY, fail)
        if a.get("category") not in CATEGORIES:
            fail("category", f"{a.get('category')!r} is not one of {list(CATEGORIES)}")
        listed = 0
        for field, label in (("products", "PRODUCT"), ("terms", "TERM")):
            ids = a.get(field)
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                fail(field, "required list of glossary ids (may be empty)")
                continue
            listed += len(ids)
            for i in ids:
                if i not in glossary.terms:
                    fail(field, f"unknown glossary id {i!r}")
                elif glossary.label_of(i) != label:
                    fail(field, f"{i!r} is a {glossary.label_of(i)}, not a {label}")
            if len(set(ids)) != len(ids):
                fail(field, "an id is listed twice")
        if listed == 0 and isinstance(a.get("products"), list) and isinstance(a.get("terms"), list):
            fail("products", "products and terms are both empty; list at least one glossary id")
        date = a.get("effective_date")
        try:
            if not (isinstance(date, str) and DATE.fullmatch(date)):
                raise ValueError
            dt.date.fromisoformat(date)
        except ValueError:
            fail("effective_date", f"{date!r} is not a date YYYY-MM-DD")
        ref = a.get("reference_only")
        if ref is not None and not isinstance(ref, bool):
            fail("reference_only", "must be true or false")
        elif a.get("category") == "rate" and ref is not True:
            fail("reference_only", "required true on rate articles")
        elif ref is None and (m := FIGURE.search(body)):
            fail(
                "reference_only",
                f"the body quotes {m.group(0)!r}: set true if the figure may change, false if it cannot",
            )
        if ref is True and body and a.get("lang") in DISCLAIMER and DISCLAIMER[a["lang"]] not in body.casefold():
            fail("body", f"reference_only: the body must say the figures are {DISCLAIMER[a['lang']]!r}")

    return _records(Path(path), "articles", check)


def load_queries(
    path: str | Path = DEFAULT_QUERIES,
    articles: list[dict] | None = None,
    split: str | None = None,
    labels: LabelBook | None = None,
) -> list[dict]:
    """Read and validate a labelled query file against ``articles`` (default: the bundled KB); with
    ``split``, only that split's queries. An ``intent``, where a query has one, must be an intent of
    ``labels`` (default: the bundled label book, ``data/spec/ontology.yaml``)."""
    articles = load_kb() if articles is None else articles
    lang_of = {a["id"]: a["lang"] for a in articles}
    if split is not None and split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")
    labels = LabelBook.load() if labels is None else labels

    def check(q: dict, fail) -> None:
        _text(q, "query", MAX_QUERY, fail)
        if "intent" in q and q["intent"] not in labels.intents:
            fail("intent", f"unknown intent {q['intent']!r} (not in the label book {labels.path})")
        if q.get("split") not in SPLITS:
            fail("split", f"{q.get('split')!r} is not one of {list(SPLITS)}")
        answers: Any = q.get("answers")
        if not isinstance(answers, list) or not answers:
            return fail("answers", "required non-empty list of article ids")
        for a in answers:
            if not isinstance(a, str) or a not in lang_of:
                fail("answers", f"unknown article id {a!r}")
            elif lang_of[a] != q.get("lang"):
                fail("answers", f"article {a!r} is {lang_of[a]}, the query is {q.get('lang')}")
        if len(set(map(str, answers))) != len(answers):
            fail("answers", "an article is listed twice")

    queries = _records(Path(path), "queries", check)
    return [q for q in queries if split is None or q["split"] == split]


def kb_version(articles: list[dict]) -> str:
    """Stable content hash (12 hex characters) of a KB: independent of record order and key order."""
    h = hashlib.sha256()
    for a in sorted(articles, key=lambda a: a["id"]):
        h.update(json.dumps(a, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()[:12]
