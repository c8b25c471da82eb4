"""What happens inside a branch (and the server's global evaluation): local training and scoring.

Training uses the same Lightning modules, features, length-bucketed batches and ``lightning.Trainer``
settings (``cfg.trainer``) as central training; FedProx adds its proximal term as a gradient callback.
Scoring writes the current weights as model packages into a temporary folder and runs the
``NLUPipeline`` + ``evaluate_dialogues`` of ``findial eval``, so per-round metrics are the gate metrics.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from functools import partial
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from findial.data.corpus import turn_records
from findial.data.labelbook import Glossary, LabelBook
from findial.training.datamodule import LengthBucketSampler, collate
from findial.training.features import encode_intent, encode_ner
from findial.training.package import save_package
from findial.typed_config import resolved

from .models import TASKS, TaskModels

log = logging.getLogger(__name__)


class ProximalTerm(Callback):
    """FedProx: adds the gradient of mu/2 * ||w - w_global||^2 before every optimiser step (before clipping)."""

    def __init__(self, mu: float):
        self.mu = float(mu)
        self.anchor: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.anchor = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        with torch.no_grad():
            for n, p in pl_module.named_parameters():
                if p.grad is not None and n in self.anchor:
                    p.grad.add_(p - self.anchor[n], alpha=self.mu)


def _features(models: TaskModels, task: str, cfg: DictConfig, dialogues: list[dict]) -> list[dict]:
    meta = models.metas[task]
    rows = turn_records(dialogues, meta["context_turns"], meta.get("non_task_intents", ()))
    if task == "intent":
        encode = partial(
            encode_intent,
            models.tokenizer,
            max_length=meta["max_length"],
            intents=meta["intents"],
            emotions=meta["emotions"],
            previous_intent=meta.get("previous_intent", False),
        )
    else:
        slots = LabelBook.load(cfg.labels.ontology).state_slots if "stand_head" in meta else None
        encode = partial(
            encode_ner, models.tokenizer, max_length=meta["max_length"], tags=meta["tags"], state_slots=slots
        )
    return [encode(r) for r in rows]


def train_local(
    models: TaskModels, cfg: DictConfig, dialogues: list[dict], epochs: int, seed: int, proximal_mu: float = 0.0
) -> dict[str, float]:
    """Train both task models on one branch's dialogues; returns loss and size metrics (numbers only)."""
    import lightning as L

    metrics: dict[str, float] = {}
    pad = models.tokenizer.pad_token_id or 0
    trainer_cfg = resolved(cfg.trainer)
    trainer_cfg.update(
        max_epochs=int(epochs),
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    for task in TASKS:
        L.seed_everything(seed, workers=True, verbose=False)
        features = _features(models, task, cfg, dialogues)
        if not features:
            raise ValueError(f"no {task} training turns in this branch's data")
        sampler = LengthBucketSampler(
            [len(f["input_ids"]) for f in features],
            int(cfg.tasks[task].batch_size),
            shuffle=True,
            seed=seed,
            pool=50 if cfg.data.get("length_bucketing", True) else 1,
        )
        # a list is a map-style dataset (len and getitem), which DataLoader's annotation does not say
        loader: DataLoader = DataLoader(features, batch_sampler=sampler, collate_fn=partial(collate, pad_id=pad))  # type: ignore[arg-type]
        with tempfile.TemporaryDirectory(prefix="findial-fed-") as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers|validation_step).*")
            trainer = instantiate(
                trainer_cfg, default_root_dir=tmp, callbacks=[ProximalTerm(proximal_mu)] if proximal_mu > 0 else []
            )
            trainer.fit(models.modules[task], train_dataloaders=loader)
        loss = trainer.callback_metrics.get("train_loss")
        metrics[f"{task}_train_loss"] = float(loss) if loss is not None else float("nan")
    return metrics


def save_packages(models: TaskModels, cfg: DictConfig, target: str | Path, extra_meta: dict | None = None) -> dict:
    """Write the intent and NER model packages (training/package.py format) under ``target``."""
    files = {"ontology.yaml": cfg.labels.ontology, "glossary.yaml": cfg.labels.glossary}
    out = {}
    for task in TASKS:
        out[task] = save_package(
            models.modules[task], {**models.metas[task], **(extra_meta or {})}, Path(target) / task, files=files
        )
    return out


def score_dialogues(
    models: TaskModels, cfg: DictConfig, dialogues: list[dict], device: str = "cpu"
) -> dict[str, float]:
    """The metrics of ``findial eval`` for the current weights on ``dialogues`` (numbers only, no text)."""
    from findial.evaluation.metrics import evaluate_dialogues
    from findial.training.inference import NLUPipeline

    labelbook = LabelBook.load(cfg.labels.ontology)
    glossary = Glossary.load(cfg.labels.glossary)
    with tempfile.TemporaryDirectory(prefix="findial-fed-eval-") as tmp:
        paths = save_packages(models, cfg, tmp)
        nlu = NLUPipeline(paths["intent"], paths["ner"], device, labelbook, glossary)
        pred = nlu.predict_dialogues(dialogues)
    metrics = evaluate_dialogues(dialogues, pred, labelbook)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
