"""Seeded noise on rendered segments (spans stay exact because segments move together).

Operations (1-2 per noisy utterance; word lists in noise.yaml):
  zh: filler words (嗯，那个), IME / ASR homophones in plain text and in glossary
      mentions (信用卡 -> 信用咔: the garbled mention keeps its term_id), zh/en code-mixing
      (a mention replaced by an English form of the same term), full-width Latin and
      digits, half-width punctuation, dropped final punctuation;
  en: letter swaps / drops / doubling in words and in mentions, lower case, chat
      shorthand (pls, u, thx), filler words (um, hi there), dropped final punctuation.
"""

from __future__ import annotations

import random
import re

from .markup import Seg

FULL = {c: chr(ord(c) + 0xFEE0) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"}
HALF_PUNCT = {"，": ",", "？": "?", "！": "!", "：": ":", "；": ";", "（": "(", "）": ")"}
PII = {"CARD_NUMBER", "PHONE", "ID_NUMBER", "EMAIL", "PERSON"}


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word
    i = rng.randint(1, len(word) - 2)
    op = rng.choice(["swap", "drop", "double"])
    if op == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == "drop":
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


class Noiser:
    def __init__(self, cfg: dict, glossary, rng: random.Random):
        self.cfg, self.glossary, self.rng = cfg, glossary, rng

    def apply(self, segs: list[Seg], lang: str) -> tuple[list[Seg], list[str]]:
        segs = [Seg(s.text, s.label, s.term_id, s.kind, s.slot) for s in segs]
        ops = self.cfg["ops"][lang]
        names = self.rng.choices(list(ops), list(ops.values()), k=self.rng.choice([1, 1, 2]))
        done = []
        for name in dict.fromkeys(names):
            if getattr(self, "op_" + name)(segs, lang):
                done.append(name)
        return segs, done

    # -------------------------------------------------------------- helpers
    def _mentions(self, segs):
        return [s for s in segs if s.label in ("PRODUCT", "TERM")]

    def _plain(self, segs):
        return [s for s in segs if s.kind == "plain" and s.text.strip()]

    # -------------------------------------------------------------- shared
    def op_filler(self, segs, lang):
        word = self.rng.choice(self.cfg["fillers"][lang])
        if (
            lang == "en"
            and segs
            and segs[0].text[:1].isupper()
            and segs[0].label not in PII
            and not segs[0].text.startswith(("I ", "I'"))
        ):
            segs[0].text = segs[0].text[0].lower() + segs[0].text[1:]
        segs.insert(0, Seg(word))
        return True

    def op_nopunct(self, segs, lang):
        last = segs[-1]
        if last.kind == "plain" and re.search(r"[。？！?!.，,~～]+$", last.text):
            last.text = re.sub(r"[。？！?!.，,~～]+$", "", last.text)
            return True
        return False

    # -------------------------------------------------------------- zh
    def op_homophone(self, segs, lang):
        table = self.cfg["homophones"]
        cands = [
            (s, k) for s in segs if s.label in ("PRODUCT", "TERM") or s.kind == "plain" for k in table if k in s.text
        ]
        if not cands:
            return False
        s, k = self.rng.choice(cands)
        s.text = s.text.replace(k, self.rng.choice(table[k]), 1)
        return True

    def op_codemix(self, segs, lang):
        cands = [s for s in self._mentions(segs) if re.search(r"[\u4e00-\u9fff]", s.text)]
        if not cands:
            return False
        s = self.rng.choice(cands)
        t = self.glossary.terms[s.term_id]
        forms = [f for f in (t.en, *t.en_aliases) if len(f) <= 22]
        if not forms:
            return False
        s.text = self.rng.choice(forms)
        if self.rng.random() < 0.5:
            s.text = s.text.lower()
        return True

    def op_fullwidth(self, segs, lang):
        if not any(c in FULL for s in segs for c in s.text):
            return False
        for s in segs:
            if s.label not in ("EMAIL",):
                s.text = "".join(FULL.get(c, c) for c in s.text)
        return True

    def op_halfpunct(self, segs, lang):
        changed = False
        for s in segs:
            if s.kind == "plain":
                new = "".join(HALF_PUNCT.get(c, c) for c in s.text)
                changed |= new != s.text
                s.text = new
        return changed

    # -------------------------------------------------------------- en
    def op_typo(self, segs, lang):
        cands = [
            (s, m)
            for s in segs
            if s.kind == "plain" or s.label in ("PRODUCT", "TERM")
            for m in re.finditer(r"[A-Za-z]{4,}", s.text)
        ]
        if not cands:
            return False
        s, m = self.rng.choice(cands)
        s.text = s.text[: m.start()] + _typo(m.group(), self.rng) + s.text[m.end() :]
        return True

    def op_lower(self, segs, lang):
        for s in segs:
            if s.label not in PII:
                s.text = s.text.lower()
        return True

    def op_shorthand(self, segs, lang):
        table = self.cfg["shorthand"]
        changed = False
        for s in self._plain(segs):
            for k, v in table.items():
                new = re.sub(rf"\b{re.escape(k)}\b", v, s.text)
                changed |= new != s.text
                s.text = new
        return changed
