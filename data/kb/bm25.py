"""Okapi BM25 over a bilingual KB: Chinese runs become character bigrams, everything else lower-case words.

One tokenizer serves both languages, so a Chinese query that names "app" or "ATM" matches those words too.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter

_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[a-z0-9]+")
STOPWORDS = frozenset(
    "a an the and or but if of to in on at for from by with as is are was were be been am do does did i me my we "
    "our you your it its this that there what which who how can could would should will shall may might have has "
    "had not no so just about into than then them they he she his her us any some".split()
)


def tokens(text: str) -> list[str]:
    """Character bigrams of every Chinese run (a one-character run is kept whole) and English words."""
    out: list[str] = []
    for m in _RUN.finditer(unicodedata.normalize("NFKC", text).casefold()):
        run = m.group(0)
        if run[0].isascii():
            if run not in STOPWORDS:
                out.append(run[:-1] if len(run) > 4 and run.endswith("s") and not run.endswith("ss") else run)
        elif len(run) == 1:
            out.append(run)
        else:
            out.extend(run[i : i + 2] for i in range(len(run) - 1))
    return out


class BM25:
    """Scores of a query against every document given at construction (``k1``, ``b``: Okapi's)."""

    def __init__(self, docs: list[str], k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.tf = [Counter(tokens(d)) for d in docs]
        self.len = [sum(tf.values()) for tf in self.tf]
        self.avg = sum(self.len) / max(len(docs), 1) or 1.0
        df = Counter(t for tf in self.tf for t in tf)
        n = len(docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def scores(self, query: str) -> list[float]:
        q = [t for t in dict.fromkeys(tokens(query)) if t in self.idf]
        out = []
        for tf, n in zip(self.tf, self.len):
            norm = self.k1 * (1 - self.b + self.b * n / self.avg)
            out.append(sum(self.idf[t] * tf[t] * (self.k1 + 1) / (tf[t] + norm) for t in q if t in tf))
        return out
