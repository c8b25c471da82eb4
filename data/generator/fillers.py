"""Filler values for template slots: glossary terms, amounts, dates ... and synthetic PII.

All personal data is made up: Luhn-valid card numbers with random digits, GB 11643
checksum-valid ID numbers with random birth dates, mobiles from random digits,
international numbers from the fictional ranges (+1 ...-555-01xx, +44 20 7946 0xxx),
e-mail addresses on the reserved example domains, names combined from common
surname / given-name lists. Lists of words live in lexicon.yaml.
"""

from __future__ import annotations

import random
import unicodedata
from collections import Counter

from findial.data.labelbook import Glossary

SLOT_LABEL = {
    "product": "PRODUCT",
    "term": "TERM",
    "amount": "AMOUNT",
    "currency": "CURRENCY",
    "date": "DATE",
    "duration": "DURATION",
    "rate": "RATE",
    "merchant": "MERCHANT",
    "org": "ORG",
    "card": "CARD_NUMBER",
    "phone": "PHONE",
    "idnum": "ID_NUMBER",
    "person": "PERSON",
    "email": "EMAIL",
    "last4": None,
    "num": None,
}


def entity_label(slot: str) -> str:
    """The entity label of a slot's fillers (``last4`` and ``num`` fill no entity: a KeyError)."""
    label = SLOT_LABEL[slot]
    if label is None:
        raise KeyError(f"slot {slot!r} fills no entity")
    return label


STATE_SLOT = {
    "PRODUCT": "product",
    "TERM": "term",
    "AMOUNT": "amount",
    "CURRENCY": "currency",
    "DATE": "date",
    "DURATION": "duration",
    "MERCHANT": "merchant",
    "ORG": "org",
}

CN_DIGITS = "零一二三四五六七八九"


def cn_number(n: int) -> str:
    """Chinese numeral for 0 < n < 10**8, colloquial (两千, 三万五)."""

    def under_10k(x: int, lead: bool) -> str:
        out, zero = "", False
        for unit, val in (("千", 1000), ("百", 100), ("十", 10), ("", 1)):
            d = x // val % 10
            if d:
                if zero:
                    out += "零"
                digit = "两" if d == 2 and unit in ("千", "百") else CN_DIGITS[d]
                if d == 1 and unit == "十" and not out and lead:
                    digit = ""
                out += digit + unit
                zero = False
            elif out:
                zero = True
        return out

    wan, rest = divmod(n, 10000)
    if not wan:
        return under_10k(rest, True)
    head = under_10k(wan, True)
    head = "两" if head == "二" else head
    if not rest:
        return head + "万"
    if rest % 1000 == 0 and rest >= 1000:  # 三万五
        return head + "万" + CN_DIGITS[rest // 1000]
    return head + "万" + ("零" if rest < 1000 else "") + under_10k(rest, False)


def luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return str((10 - total % 10) % 10)


def luhn_ok(number: str) -> bool:
    digits = "".join(c for c in unicodedata.normalize("NFKC", number) if c.isdigit())
    return len(digits) >= 2 and luhn_digit(digits[:-1]) == digits[-1]


ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_check(body17: str) -> str:
    return "10X98765432"[sum(int(c) * w for c, w in zip(body17, ID_WEIGHTS)) % 11]


def id_ok(number: str) -> bool:
    number = unicodedata.normalize("NFKC", number)
    return len(number) == 18 and number[:17].isdigit() and id_check(number[:17]) == number[17].upper()


class Fillers:
    def __init__(self, lex: dict, glossary: Glossary, rng: random.Random):
        self.lex, self.glossary, self.rng = lex, glossary, rng
        self.usage: Counter = Counter()  # (split, term_id) -> draws, to spread draws over the glossary
        self.form_usage: Counter = Counter()
        self.split = "train"  # set by the builder: draws are balanced within each split
        self.force: str | None = None  # the builder forces a rare term into a template
        self.groups = {k: list(v) for k, v in lex["groups"].items()}
        self.skip_forms = set(lex.get("no_random_forms", []))

    # ------------------------------------------------------------ glossary
    def term_ids(self, label: str, filt: str | None) -> list[str]:
        ids: list[str] = []
        for part in filt.split("|") if filt else ["*"]:
            if part == "*":
                ids += list(self.glossary.terms)
            elif part in self.groups:
                ids += self.groups[part]
            elif part in self.glossary.terms:
                ids.append(part)
            else:
                dom = [t.id for t in self.glossary.terms.values() if t.domain == part]
                if not dom:
                    raise ValueError(f"unknown term filter {part!r}")
                ids += dom
        ids = [i for i in dict.fromkeys(ids) if self.glossary.label_of(i) == label]
        if not ids:
            raise ValueError(f"filter {filt!r} selects no {label} term")
        return ids

    def forms(self, term_id: str, lang: str) -> list[str]:
        t = self.glossary.terms[term_id]
        forms = [t.zh, *t.zh_aliases] if lang == "zh" else [t.en, *t.en_aliases]
        return [f for f in forms if f not in self.skip_forms] or forms[:1]

    def glossary_term(self, label: str, filt: str | None, lang: str) -> tuple[str, str]:
        ids = self.term_ids(label, filt)
        if self.force in ids:
            ids = [self.force]
        w = [1.0 / (1 + self.usage[(self.split, i)]) ** 3 for i in ids]
        tid = self.rng.choices(ids, w)[0]
        forms = self.forms(tid, lang)
        fw = [(2.0 if k == 0 else 1.0) / (1 + self.form_usage[(self.split, tid, f)]) ** 2 for k, f in enumerate(forms)]
        return self.rng.choices(forms, fw)[0], tid

    def commit(self, term_id: str, form: str) -> None:
        self.usage[(self.split, term_id)] += 1
        self.form_usage[(self.split, term_id, form)] += 1

    # ------------------------------------------------------------ others
    def pick(self, key: str, lang: str, filt: str | None = None) -> str:
        table = self.lex[key][lang]
        if isinstance(table, dict):
            table = table[filt] if filt in table else [x for v in table.values() for x in v]
        return self.expand(str(self.rng.choice(table)), lang)

    def expand(self, s: str, lang: str) -> str:
        """Fill the {n}-style number placeholders of lexicon patterns."""
        r = self.rng
        reps = {
            "{d}": lambda: str(r.randint(1, 28)),
            "{m}": lambda: str(r.randint(1, 12)),
            "{cd}": lambda: cn_number(r.randint(1, 28)),
            "{cm}": lambda: cn_number(r.randint(1, 12)),
            "{y}": lambda: str(r.choice([2023, 2024, 2025])),
            "{h}": lambda: str(r.randint(1, 11)),
            "{min}": lambda: f"{r.choice([0, 15, 30, 45]):02d}",
            "{n}": lambda: str(r.choice([2, 3, 5, 7, 10, 15, 20, 30])),
            "{cn}": lambda: cn_number(r.choice([2, 3, 5, 6, 10])),
            "{tenor}": lambda: str(r.choice([3, 6, 12, 18, 24, 36])),
            "{years}": lambda: str(r.choice([1, 2, 3, 5, 10, 20, 25, 30])),
            "{cyears}": lambda: r.choice(["一", "两", "三", "五", "十", "二十", "三十"]),
            "{rate}": lambda: r.choice(["2.85", "3.1", "3.45", "3.95", "4.2", "1.75", "2.5", "3", "5.6", "18"]),
            "{wd}": lambda: r.choice(["一", "二", "三", "四", "五", "六", "日"]),
            "{weekday}": lambda: r.choice(
                ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
            ),
            "{month}": lambda: r.choice(
                [
                    "January",
                    "February",
                    "March",
                    "April",
                    "May",
                    "June",
                    "July",
                    "August",
                    "September",
                    "October",
                    "November",
                    "December",
                ]
            ),
            "{ord}": lambda: r.choice(
                ["1st", "2nd", "3rd", "5th", "8th", "10th", "12th", "15th", "20th", "25th", "28th"]
            ),
        }
        for k, f in reps.items():
            while k in s:
                s = s.replace(k, f(), 1)
        return s

    def amount(self, lang: str, filt: str | None) -> str:
        r = self.rng
        lo, hi = {"small": (1, 3), "large": (4, 6)}.get(filt or "", (2, 4))
        base = r.choice([1, 2, 3, 5, 8]) * 10 ** r.randint(lo, hi)
        if r.random() < 0.3:
            base += r.choice([1, 2, 5]) * base // 10
        num = f"{base:,}" if r.random() < 0.5 else str(base)
        if filt == "small" and r.random() < 0.2:
            num = f"{base - 1}.{r.randint(10, 99)}"
        if lang == "zh":
            cn = cn_number(base)
            forms = [
                f"{num}元",
                f"{num}块",
                f"{cn}元",
                f"{cn}块钱",
                f"{cn}块",
                f"人民币{num}元",
                f"{num}块钱",
                f"{num}美元",
                f"{num}港币",
                f"{num}元人民币",
                f"{cn}",
            ]
            if base >= 10000 and base % 1000 == 0:
                w = base / 10000
                forms += [f"{w:g}万", f"{w:g}万元", f"{w:g}万块"]
            return r.choice(forms)
        forms = [
            f"${num}",
            f"{num} yuan",
            f"RMB {num}",
            f"HK${num}",
            f"{num} dollars",
            f"€{num}",
            f"£{num}",
            f"USD {num}",
            f"{num} RMB",
            f"{num} Hong Kong dollars",
            f"CNY {num}",
        ]
        if 1000 <= base < 100000 and base % 1000 == 0:
            forms += [f"{base // 1000}k", f"${base // 1000}k"]
        if base >= 1000000 and base % 100000 == 0:
            forms += [f"{base / 1e6:g} million yuan", f"${base / 1e6:g} million", f"RMB {base / 1e6:g} million"]
        return r.choice(forms)

    def card(self) -> str:
        r = self.rng
        prefix = r.choice(["62", "622", "625", "4", "5", "6214", "6259"])
        length = r.choice([16, 16, 16, 19, 19, 17, 18])
        body = prefix + "".join(str(r.randint(0, 9)) for _ in range(length - len(prefix) - 1))
        num = body + luhn_digit(body)
        if r.random() < 0.35:
            sep = " " if r.random() < 0.8 else "-"
            num = sep.join(num[i : i + 4] for i in range(0, len(num), 4))
        return num

    def idnum(self, lang: str, filt: str | None) -> str:
        r = self.rng
        if filt == "passport" or (lang == "en" and filt is None and r.random() < 0.3):
            return r.choice("EGP") + "".join(str(r.randint(0, 9)) for _ in range(8))
        region = r.choice(self.lex["id_regions"])
        year, month, day = r.randint(1955, 2004), r.randint(1, 12), r.randint(1, 28)
        body = f"{region}{year}{month:02d}{day:02d}{r.randint(0, 999):03d}"
        return body + id_check(body)

    def phone(self, lang: str, filt: str | None) -> str:
        r = self.rng
        if filt == "intl" or (filt is None and lang == "en" and r.random() < 0.5):
            return "".join(str(r.randint(0, 9)) if c == "#" else c for c in r.choice(self.lex["intl_phones"]))
        num = "1" + r.choice("3456789") + "".join(str(r.randint(0, 9)) for _ in range(9))
        style = r.random()
        if style < 0.15:
            return f"{num[:3]}-{num[3:7]}-{num[7:]}"
        if style < 0.3:
            return f"{num[:3]} {num[3:7]} {num[7:]}"
        if style < 0.4:
            return "+86 " + num
        if style < 0.45:
            return "+86-" + num
        return num

    def person(self, lang: str) -> str:
        r = self.rng
        if lang == "zh" and r.random() < 0.93:
            sur = r.choice(self.lex["zh_surnames"])
            given = r.choice(self.lex["zh_given"])
            return sur + (given if r.random() < 0.6 else given[:1])
        first, last = r.choice(self.lex["en_first"]), r.choice(self.lex["en_last"])
        return first + " " + last if r.random() < 0.85 else first

    def email(self) -> str:
        r = self.rng
        user = r.choice(self.lex["email_users"]) + r.choice(
            ["", "", str(r.randint(1, 99)), "." + r.choice(self.lex["email_users"])]
        )
        return f"{user}@{r.choice(['example.com', 'example.com', 'example.org', 'example.net', 'mail.example.com'])}"

    def draw(self, slot: str, filt: str | None, lang: str) -> tuple[str, str | None]:
        """Return (surface, term_id or None). Glossary usage is committed by the caller."""
        if slot in ("product", "term"):
            return self.glossary_term(entity_label(slot), filt, lang)
        r = self.rng
        if slot == "amount":
            return self.amount(lang, filt), None
        if slot == "card":
            return self.card(), None
        if slot == "idnum":
            return self.idnum(lang, filt), None
        if slot == "phone":
            return self.phone(lang, filt), None
        if slot == "person":
            return self.person(lang), None
        if slot == "email":
            return self.email(), None
        if slot == "last4":
            return "".join(str(r.randint(0, 9)) for _ in range(4)), None
        if slot == "num":
            return str(r.choice([2, 3, 4, 5, 6, 8, 10])), None
        return self.pick(slot, lang, filt), None
