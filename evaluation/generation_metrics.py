"""Metrics for generated responses: BLEU, chrF, ROUGE-L, and the bank checks.

Text overlap (0..100, higher is better), each against one reference per reply:

- ``bleu``: corpus BLEU-4 (clipped n-gram precisions, geometric mean, brevity penalty; an order
  with no match is smoothed as sacreBLEU's default ``exp`` method does; 0 when nothing matches).
- ``chrf``: corpus chrF (character 1..6-grams, whitespace removed, beta = 2), sacreBLEU's chrF
  definition: statistics summed over the corpus, precision and recall averaged over the orders.
- ``rouge_l``: mean per-reply ROUGE-L F1 (longest common token subsequence).

Tokens (BLEU, ROUGE-L): every CJK character is a token (character-level Chinese), a run of Latin
letters or digits (with inner ``.`` ``,`` ``'``: "7.1", "can't") is one, any other non-space character
is one. Case is kept.

Bank checks (0..1 rates unless a count):

- ``term_recall``: of the glossary terms the reference reply mentions, the share the generated reply
  mentions too (any surface form of the same term id).
- ``term_grounding``: of the glossary terms a generated reply mentions, the share that the dialogue
  (its context turns or the state) or the reference mentions: a term out of nowhere (the customer
  asked about a credit card, the reply talks about a mortgage) counts against it. 1.0 when no reply
  mentions a term.
- ``pii_generated``: replies whose raw generation held personal data (caught and masked);
  ``pii_leaked``: replies still holding personal data after masking (must be 0);
  ``pii_clean_rate`` = 1 - pii_leaked / replies.
- ``compliance_violations``: replies tripping at least one rule of the rule list (per rule too);
  ``compliance_clean_rate`` = 1 - compliance_violations / replies.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable

from findial.data.labelbook import Glossary
from findial.data.term_matcher import GlossaryMatcher

_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\u3040-\u30ff]|[A-Za-z0-9]+(?:[.,'][A-Za-z0-9]+)*|\S")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


# ------------------------------------------------------------------------------------------ overlap
def bleu_stats(hyp: list[str], ref: list[str], order: int = 4) -> list[int]:
    """[hyp_len, ref_len, match_1, total_1, ..., match_order, total_order]."""
    stats = [len(hyp), len(ref)]
    for n in range(1, order + 1):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        stats += [sum((h & r).values()), max(0, len(hyp) - n + 1)]
    return stats


def bleu_from_stats(stats: list[int], order: int = 4) -> float:
    hyp_len, ref_len = stats[0], stats[1]
    matches, totals = stats[2::2], stats[3::2]
    if hyp_len == 0 or not any(matches):
        return 0.0
    log_p, smooth = 0.0, 1.0
    for n in range(order):
        if totals[n] == 0:  # hypotheses shorter than n tokens: sacreBLEU's exp smoothing gives 100/2^k/0 -> 0
            return 0.0
        if matches[n] == 0:
            smooth *= 2
            p = 1.0 / (smooth * totals[n])
        else:
            p = matches[n] / totals[n]
        log_p += math.log(p) / order
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * bp * math.exp(log_p)


def corpus_bleu(hyps: list[str], refs: list[str], order: int = 4) -> float:
    _same_length(hyps, refs)
    total = [0] * (2 + 2 * order)
    for h, r in zip(hyps, refs):
        total = [a + b for a, b in zip(total, bleu_stats(tokenize(h), tokenize(r), order))]
    return bleu_from_stats(total, order)


def chrf_stats(hyp: str, ref: str, order: int = 6) -> list[int]:
    """Per order n: [hyp n-grams, ref n-grams, matching n-grams] over characters without whitespace.
    As in sacreBLEU, hypothesis n-grams of an order the reference is too short to have are not counted."""
    h, r = "".join(hyp.split()), "".join(ref.split())
    stats = []
    for n in range(1, order + 1):
        hn, rn = _ngrams(list(h), n), _ngrams(list(r), n)
        stats += [sum(hn.values()) if rn else 0, sum(rn.values()), sum((hn & rn).values())]
    return stats


def chrf_from_stats(stats: list[int], order: int = 6, beta: float = 2.0) -> float:
    prec = rec = 0.0
    effective = 0
    for n in range(order):
        n_hyp, n_ref, n_match = stats[3 * n : 3 * n + 3]
        if n_hyp > 0 and n_ref > 0:
            prec += n_match / n_hyp
            rec += n_match / n_ref
            effective += 1
    if not effective:
        return 0.0
    prec, rec = prec / effective, rec / effective
    f = beta**2
    return 100.0 * (1 + f) * prec * rec / (f * prec + rec) if prec + rec else 0.0


def corpus_chrf(hyps: list[str], refs: list[str], order: int = 6, beta: float = 2.0) -> float:
    _same_length(hyps, refs)
    total = [0] * (3 * order)
    for h, r in zip(hyps, refs):
        total = [a + b for a, b in zip(total, chrf_stats(h, r, order))]
    return chrf_from_stats(total, order, beta)


def lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(hyp: str, ref: str) -> float:
    """ROUGE-L F1 of one reply (0..100)."""
    h, r = tokenize(hyp), tokenize(ref)
    lcs = lcs_length(h, r)
    if not lcs:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 100.0 * 2 * p * rec / (p + rec)


def mean_rouge_l(hyps: list[str], refs: list[str]) -> float:
    _same_length(hyps, refs)
    return sum(rouge_l(h, r) for h, r in zip(hyps, refs)) / len(hyps) if hyps else 0.0


def _same_length(hyps: list, refs: list) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} generated replies but {len(refs)} references")


# ------------------------------------------------------------------------------------------ glossary
_MATCHERS: dict[int, tuple[Glossary, GlossaryMatcher]] = {}


def glossary_mentions(text: str, glossary: Glossary) -> set[str]:
    """Term ids mentioned in ``text`` (the longest listed surface forms, folded like the glossary)."""
    if not text:
        return set()
    cached = _MATCHERS.get(id(glossary))
    if cached is None or cached[0] is not glossary:
        cached = _MATCHERS[id(glossary)] = (glossary, GlossaryMatcher(glossary))
    return {m.term_id for m in cached[1].find(text)}


def term_scores(items: Iterable[dict], glossary: Glossary) -> dict:
    """``items``: {"generated", "reference", "context": [texts], "state": {}} per reply."""
    ref_total = ref_hit = gen_total = grounded = 0
    ungrounded: Counter = Counter()
    for it in items:
        gen, ref = glossary_mentions(it["generated"], glossary), glossary_mentions(it["reference"], glossary)
        ctx = set().union(*(glossary_mentions(t, glossary) for t in it.get("context") or []))
        ctx |= {v for v in (it.get("state") or {}).values() if v in glossary.terms}
        ref_total += len(ref)
        ref_hit += len(ref & gen)
        gen_total += len(gen)
        ok = gen & (ctx | ref)
        grounded += len(ok)
        ungrounded.update(gen - ok)
    return {
        "term_recall": ref_hit / ref_total if ref_total else None,
        "term_grounding": grounded / gen_total if gen_total else 1.0,
        "reference_terms": ref_total,
        "generated_terms": gen_total,
        "ungrounded_terms": dict(ungrounded.most_common(20)),
    }
