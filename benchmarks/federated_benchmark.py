"""Centralised vs federated training on the same data, split non-IID by branch.

    .venv/bin/python benchmarks/federated_benchmark.py                       # default model, bundled corpus
    .venv/bin/python benchmarks/federated_benchmark.py model=tiny rounds=2   # any `findial fed simulate` override

The bundled corpus is non-IID by construction: each branch has its own language mix and product domains
(data/generator/corpus.yaml). Federated: each branch trains on its own dialogues only (Flower simulation,
Ray), ``rounds`` x ``local_epochs`` epochs. Centralised: one model trained on all branches' dialogues
for the same number of epochs (``findial train``'s ``train_task``). Both are scored by the ``findial eval``
metrics on the same test split. Prints: the non-IID split, accuracy side by side, bytes per round for
the adapter-only exchange (measured) vs a full-model exchange (the same messages carrying every weight),
and wall time per round. ``--out FILE`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

METRICS = (
    "intent_accuracy",
    "intent_macro_f1",
    "emotion_accuracy",
    "entity_micro_f1",
    "terminology_f1",
    "multi_turn_accuracy",
    "joint_state_accuracy",
)


def _intents(dialogues: list[dict]) -> Counter:
    return Counter(t["intent"] for d in dialogues for t in d["turns"] if t["speaker"] == "user")


def branch_table(dialogues: list[dict], branches: list[str]) -> list[str]:
    """Per branch: size, language mix, and the total variation distance of its intent mix to the whole corpus."""
    overall = _intents(dialogues)
    total = sum(overall.values())
    lines = [f"{'branch':<10} {'dialogues':>9} {'user turns':>10} {'zh share':>8} {'intent TV':>9}  top intents"]
    for b in branches:
        ds = [d for d in dialogues if d.get("branch") == b]
        intents = _intents(ds)
        turns = sum(intents.values())
        tv = 0.5 * sum(abs(intents[i] / max(1, turns) - overall[i] / total) for i in overall)
        top = ", ".join(f"{i} {n / max(1, turns):.0%}" for i, n in intents.most_common(3))
        zh = sum(d["lang"] == "zh" for d in ds) / max(1, len(ds))
        lines.append(f"{b:<10} {len(ds):>9} {turns:>10} {zh:>8.0%} {tv:>9.2f}  {top}")
    return lines


def centralised(cfg, out_dir: Path) -> tuple[dict, float]:
    """Train intent + NER on all branches' data for rounds x local_epochs epochs; score on the test split."""
    from omegaconf import OmegaConf

    from findial import tracking
    from findial.data.corpus import load_corpus
    from findial.data.labelbook import Glossary, LabelBook
    from findial.evaluation.metrics import evaluate_dialogues
    from findial.training.inference import NLUPipeline
    from findial.training.train import train_task

    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    cfg.trainer.max_epochs = int(cfg.rounds) * int(cfg.local_epochs)
    cfg.trainer.enable_progress_bar = False
    tracking.configure(cfg.logger.tracking_uri, cfg.logger.artifact_root)
    t0 = time.perf_counter()
    packages = {name: train_task(cfg, cfg.tasks[name], out_dir).package_dir for name in ("intent", "ner")}
    seconds = time.perf_counter() - t0
    labelbook, glossary = LabelBook.load(cfg.labels.ontology), Glossary.load(cfg.labels.glossary)
    test = load_corpus(cfg.data.test_file, labelbook, glossary)
    pred = NLUPipeline(packages["intent"], packages["ner"], "cpu", labelbook, glossary).predict_dialogues(test)
    return evaluate_dialogues(test, pred, labelbook), seconds


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the figures as JSON here")
    p.add_argument("--home", help="FINDIAL_HOME for the runs (default: a temporary folder)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of configs/fed.yaml, e.g. model=tiny rounds=2")
    args = p.parse_args(argv)
    home = Path(args.home or tempfile.mkdtemp(prefix="findial-fedbench-")).resolve()
    os.environ["FINDIAL_HOME"] = str(home)

    from findial.data.corpus import load_corpora
    from findial.data.labelbook import Glossary, LabelBook
    from findial.federated.config import compose
    from findial.federated.simulation import simulate

    cfg = compose([f"paths.home={home}", "registry.register=false", "evaluate_after=false", *args.overrides])
    branches = list(cfg.branches)
    train = load_corpora(cfg.data.train_file, LabelBook.load(cfg.labels.ontology), Glossary.load(cfg.labels.glossary))
    print(
        f"model {cfg.model.name}, {len(branches)} branches, {cfg.rounds} rounds x {cfg.local_epochs} local epoch(s), "
        f"aggregation {cfg.aggregation.name}, privacy {cfg.privacy.mode}\n"
    )
    print("non-IID split of the training data by branch:")
    print("\n".join(branch_table(train, branches)))

    central, central_s = centralised(cfg, home / "central")
    cfg.out_dir = str(home / "federated")
    t0 = time.perf_counter()
    fed = simulate(cfg)
    fed_s = time.perf_counter() - t0
    federated = fed["final_global_eval"]

    print(f"\n{'metric (test split)':<24} {'centralised':>12} {'federated':>10}")
    for m in METRICS:
        c, f = central.get(m), federated.get(m)
        print(f"{m:<24} {'-' if c is None else f'{c:.4f}':>12} {'-' if f is None else f'{f:.4f}':>10}")

    rounds = fed["rounds_report"]
    copy_adapter, copy_full = fed["exchange"]["adapter_bytes"], fed["exchange"]["full_model_bytes"]
    per_round = [r["bytes_sent"] + r["bytes_received"] for r in rounds]
    # the same messages with every weight in them: train down + up and evaluate down, per participating branch
    copies = [2 * len(r["participants"]) + len(r["branch_eval"]) for r in rounds]
    full_per_round = [n * copy_full for n in copies]
    print(f"\nbytes per round (sent + received), adapter-only (measured): {per_round}")
    print(f"bytes per round if the full model travelled (same messages):  {full_per_round}")
    print(
        f"one copy: adapters+heads {copy_adapter:,} B, full model {copy_full:,} B, ratio {copy_full / copy_adapter:.1f}x"
    )
    print(
        f"wall time per round (s): {[round(r['seconds'], 1) for r in rounds]} "
        f"(round 1 includes starting the Ray actors); federation total {fed_s:.0f}s, centralised training {central_s:.0f}s"
    )
    figures = {
        "model": str(cfg.model.name),
        "branches": branches,
        "rounds": int(cfg.rounds),
        "local_epochs": int(cfg.local_epochs),
        "centralised": {m: central.get(m) for m in METRICS},
        "federated": {m: federated.get(m) for m in METRICS},
        "bytes_per_round_adapter": per_round,
        "bytes_per_round_full_model": full_per_round,
        "copy_adapter_bytes": copy_adapter,
        "copy_full_model_bytes": copy_full,
        "ratio": copy_full / copy_adapter,
        "seconds_per_round": [r["seconds"] for r in rounds],
        "federation_seconds": fed_s,
        "centralised_seconds": central_s,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
