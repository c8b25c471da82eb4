"""Score a retriever on labelled queries, per language: recall@1, recall@5 and MRR (``findial kb eval``).

``evaluate_settings`` scores many fusion settings from one pass of embeddings (the validation sweep).
"""

from __future__ import annotations

from .index import Retriever, rank
from .metrics import retrieval_metrics

LANGS = ("zh", "en")


def evaluate_settings(
    retriever: Retriever, queries: list[dict], settings: list[tuple[str, float]]
) -> dict[tuple[str, float], dict]:
    """``{(fusion, weight): {lang: metrics}}``; each query is ranked among the articles of its language."""
    scored = [(q, retriever.candidates(q["query"], q["lang"])) for q in queries]
    out = {}
    for fusion, weight in settings:
        per_lang = {}
        for lang in LANGS:
            mine = [(q, c) for q, c in scored if q["lang"] == lang]
            rankings = [[i for i, _ in rank(*c, fusion, weight)] for _, c in mine]
            per_lang[lang] = retrieval_metrics(rankings, [q["answers"] for q, _ in mine])
        out[(fusion, weight)] = per_lang
    return out


def evaluate(retriever: Retriever, queries: list[dict]) -> dict[str, dict]:
    """``{lang: {"recall@1", "recall@5", "mrr", "queries"}}`` under the retriever's own fusion settings."""
    return evaluate_settings(retriever, queries, [(retriever.fusion, retriever.weight)])[
        (retriever.fusion, retriever.weight)
    ]


def macro_mrr(per_lang: dict[str, dict]) -> float:
    """The mean of the languages' MRR (what the validation sweep maximises)."""
    return sum(per_lang[lang]["mrr"] for lang in LANGS) / len(LANGS)
