"""Retrieval metrics over labelled queries: recall@k (a query is found at k when any of its answers is in the
top k) and MRR (the mean of 1 / rank of the first answer in the full ranking; 0 when none is ranked).
"""

from __future__ import annotations

from collections.abc import Sequence


def first_hit(ranking: Sequence[str], answers: Sequence[str]) -> int | None:
    """The 1-based rank of the first answer in ``ranking``, or None."""
    wanted = set(answers)
    return next((i for i, a in enumerate(ranking, 1) if a in wanted), None)


def retrieval_metrics(
    rankings: Sequence[Sequence[str]], answers: Sequence[Sequence[str]], ks: tuple[int, ...] = (1, 5)
) -> dict:
    """``{"recall@1", "recall@5", "mrr", "queries"}`` for parallel lists of rankings and answer sets."""
    if len(rankings) != len(answers):
        raise ValueError(f"{len(rankings)} rankings for {len(answers)} answer sets")
    ranks = [first_hit(r, a) for r, a in zip(rankings, answers)]
    n = len(ranks)
    out: dict = {f"recall@{k}": (sum(r is not None and r <= k for r in ranks) / n if n else 0.0) for k in ks}
    out["mrr"] = sum(1 / r for r in ranks if r is not None) / n if n else 0.0
    out["queries"] = n
    return out
