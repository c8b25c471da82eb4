#!/usr/bin/env python
"""Training throughput: findial's intent training vs a plain Hugging Face Trainer, same model, data and machine.

    python benchmarks/train_throughput.py                               # e5_small, 1024 turns, 1 epoch
    python benchmarks/train_throughput.py --model tiny --max-samples 256 --repeats 2
    python benchmarks/train_throughput.py --max-samples 512 model.lora.top_layers=6   # + any train override

Both sides train the same backbone with the same LoRA config (``model.lora``: rank, alpha, dropout,
target modules, layers), learning rate, batch size, max length and epochs on the same tokenised user
turns with their dialogue context (the bundled corpus's train split, or ``--data FILE``; the first
``--max-samples`` turns), one device, fp32 unless ``trainer.precision`` says otherwise:

- findial: ``IntentModule`` + ``TurnDataModule`` (length-bucketed, dynamically padded batches) in a
  Lightning ``Trainer`` built from findial's trainer config, the emotion head off (``--emotion`` to keep it);
- Hugging Face: ``AutoModelForSequenceClassification`` + peft ``LoraConfig(task_type=SEQ_CLS)`` in
  ``transformers.Trainer`` with ``DataCollatorWithPadding`` (random batches padded to their longest).

samples/s = turns x epochs / wall time from the start to the end of the training loop (model loading,
tokenisation and validation excluded on both sides). With ``--repeats N`` the sides alternate N times and
the best run of each counts. Padding efficiency = real tokens / padded tokens in the batches trained on.
Prints a table and the ratio findial / HF; ``--out FILE`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import torch


def _compose(model: str, overrides: list[str]):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from findial.runtime import setup as _setup

    _setup()
    with initialize_config_module("findial.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "task=intent", *overrides])
    OmegaConf.resolve(cfg)
    return cfg


def _device(cfg) -> str:
    acc = cfg.trainer.accelerator
    return "cuda" if acc in ("cuda", "gpu") or (acc == "auto" and torch.cuda.is_available()) else "cpu"


class _Tokens:
    """Counts real and padded tokens of the batches a side trains on."""

    def __init__(self):
        self.real = self.padded = self.samples = 0

    def add(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.padded += input_ids.numel()
        self.real += int(attention_mask.sum())
        self.samples += input_ids.shape[0]


def prepare(cfg, data_file: str, max_samples: int, emotion: bool):
    """Tokenised turns via findial's own data module (the same features feed both sides)."""
    from transformers import AutoTokenizer

    from findial.data.labelbook import Glossary, LabelBook
    from findial.training.datamodule import TurnDataModule
    from findial.training.features import encode_intent
    from findial.training.package import resolve_backbone
    from findial.training.train import task_meta

    labelbook, glossary = LabelBook.load(cfg.labels.ontology), Glossary.load(cfg.labels.glossary)
    meta = task_meta(cfg.task, cfg.model, labelbook, cfg.data.context_turns)
    if not emotion:
        meta["emotions"] = []
    backbone = resolve_backbone(meta["backbone"])
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    encode = partial(
        encode_intent,
        tokenizer,
        max_length=cfg.task.max_length,
        intents=meta["intents"],
        emotions=meta["emotions"],
        previous_intent=meta.get("previous_intent", False),
    )
    dm = TurnDataModule(
        data_file,
        data_file,
        encode,
        tokenizer,
        labelbook,
        glossary,
        batch_size=cfg.task.batch_size,
        context_turns=cfg.data.context_turns,
        seed=cfg.seed,
        bucket=cfg.data.get("length_bucketing", True),
    )
    dm.setup()
    n = min(max_samples, len(dm.train_features)) if max_samples else len(dm.train_features)
    dm.train_features = dm.train_features.select(range(n))
    return meta, backbone, tokenizer, dm


def run_findial(cfg, meta, backbone, dm, epochs: int) -> dict:
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from findial.training.package import build_module

    tokens = _Tokens()
    clock = {}

    class Timer(Callback):
        def on_train_start(self, trainer, module):
            _sync()
            clock["start"] = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            tokens.add(batch["input_ids"], batch["attention_mask"])

        def on_train_end(self, trainer, module):
            _sync()
            clock["end"] = time.perf_counter()

    L.seed_everything(cfg.seed, workers=True)
    module = build_module(meta, backbone)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=_device(cfg),
        devices=1,
        precision=cfg.trainer.precision,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[Timer()],
    )
    trainer.fit(module, datamodule=dm)
    return _figures(tokens, clock["end"] - clock["start"], epochs, len(dm.train_features))


def run_hf(cfg, meta, backbone, tokenizer, dm, epochs: int, out_dir: Path) -> dict:
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    set_seed(cfg.seed)
    lora = meta["lora"]
    model = AutoModelForSequenceClassification.from_pretrained(str(backbone), num_labels=len(meta["intents"]))
    n_layers = model.config.num_hidden_layers
    top = lora.get("top_layers")
    layers = list(range(n_layers - top, n_layers)) if top and top < n_layers else None
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=list(lora["target_modules"]),
            layers_to_transform=layers,
            bias="none",
        ),
    )
    keep = ["input_ids", "attention_mask", "intent_label"]
    train = dm.train_features.remove_columns([c for c in dm.train_features.column_names if c not in keep])
    train = train.rename_column("intent_label", "labels")
    tokens = _Tokens()
    pad = DataCollatorWithPadding(tokenizer)

    def collate(features):
        batch = pad(features)
        tokens.add(batch["input_ids"], batch["attention_mask"])
        return batch

    clock = {}

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            _sync()
            clock["start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            _sync()
            clock["end"] = time.perf_counter()

    steps = -(-len(train) // cfg.task.batch_size) * epochs
    precision = str(cfg.trainer.precision)
    args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=cfg.task.batch_size,
        num_train_epochs=epochs,
        learning_rate=meta["optim"]["lr"],
        weight_decay=meta["optim"].get("weight_decay", 0.0),
        warmup_steps=int(steps * meta["optim"].get("warmup_ratio", 0.0)),
        max_grad_norm=cfg.trainer.gradient_clip_val or 0.0,
        seed=cfg.seed,
        use_cpu=_device(cfg) == "cpu",
        bf16=precision.startswith("bf16"),
        fp16=precision.startswith("16"),
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    Trainer(model=model, args=args, train_dataset=train, data_collator=collate, callbacks=[Timer()]).train()
    return _figures(tokens, clock["end"] - clock["start"], epochs, len(train))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _figures(tokens: _Tokens, seconds: float, epochs: int, n: int) -> dict:
    return {
        "samples": n * epochs,
        "seconds": round(seconds, 3),
        "samples_per_s": round(n * epochs / seconds, 2),
        "batches_samples": tokens.samples,
        "padding_efficiency": round(tokens.real / max(1, tokens.padded), 4),
        "padded_tokens": tokens.padded,
    }


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from findial.data.corpus import corpus_files

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="e5_small", help="findial model config: e5_small, minilm, tiny, local")
    p.add_argument("--data", default=None, help="corpus file (default: the first file of data.train_file)")
    p.add_argument("--max-samples", type=int, default=1024, help="first N user turns (0: all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="alternate the two sides N times; best of each counts")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for both sides")
    p.add_argument("--emotion", action="store_true", help="keep findial's emotion head (extra work for findial)")
    p.add_argument("--out", default=None, help="write the figures as JSON")
    p.add_argument("overrides", nargs="*", help="train config overrides, e.g. model.lora.top_layers=6")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = _compose(a.model, a.overrides)
    data = a.data or corpus_files(cfg.data.train_file)[0][0]  # the first training file
    if not Path(data).is_file():
        p.error(f"--data {data}: no such file")
    meta, backbone, tokenizer, dm = prepare(cfg, data, a.max_samples, a.emotion)
    runs: dict[str, list[dict]] = {"findial": [], "hf_trainer": []}
    with tempfile.TemporaryDirectory(prefix="findial-throughput-") as tmp:
        for i in range(a.repeats):
            runs["findial"].append(run_findial(cfg, meta, backbone, dm, a.epochs))
            runs["hf_trainer"].append(run_hf(cfg, meta, backbone, tokenizer, dm, a.epochs, Path(tmp) / str(i)))
    best = {k: max(v, key=lambda r: r["samples_per_s"]) for k, v in runs.items()}
    ratio = best["findial"]["samples_per_s"] / best["hf_trainer"]["samples_per_s"]
    print(
        f"\nmodel={a.model} turns={len(dm.train_features)} epochs={a.epochs} batch={cfg.task.batch_size} "
        f"max_length={cfg.task.max_length} lora r={meta['lora']['r']} device={_device(cfg)} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"{'':12} {'samples/s':>10} {'seconds':>9} {'padding eff.':>13}")
    for name, r in best.items():
        print(f"{name:12} {r['samples_per_s']:>10.2f} {r['seconds']:>9.2f} {r['padding_efficiency']:>13.3f}")
    print(f"ratio findial / HF Trainer: {ratio:.2f}x (target >= 1.0)")
    if a.out:
        from findial.tracking import atomic_write_text

        report = {
            "model": a.model,
            "data": str(data),
            "turns": len(dm.train_features),
            "epochs": a.epochs,
            "batch_size": cfg.task.batch_size,
            "max_length": cfg.task.max_length,
            "lora": meta["lora"],
            "device": _device(cfg),
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "runs": runs,
            "best": best,
            "ratio": round(ratio, 3),
            "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        }
        atomic_write_text(a.out, json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
