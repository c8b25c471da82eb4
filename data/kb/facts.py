"""The checkable facts of a reply, and whether its sources state them: ``check_grounding``.

A fact is a number with its unit: an amount of money (``100元``, ``HK$1,000``, ``5万元``, ``USD 50``), a
percentage or basis points (``3.5%``, ``百分之五``, ``20 bps``), a count of days, working days, hours,
months or years (``三个工作日``, ``7 days``), or a date (``2025-01-01``, ``2025年1月1日``, ``1 January 2025``).
A number without a unit is a fact too (``2 cards`` is ``2``). Formatting is normalised before comparing:
full-width forms, thousands separators, trailing zeros, ``万``/``千``/``亿`` multipliers, common Chinese
numerals (``三``, ``十五``, ``两``) and English number words (``three``) before a unit, and unit synonyms across the languages (``元`` = ``yuan`` =
``RMB``, ``港元`` = ``HKD`` = ``HK$``, ``个月`` = ``months``, ``工作日`` = ``working days``).

``check_grounding(reply, cited_articles, dialogue_texts)`` returns the reply's facts (as written, NFKC and case-folded) that no cited
article (title and body) and no dialogue turn states: a unit-bearing fact needs the same value with the same
unit, a bare number the same value with any unit or none. Ids of the cited articles are not facts.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

CN_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
CN_UNITS = {"十": 10, "百": 100, "千": 1000}
MULT = {
    "万": 10**4,
    "千": 10**3,
    "亿": 10**8,
    "百万": 10**6,
    "thousand": 10**3,
    "million": 10**6,
    "k": 10**3,
    "m": 10**6,
}
MONTHS = {
    m: i + 1
    for i, m in enumerate(
        (
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        )
    )
}
MONTHS.update({m[:3]: i for m, i in list(MONTHS.items())})
# unit synonyms (lower-case, after NFKC) -> one canonical unit
UNITS = {
    "cny": ["元", "元人民币", "人民币", "块", "块钱", "yuan", "rmb", "cny", "¥"],
    "hkd": ["港元", "港币", "港幣", "hkd", "hk$"],
    "usd": ["美元", "美金", "usd", "us$", "$"],
    "eur": ["欧元", "eur", "€"],
    "gbp": ["英镑", "gbp", "£"],
    "jpy": ["日元", "jpy"],
    "%": ["%", "percent", "per cent"],
    "‰": ["‰"],
    "bp": ["个基点", "基点", "bps", "bp", "basis points", "basis point"],
    "workday": ["个工作日", "工作日", "working days", "working day", "business days", "business day"],
    "day": ["天", "日", "days", "day", "calendar days", "自然日"],
    "hour": ["小时", "个小时", "hours", "hour", "hrs"],
    "minute": ["分钟", "minutes", "minute", "mins"],
    "week": ["周", "个星期", "星期", "weeks", "week"],
    "month": ["个月", "月", "months", "month"],
    "year": ["年", "周年", "years", "year"],
    "times": ["倍", "times"],
    "count": ["次", "笔", "张", "个"],
}
UNIT_OF = {s: canon for canon, forms in UNITS.items() for s in forms}
_unit_alt = "|".join(re.escape(s) for s in sorted(UNIT_OF, key=len, reverse=True))
_CN_NUM = "[零〇一二两三四五六七八九十百千]+"
EN_WORDS = {w: i + 1 for i, w in enumerate("one two three four five six seven eight nine ten eleven twelve".split())}
EN_WORDS.update({"fifteen": 15, "twenty": 20, "thirty": 30, "sixty": 60, "ninety": 90})
_words = "|".join(sorted(EN_WORDS, key=len, reverse=True))
_NUM = r"\d+(?:,\d{3}(?!\d))*(?:\.\d+)?"
_MULT = r"(?:百万|万|千|亿|\s?(?:thousand|million)\b|k\b|m\b)?"
_PREFIX = r"(?:hk\$|us\$|\$|¥|£|€|hkd|usd|rmb|cny|eur|gbp|jpy)"
# a word unit must end at a word boundary (``5 days``, not ``5 dayz``); CJK units and symbols need none
_UNIT = rf"(?:{_unit_alt})(?![a-z])"
DATE_PATTERNS = [
    (re.compile(r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*[日号]?"), ("y", "m", "d")),
    (re.compile(r"(\d{1,2})(?:st|nd|rd|th)?\s+(" + "|".join(MONTHS) + r")\.?,?\s+(\d{4})"), ("d", "mon", "y")),
    (re.compile(r"(" + "|".join(MONTHS) + r")\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})"), ("mon", "d", "y")),
    (re.compile(r"(\d{4})\s*年\s*(\d{1,2})\s*月(?!\s*\d)"), ("y", "m")),
]
AMOUNT = re.compile(
    rf"(?P<pre>{_PREFIX})\s?(?P<pnum>{_NUM}){_MULT.replace('(?:', '(?P<pmult>', 1)}"
    rf"|百分之(?P<pct>{_CN_NUM}|{_NUM})"
    rf"|(?P<num>{_NUM}|{_CN_NUM}(?=(?:百万|万|千|亿)?(?:{_unit_alt}))|\b(?:{_words})(?=\s(?:{_unit_alt})(?![a-z])))"
    rf"(?P<mult>百万|万|亿|\s?(?:thousand|million)\b)?\s*(?P<unit>{_UNIT})?"
)


def _value(text: str) -> Decimal | None:
    """``1,000.50`` -> 1000.5; ``三`` / ``十五`` / ``二十`` / ``一百二十`` -> int; None when it is neither."""
    text = text.replace(",", "")
    if text in EN_WORDS:
        return Decimal(EN_WORDS[text])
    try:
        return Decimal(text)
    except InvalidOperation:
        pass
    total, digit = 0, None
    for ch in text:
        if ch in CN_DIGITS:
            digit = CN_DIGITS[ch]
        elif ch in CN_UNITS:
            total += (1 if digit is None else digit) * CN_UNITS[ch]
            digit = None
        else:
            return None
    return Decimal(total + (digit or 0))


def _norm(value: Decimal) -> str:
    s = format(value.normalize(), "f")
    return s.rstrip("0").rstrip(".") if "." in s else s


def normalise(text: str) -> str:
    """NFKC, case-folded; a Chinese comma stays a separator (``1，000`` is two numbers, not ``1,000``)."""
    return unicodedata.normalize("NFKC", text.replace("，", "、")).casefold()


def extract_facts(text: str, ignore: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """``(as written, normalised value, unit)`` for each fact in ``text``, in order; ``unit`` is ``date`` for
    a date (value ``YYYY-MM-DD`` or ``YYYY-MM``) and ``""`` for a bare number. Strings in ``ignore`` (e.g.
    article ids) are blanked first."""
    text = normalise(text)
    for s in ignore:
        text = text.replace(normalise(s), " " * len(s))
    out: list[tuple[int, tuple[str, str, str]]] = []
    spans: list[tuple[int, int]] = []
    for pattern, parts in DATE_PATTERNS:
        for m in pattern.finditer(text):
            if any(a < m.end() and m.start() < b for a, b in spans):
                continue
            got = dict(zip(parts, m.groups()))
            month = int(got["m"]) if "m" in got else MONTHS[got["mon"].rstrip(".")]
            value = f"{int(got['y']):04d}-{month:02d}" + (f"-{int(got['d']):02d}" if "d" in got else "")
            spans.append((m.start(), m.end()))
            out.append((m.start(), (m.group(0).strip(), value, "date")))
    for m in AMOUNT.finditer(text):
        if any(a < m.end() and m.start() < b for a, b in spans) or not m.group(0).strip():
            continue
        num = m.group("pnum") or m.group("pct") or m.group("num")
        amount = _value(num) if num else None
        if amount is None:
            continue
        if m.group("pre"):
            unit = UNIT_OF[m.group("pre")]
            mult = (m.group("pmult") or "").strip()
        elif m.group("pct"):
            unit, mult = "%", ""
        else:
            unit = UNIT_OF.get(m.group("unit") or "", "")
            mult = (m.group("mult") or "").strip()
        amount *= MULT.get(mult, 1)
        out.append((m.start(), (m.group(0).strip(), _norm(amount), unit)))
    return [f for _, f in sorted(out, key=lambda x: x[0])]


def supported(fact: tuple[str, str, str], sources: list[tuple[str, str, str]]) -> bool:
    _, value, unit = fact
    if unit:
        return any(v == value and u == unit for _, v, u in sources)
    return any(v == value for _, v, u in sources if u != "date")


def article_text(article: dict) -> str:
    return f"{article.get('title', '')}\n{article.get('body', '')}"


def check_grounding(reply: str, cited_articles: list[dict], dialogue_texts: Sequence[str] = ()) -> list[str]:
    """The facts of ``reply`` (as written) that neither a cited article nor a dialogue text states."""
    ids = tuple(a["id"] for a in cited_articles if a.get("id"))
    sources = [f for a in cited_articles for f in extract_facts(article_text(a))]
    sources += [f for t in dialogue_texts for f in extract_facts(t)]
    return [f[0] for f in extract_facts(reply, ids) if not supported(f, sources)]
