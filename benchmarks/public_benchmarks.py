#!/usr/bin/env python
"""Measure findial on public banking NLU benchmarks, beside the published figures.

    python benchmarks/public_benchmarks.py --full-train --out results.json
    python benchmarks/public_benchmarks.py --which banking77 --model e5_small --epochs 5
    python benchmarks/public_benchmarks.py --which banking77 --model tiny --epochs 1 --max-train 200

- BANKING77: findial's intent model; test accuracy (and macro F1) on the official test split.
- NLU++ banking: findial's NER model on the slots; strict span + label micro F1 on the test folds
  (``entity_prf_per_label``). Its intents are multi-label, which findial's single intent head does not
  model, so they are not scored.

Each model is trained by findial's own code: the Hydra ``train`` config with ``data=custom`` on JSON Lines
files written to a temporary directory (removed at the end; the datasets are never copied into the
repository), ``labels.ontology`` the generated label book and ``labels.glossary`` an empty glossary. Runs
are tracked in an MLflow sqlite store under a temporary home, or under ``--home`` to keep them. Split
protocols: ``findial.data.benchmarks``; settings: ``configs/benchmark/public.yaml``. Nothing here looks at
the test split before the final evaluation; ``validation`` figures are printed for any choice you make.

Throughput: train samples/s = training examples x epochs / wall time of the whole training call (backbone
load and the per-epoch validation pass included); train step samples/s counts the training steps only
(forward, backward, optimiser); inference samples/s = test examples / prediction time (package load
excluded, reported apart).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SETTINGS = REPO_ROOT / "configs" / "benchmark" / "public.yaml"
WHICH = ("banking77", "nlupp")
MODELS = ("e5_small", "minilm", "tiny")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--datasets-dir",
        help="the public datasets folder (default: $FINDIAL_DATASETS, else "
        "datasets_dir of --settings, relative to the repository root)",
    )
    p.add_argument("--which", default="banking77,nlupp", help="comma-separated: banking77, nlupp")
    p.add_argument(
        "--model",
        choices=MODELS,
        help="findial backbone config (model=...) for every benchmark "
        "(default: each benchmark's `model` in --settings)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="trainer.max_epochs for every benchmark (default: each benchmark's "
        "`epochs` in --settings, else the task config's)",
    )
    p.add_argument("--max-train", type=int, help="use at most N training examples (quick runs)")
    p.add_argument("--max-eval", type=int, help="use at most N validation and N test examples (quick runs)")
    p.add_argument(
        "--full-train",
        action="store_true",
        help="train on train + validation (all the labelled training data, as the published figures "
        "do) once settings were chosen on validation; the validation figure is then not held out",
    )
    p.add_argument("--seed", type=int, help="seed for splits, sampling and training (default: settings)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--out", default="results.json", help="results JSON, written atomically")
    p.add_argument("--home", help="keep the MLflow store and model packages here (default: a temp dir, removed)")
    p.add_argument("--settings", default=str(SETTINGS), help="benchmark settings YAML")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for the train config, e.g. model.optim.lr=5e-4")
    args = p.parse_args(argv)
    args.which = [w.strip() for w in args.which.split(",") if w.strip()]
    unknown = [w for w in args.which if w not in WHICH]
    if unknown or not args.which:
        p.error(f"--which: unknown benchmark(s) {unknown}; choose from {', '.join(WHICH)}")
    for flag in ("epochs", "max_train", "max_eval"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    return args


def _quote(path) -> str:
    """A path as a quoted Hydra override value (spaces, '=' and quotes survive)."""
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", str(path))  # Hydra: escape quotes and the
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text) + "'"  # backslashes before them or the end


def compose_train(task: str, files: dict, args, home: Path, seed: int, model: str, epochs: int | None):
    """The findial ``train`` config for one task on the benchmark files."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    overrides = [
        f"paths.home={_quote(home)}",
        f"task={task}",
        f"model={model}",
        "data=custom",
        f"data.train_file={_quote(files['train'])}",
        f"data.val_file={_quote(files['validation'])}",
        f"data.test_file={_quote(files['test'])}",
        f"labels.ontology={_quote(files['ontology'])}",
        f"labels.glossary={_quote(files['glossary'])}",
        f"seed={seed}",
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        f"trainer.enable_progress_bar={str(sys.stderr.isatty()).lower()}",
    ]
    if task == "intent":  # single-turn data whose label book has no dialogue-management intents
        overrides += ["task.non_task_intents=[]", "task.stateless_intents=[]"]
    if epochs:
        overrides.append(f"trainer.max_epochs={epochs}")
    with initialize_config_module("findial.configs", version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, *args.overrides])
    OmegaConf.resolve(cfg)
    return cfg


def _step_timer():
    """A Lightning callback adding up the time spent in training steps (forward, backward, optimiser)."""
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        seconds = 0.0

        def on_train_batch_start(self, *_):
            self._t = time.perf_counter()

        def on_train_batch_end(self, *_):
            self.seconds += time.perf_counter() - self._t

    return StepTimer()


def train(bench, files: dict, args, home: Path, seed: int, model: str, epochs: int | None) -> tuple[dict, object]:
    from findial import tracking
    from findial.training.train import train_task

    cfg = compose_train(bench.task, files, args, home, seed, model, epochs)
    tracking.configure(cfg.logger.tracking_uri, cfg.logger.artifact_root)
    epochs = cfg.trainer.max_epochs or cfg.task.epochs
    timer = _step_timer()
    start = time.perf_counter()
    result = train_task(cfg, cfg.task, home / "runs" / bench.name, callbacks=[timer])
    wall = time.perf_counter() - start
    n = len(bench.splits["train"])
    return {
        "epochs": int(epochs),
        "batch_size": int(cfg.task.batch_size),
        "train_wall_s": round(wall, 2),
        "train_samples_per_s": round(n * epochs / wall, 2),
        "train_steps_s": round(timer.seconds, 2),
        "train_step_samples_per_s": round(n * epochs / timer.seconds, 2) if timer.seconds else None,
        "train_run_id": result.run_id,
        "data_fingerprint": result.data_fingerprint,
        "train_metrics": {k: round(v, 6) for k, v in result.metrics.items()},
    }, result


def _timed(fn, *a):
    start = time.perf_counter()
    out = fn(*a)
    return out, time.perf_counter() - start


def _with(gold: list[dict], updates: list[dict]) -> list[dict]:
    """Predicted copies of one-turn dialogues: the turn's gold fields replaced by ``updates``."""
    preds = copy.deepcopy(gold)
    for d, u in zip(preds, updates):
        d["turns"][0].update(u)
    return preds


def evaluate_intent(bench, package: Path, device: str) -> dict:
    from findial.data.corpus import turn_records
    from findial.evaluation.metrics import intent_accuracy, intent_macro_f1
    from findial.training.inference import IntentPredictor

    predictor, load_s = _timed(IntentPredictor, package, device)
    out = {"package_load_s": round(load_s, 2)}
    for split in ("validation", "test"):
        gold = bench.splits[split]
        preds, secs = _timed(predictor.predict, turn_records(gold, 0))
        pred = _with(gold, [{"intent": p["intent"]} for p in preds])
        out[split] = {
            "examples": len(gold),
            "accuracy": intent_accuracy(gold, pred),
            "macro_f1": intent_macro_f1(gold, pred),
        }
        if split == "test":
            out.update(inference_wall_s=round(secs, 2), inference_samples_per_s=round(len(gold) / secs, 2))
    return out


def tokenizer_ceiling(predictor, gold: list[dict]) -> list[dict]:
    """Gold spans pushed through the model's tokenisation and decoding: the best a perfect tagger can score."""
    from findial.training.features import IGNORE, decode_spans, encode_ner

    tags, out = predictor.meta["tags"], []
    for d in gold:
        turn = d["turns"][0]
        f = encode_ner(predictor.tokenizer, turn, predictor.meta["max_length"], tags)
        ids = [0 if t == IGNORE else t for t in f["tag_labels"]]
        out.append({"entities": decode_spans(turn["text"], f["offsets"], ids, tags)})
    return out


def evaluate_ner(bench, package: Path, device: str, labels: list[str]) -> dict:
    from findial.evaluation.metrics import entity_prf_per_label
    from findial.training.inference import EntityPredictor

    predictor, load_s = _timed(EntityPredictor, package, device)
    out = {"package_load_s": round(load_s, 2)}
    for split in ("validation", "test"):
        gold = bench.splits[split]
        spans, secs = _timed(predictor.predict, [d["turns"][0]["text"] for d in gold])
        per = entity_prf_per_label(gold, _with(gold, [{"entities": s} for s in spans]), labels)
        out[split] = {
            "examples": len(gold),
            "slot_f1": per["micro"]["f1"],
            "slot_precision": per["micro"]["precision"],
            "slot_recall": per["micro"]["recall"],
            "slot_mentions": per["micro"]["support"],
        }
        if split == "test":
            out["test"]["per_label"] = {k: v for k, v in per.items() if k != "micro"}
            ceiling = entity_prf_per_label(gold, _with(gold, tokenizer_ceiling(predictor, gold)), labels)
            out["test"]["slot_f1_tokenisation_ceiling"] = ceiling["micro"]["f1"]
            out.update(inference_wall_s=round(secs, 2), inference_samples_per_s=round(len(gold) / secs, 2))
    return out


def load_benchmark(which: str, root: Path, settings, seed: int):
    from findial.data import benchmarks as B

    if which == "banking77":
        return B.load_banking77(root, settings.banking77.val_fraction, seed)
    return B.load_nlupp_banking(root, list(settings.nlupp.test_folds), settings.nlupp.val_fraction, seed)


def subsample(bench, args, seed: int) -> None:
    from findial.data.benchmarks import intent_of, take

    key = intent_of if bench.task == "intent" else None
    bench.splits["train"] = take(bench.splits["train"], args.max_train, seed, key)
    for split in ("validation", "test"):
        bench.splits[split] = take(bench.splits[split], args.max_eval, seed, key)


def model_and_epochs(which: str, settings, args) -> tuple[str, int | None]:
    """The backbone config and epochs for one benchmark: the command line's, else the settings' (None: the task's)."""
    return (args.model or settings[which].get("model") or "e5_small", args.epochs or settings[which].get("epochs"))


def run_one(which: str, root: Path, settings, args, home: Path, work: Path, seed: int) -> dict:
    from findial.data.labelbook import LabelBook

    bench = load_benchmark(which, root, settings, seed)
    subsample(bench, args, seed)
    protocol = bench.protocol
    if args.full_train:
        bench.splits["train"] = bench.splits["train"] + bench.splits["validation"]
        protocol += " --full-train: the validation examples are trained on too (validation figure not held out)."
    files = bench.write(work / bench.name)
    model, epochs = model_and_epochs(which, settings, args)
    record = {
        "dataset": bench.name,
        "task": bench.task,
        "protocol": protocol,
        "model": model,
        "validation_in_training": args.full_train,
        "examples": {k: len(v) for k, v in bench.splits.items()},
        "subset": bool(args.max_train or args.max_eval),
    }
    info, result = train(bench, files, args, home, seed, model, epochs)
    record.update(info)
    if bench.task == "intent":
        record.update(evaluate_intent(bench, result.package_dir, args.device))
        record.update(
            metric="test accuracy (%)",
            value=100 * record["test"]["accuracy"],
            published=settings.banking77.published_accuracy,
            target=settings.banking77.target_accuracy,
        )
    else:
        labels = LabelBook.load(files["ontology"]).entities
        record.update(evaluate_ner(bench, result.package_dir, args.device, labels))
        f1 = record["test"]["slot_f1"]
        record.update(
            metric="test slot F1 micro (%)",
            value=None if f1 is None else 100 * f1,
            published=settings.nlupp.published_slot_f1,
            target=None,
        )
    if record["value"] is not None:
        record["value"] = round(record["value"], 2)
    return record


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)


def report(results: dict) -> str:
    lines = [f"{'benchmark':<15}{'metric':<24}{'findial':>9}{'published':>11}{'target':>8}"]
    for r in results["benchmarks"].values():
        lines.append(
            f"{r['dataset']:<15}{r['metric']:<24}{_fmt(r['value']):>9}{_fmt(r['published']):>11}{_fmt(r['target']):>8}"
        )
    for r in results["benchmarks"].values():
        val = r["validation"].get("accuracy", r["validation"].get("slot_f1"))
        lines.append(
            f"  {r['dataset']}: {r['model']}, {r['epochs']} epoch(s), train {r['examples']['train']} ex "
            f"in {r['train_wall_s']:.1f} s ({r['train_samples_per_s']:.1f} samples/s; "
            f"{_fmt(r['train_step_samples_per_s'])} in training steps); inference "
            f"{r['examples']['test']} ex in {r['inference_wall_s']:.2f} s "
            f"({r['inference_samples_per_s']:.1f} samples/s); validation {_fmt(None if val is None else 100 * val)}"
            + (" (trained on: not held out)" if r.get("validation_in_training") else "")
            + ("; SUBSET (--max-train/--max-eval): not comparable" if r["subset"] else "")
        )
    lines.append(f"total wall time {results['wall_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from omegaconf import OmegaConf

    from findial.runtime import setup as _setup
    from findial.data.benchmarks import resolve_datasets_dir
    from findial.data.pii import redact_json
    from findial.tracking import atomic_write_text, git_commit

    _setup()
    settings = OmegaConf.load(args.settings)
    root = resolve_datasets_dir(args.datasets_dir, settings.datasets_dir)
    seed = settings.seed if args.seed is None else args.seed
    start = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    results = {
        "command": shlex.join(["python", "benchmarks/public_benchmarks.py", *argv]),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "datasets_dir": str(root),
        "seed": seed,
        "device": args.device,
        "git_commit": git_commit(),
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()},
        "benchmarks": {},
    }
    with tempfile.TemporaryDirectory(prefix="findial-bench-") as tmp:
        home = Path(args.home).resolve() if args.home else Path(tmp) / "home"
        home.mkdir(parents=True, exist_ok=True)
        # The corpus files live until the packages are saved: beside the runs (a directory this run owns),
        # unless that is inside the repository, where the datasets must never be written.
        inside_repo = home == REPO_ROOT or REPO_ROOT in home.parents
        with tempfile.TemporaryDirectory(prefix=".bench-data-", dir=tmp if inside_repo else home) as data:
            for which in args.which:
                results["benchmarks"][which] = run_one(which, root, settings, args, home, Path(data), seed)
    results["wall_s"] = round(time.perf_counter() - start, 2)
    atomic_write_text(args.out, json.dumps(redact_json(results), indent=2, ensure_ascii=False) + "\n")
    print(report(results))
    print(f"results: {Path(args.out).resolve()}")
    return results


if __name__ == "__main__":
    main()
