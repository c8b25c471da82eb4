"""Knowledge-base retrieval with e5-small: dense, BM25 and their fusion, chosen on validation, reported on test.

Builds the index of the bundled KB in a temporary folder (timing the full build, an unchanged rebuild and a
one-article edit, each by a fresh ``Retriever`` as ``findial kb index`` makes one), sweeps the fusion
settings on the validation queries, keeps the best mean of the zh and en MRR, then scores the test queries
once: the chosen setting, with dense alone and BM25 alone beside it for comparison (not used for choosing).
Prints the figures; ``--out`` writes them as JSON.

    OMP_NUM_THREADS=1 python benchmarks/kb_retrieval.py --out benchmarks/results/2026-12-07-kb-retrieval.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from findial.data.kb.load import DEFAULT_QUERIES, load_kb, load_queries
from findial.data.kb.encoder import model_id
from findial.data.kb.scoring import evaluate_settings, macro_mrr
from findial.data.kb.index import DEFAULT_FUSION, DEFAULT_WEIGHT, Retriever
from findial.runtime import setup
from findial.training.backbones import e5_small
from findial.tracking import atomic_write_text

SETTINGS = [("weighted", round(w / 10, 1)) for w in range(11)] + [("rrf", w) for w in (0.3, 0.5, 0.7)]
NAMES = {("weighted", 1.0): "dense", ("weighted", 0.0): "bm25"}


def name(setting: tuple[str, float]) -> str:
    return NAMES.get(setting, f"{setting[0]}:{setting[1]}")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the figures as JSON")
    args = p.parse_args()
    setup()  # quiet model loading
    model = e5_small()
    articles = load_kb()
    index_dir = Path(tempfile.mkdtemp(prefix="kb-bench-")) / "kb-index"
    build, t_build = timed(lambda: Retriever(model).index(articles, index_dir))
    same, t_same = timed(lambda: Retriever(model).index(articles, index_dir))
    edited = [dict(a) for a in articles]
    edited[0]["body"] += " 具体以本行公告为准。"
    one, t_one = timed(lambda: Retriever(model).index(edited, index_dir))
    Retriever(model).index(articles, index_dir)  # back to the bundled KB
    retriever = Retriever.load(index_dir)

    validation = load_queries(DEFAULT_QUERIES, articles, split="validation")
    sweep, t_val = timed(lambda: evaluate_settings(retriever, validation, SETTINGS))
    best = max(SETTINGS, key=lambda s: (round(macro_mrr(sweep[s]), 6), -SETTINGS.index(s)))
    test = load_queries(DEFAULT_QUERIES, articles, split="test")
    shown = list(dict.fromkeys([best, ("weighted", 1.0), ("weighted", 0.0)]))
    on_test, t_test = timed(lambda: evaluate_settings(retriever, test, shown))

    result = {
        "model_id": model_id(model),
        "kb_version": build["kb_version"],
        "articles": len(articles),
        "torch_threads": torch.get_num_threads(),
        "index": {
            "full_build_s": t_build,
            "full_build": build,
            "unchanged_rebuild_s": t_same,
            "unchanged_rebuild": same,
            "one_edit_rebuild_s": t_one,
            "one_edit_rebuild": one,
        },
        "validation": {
            "queries": len(validation),
            "seconds": t_val,
            "selection": "max mean(zh MRR, en MRR)",
            "chosen": {"fusion": best[0], "weight": best[1], "name": name(best)},
            "code_default": {"fusion": DEFAULT_FUSION, "weight": DEFAULT_WEIGHT},
            "settings": {name(s): {**sweep[s], "macro_mrr": macro_mrr(sweep[s])} for s in SETTINGS},
        },
        "test": {
            "queries": len(test),
            "seconds": t_test,
            "settings": {name(s): {**on_test[s], "macro_mrr": macro_mrr(on_test[s])} for s in shown},
        },
    }
    for split in ("validation", "test"):
        print(f"{split}:")
        for setting, m in result[split]["settings"].items():
            cells = "  ".join(
                f"{lang} R@1 {m[lang]['recall@1']:.3f} R@5 {m[lang]['recall@5']:.3f} MRR {m[lang]['mrr']:.3f}"
                for lang in ("zh", "en")
            )
            print(f"  {setting:<14} {cells}")
    print(
        f"chosen on validation: {name(best)}; index: full build {t_build}s, unchanged rebuild {t_same}s "
        f"({same['embedded']} embedded), one-article edit {t_one}s ({one['embedded']} embedded)"
    )
    if args.out:
        atomic_write_text(args.out, json.dumps(result, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
