"""Grounded template answers over the bundled KB with e5-small: answer rate, citation accuracy, groundedness.

Builds (or updates) the index of the bundled KB in a temporary folder, answers every labelled KB query
(``data/kb/queries.jsonl``) with ``GroundedAnswerer`` (no dialogue state: the query text alone), chooses the
confidence threshold on the validation queries and scores the test queries once with it. Per language:

- ``answer_rate``: share of queries answered (not handed off); ``handoff_rate`` = 1 - answer_rate, split
  into ``no_kb_answer`` (low confidence) and ``ungrounded`` (the fact checker refused the draft);
- ``citation_accuracy``: share of answered queries whose cited article is one of the query's answers;
  ``correct_answer_rate``: share of all queries answered with a correct citation;
- ``groundedness``: share of answered replies whose facts all appear in the cited article or the query
  (1.0 by construction: ``check_grounding`` refuses the others; reported as what the checker enforces).

The threshold (one for both languages, on the best article's fused score) is the lowest at which the
validation queries' citation accuracy (both languages pooled) reaches ``TARGET`` (0.95): a wrong article sent
to a customer costs more than a hand-off to an agent. The sweep beside it shows the trade-off.

    OMP_NUM_THREADS=1 python benchmarks/kb_answers.py --out benchmarks/results/2026-12-07-kb-answers.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from findial.data.kb.encoder import model_id
from findial.data.kb.facts import check_grounding
from findial.data.kb.grounded import DEFAULT_THRESHOLD, GroundedAnswerer
from findial.data.kb.index import Retriever
from findial.data.kb.load import DEFAULT_QUERIES, kb_version, load_kb, load_queries
from findial.runtime import setup
from findial.tracking import atomic_write_text
from findial.training.backbones import e5_small


def answer_all(answerer: GroundedAnswerer, queries: list[dict]) -> list[dict]:
    """One row per query at threshold 0 (the threshold is applied afterwards, on ``confidence``)."""
    rows = []
    for q in queries:
        a = answerer.answer(q["query"], q["lang"], threshold=-1.0)
        rows.append(
            {
                "id": q["id"],
                "lang": q["lang"],
                "confidence": a.confidence,
                "reply": a.text,
                "reason": a.reason,
                "cited": a.citations[0] if a.citations else None,
                "correct": bool(a.citations) and a.citations[0] in q["answers"],
            }
        )
    return rows


def score(rows: list[dict], threshold: float, articles: dict, queries: dict) -> dict:
    out = {}
    for lang in ("zh", "en"):
        mine = [r for r in rows if r["lang"] == lang]
        answered = [r for r in mine if r["reply"] is not None and r["confidence"] >= threshold]
        low = sum(r["confidence"] < threshold for r in mine)
        grounded = sum(
            not check_grounding(r["reply"], [articles[r["cited"]]], [queries[r["id"]]["query"]]) for r in answered
        )
        n = len(mine)
        out[lang] = {
            "queries": n,
            "answered": len(answered),
            "answer_rate": round(len(answered) / n, 4),
            "citation_accuracy": round(sum(r["correct"] for r in answered) / max(len(answered), 1), 4),
            "correct_answer_rate": round(sum(r["correct"] for r in answered) / n, 4),
            "groundedness": round(grounded / max(len(answered), 1), 4),
            "handoff_rate": round(1 - len(answered) / n, 4),
            "handoffs": {
                "no_kb_answer": low,
                "ungrounded": sum(r["confidence"] >= threshold and r["reason"] == "ungrounded" for r in mine),
            },
        }
    return out


TARGET = 0.95


def accuracy(rows: list[dict], threshold: float) -> float:
    answered = [r for r in rows if r["reply"] is not None and r["confidence"] >= threshold]
    return sum(r["correct"] for r in answered) / len(answered) if answered else 1.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the figures as JSON")
    p.add_argument("--index", help="an index directory to build or update (default: a temporary one)")
    args = p.parse_args()
    setup()
    model = e5_small()
    articles = load_kb()
    index_dir = Path(args.index or Path(tempfile.mkdtemp(prefix="kb-answers-")) / "kb-index")
    t0 = time.perf_counter()
    build = Retriever(model).index(articles, index_dir)
    answerer = GroundedAnswerer(Retriever.load(index_dir), articles)
    by_id = {a["id"]: a for a in articles}
    result = {
        "model_id": model_id(model),
        "kb_version": kb_version(articles),
        "index": build,
        "confidence": "fused score of the best-ranked article (weighted 0.8 dense + 0.2 BM25, min-max)",
        "selection": f"lowest threshold with validation citation accuracy >= {TARGET} (zh + en pooled)",
        "code_default_threshold": DEFAULT_THRESHOLD,
    }
    split_rows = {}
    for split in ("validation", "test"):
        queries = load_queries(DEFAULT_QUERIES, articles, split=split)
        t = time.perf_counter()
        split_rows[split] = (answer_all(answerer, queries), {q["id"]: q for q in queries})
        result[f"{split}_seconds"] = round(time.perf_counter() - t, 2)
    val_rows, val_q = split_rows["validation"]
    candidates = sorted({0.0, *(r["confidence"] for r in val_rows)})
    best = next(th for th in candidates if accuracy(val_rows, th) >= TARGET)
    result["threshold"] = round(best, 6)
    result["validation"] = {
        "at_threshold": score(val_rows, best, by_id, val_q),
        "at_0": score(val_rows, 0.0, by_id, val_q),
        "sweep": {f"{th:.2f}": score(val_rows, th, by_id, val_q) for th in (0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 1.0)},
    }
    test_rows, test_q = split_rows["test"]
    result["test"] = {"at_threshold": score(test_rows, best, by_id, test_q)}
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["examples"] = [
        {k: r[k] for k in ("id", "confidence", "cited", "correct", "reply")} for r in test_rows[:2] + test_rows[-2:]
    ]
    print(f"threshold (validation): {best}")
    for split in ("validation", "test"):
        for lang, m in result[split]["at_threshold"].items():
            print(
                f"{split} {lang}: answer rate {m['answer_rate']:.3f}  citation accuracy {m['citation_accuracy']:.3f}"
                f"  groundedness {m['groundedness']:.3f}  hand-off {m['handoff_rate']:.3f}  ({m['queries']} queries)"
            )
    if args.out:
        atomic_write_text(args.out, json.dumps(result, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
