"""A deterministic grounded template answer: the best KB article's most relevant sentences, with its citation.

``GroundedAnswerer(retriever, articles).answer(text, lang, state, history)`` searches the articles of the
turn's language with the user's (masked) text, enriched with the glossary names (in that language) of the
dialogue state's ``product`` and ``term`` ids, and answers from the best article: its sentences that share
the most with the query (BM25 over the article's sentences), at most ``max_sentences`` of them in the
article's order, plus the article's "for reference only" sentence when a chosen one quotes a figure and the
article is ``reference_only``; wrapped in a fixed phrase per language and the citation::

    根据本行资料：……（参考：kb-zh-0042）
    According to our information: … (source: kb-en-0042)

No answer (``Answer.text`` None, ``reason`` ``no_kb_answer``) when the language has no article or the
retrieval confidence, the best article's fused score, is below ``threshold``. The fused score (index.py:
0.8 x min-max dense + 0.2 x min-max BM25 over the language's articles) is 1.0 when the dense and BM25 rankings
agree on the best article and lower when they disagree, which is where the wrong citations are; the
threshold is what ``benchmarks/kb_answers.py`` chooses on the validation queries. The reply is checked
with ``facts.check_grounding`` against the cited article and the dialogue; an unsupported fact makes it
``ungrounded`` (no answer). Everything is deterministic for a given index and text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .bm25 import BM25
from .facts import check_grounding
from .load import DISCLAIMER, FIGURE

DEFAULT_THRESHOLD = 0.96869  # on the fused score; chosen on the validation queries (benchmarks/kb_answers.py)
MAX_SENTENCES = 3
TEMPLATE = {"zh": "根据本行资料：{body}（参考：{cite}）", "en": "According to our information: {body} (source: {cite})"}
_SENTENCE = {"zh": re.compile(r"[^。！？!?]+[。！？!?]*"), "en": re.compile(r".+?(?:[.!?](?=\s|$)|$)", re.S)}


@dataclass(frozen=True)
class Answer:
    text: str | None  # the reply; None: no answer (hand the turn off)
    citations: tuple[str, ...] = ()  # the cited article ids
    reason: str | None = None  # why there is no answer: no_kb_answer, ungrounded
    confidence: float = 0.0  # the best article's fused score
    ranking: tuple[tuple[str, float], ...] = ()  # the top (id, fused score), best first
    unsupported: tuple[str, ...] = field(default=())  # facts of the draft reply no source states


def sentences(body: str, lang: str) -> list[str]:
    """The body's sentences, in order, each with its closing punctuation (stripped of surrounding space)."""
    return [s.strip() for s in _SENTENCE["zh" if lang == "zh" else "en"].findall(body) if s.strip()]


def select(
    body: str, lang: str, query: str, max_sentences: int = MAX_SENTENCES, reference_only: bool = False
) -> list[str]:
    """The (at most ``max_sentences``) sentences of ``body`` most relevant to ``query``, in the body's order;
    the first sentence when none shares a word with the query; the disclaimer sentence added when a chosen
    sentence quotes a figure of a ``reference_only`` article."""
    sents = sentences(body, lang)
    if not sents:
        return []
    scores = BM25(sents).scores(query)
    best = sorted(range(len(sents)), key=lambda i: (-scores[i], i))[:max_sentences]
    chosen = sorted(i for i in best if scores[i] > 0) or [0]
    mark = DISCLAIMER.get(lang, "")
    if reference_only and mark and any(FIGURE.search(sents[i]) for i in chosen):
        extra = next((i for i, s in enumerate(sents) if mark in s.casefold()), None)
        if extra is not None and extra not in chosen:
            chosen = sorted(chosen + [extra])
    return [sents[i] for i in chosen]


def render(lang: str, picked: list[str], article_id: str) -> str:
    joiner = "" if lang == "zh" else " "
    return TEMPLATE["zh" if lang == "zh" else "en"].format(body=joiner.join(picked), cite=article_id)


def enrich(text: str, lang: str, state: dict | None, glossary) -> str:
    """The query: ``text`` plus the ``lang`` names of the state's product and term ids not already in it."""
    if not state or glossary is None:
        return text
    names = []
    for slot in ("product", "term"):
        values = state.get(slot)
        for tid in [values] if isinstance(values, str) else list(values or []):
            term = glossary.terms.get(tid) if isinstance(tid, str) else None
            name = getattr(term, lang, None) if term else None
            if name and name.casefold() not in text.casefold() and name not in names:
                names.append(name)
    return " ".join([text, *names]) if names else text


class GroundedAnswerer:
    """Answers from ``articles`` (the records the ``retriever``'s index was built from)."""

    def __init__(
        self,
        retriever,
        articles: list[dict],
        glossary=None,
        threshold: float = DEFAULT_THRESHOLD,
        max_sentences: int = MAX_SENTENCES,
        k: int = 5,
    ):
        self.retriever, self.glossary = retriever, glossary
        self.articles = {a["id"]: a for a in articles}
        self.threshold, self.max_sentences, self.k = threshold, max_sentences, k

    def retrieve(self, query: str, lang: str | None) -> tuple[list[tuple[str, float]], float]:
        """The top ``k`` (id, fused score) and the best one's score (0 when the language has no article)."""
        ranking = self.retriever.search(query, lang, self.k)
        return ranking, (ranking[0][1] if ranking else 0.0)

    def answer(
        self,
        text: str,
        lang: str | None,
        state: dict | None = None,
        history: Sequence[str] = (),
        threshold: float | None = None,
    ) -> Answer:
        query = enrich(text, lang or "en", state, self.glossary)
        ranking, confidence = self.retrieve(query, lang)
        limit = self.threshold if threshold is None else threshold
        if not ranking or confidence < limit or ranking[0][0] not in self.articles:
            return Answer(None, reason="no_kb_answer", confidence=confidence, ranking=tuple(ranking))
        best = self.articles[ranking[0][0]]
        picked = select(best["body"], best["lang"], query, self.max_sentences, bool(best.get("reference_only")))
        reply = render(best["lang"], picked, best["id"])
        unsupported = check_grounding(reply, [best], [text, *history])
        if unsupported:
            return Answer(None, (best["id"],), "ungrounded", confidence, tuple(ranking), tuple(unsupported))
        return Answer(reply, (best["id"],), None, confidence, tuple(ranking))
