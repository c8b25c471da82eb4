"""Train a response-generation model (task=response) from a composed Hydra config, tracked in MLflow.

``findial train task=response`` then registers the package (``registry.response_model_name``,
default ``findial-response``), see ``findial.cli.cmd_train``."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer

from findial import tracking
from findial.data.corpus import fingerprint
from findial.data.labelbook import Glossary, LabelBook
from findial.training.package import resolve_backbone
from findial.training.settings import run_settings
from findial.typed_config import resolved
from findial.training.train import AtomicCheckpointIO, TrainResult, _resume_path, checkpoint_callbacks

from .data import ResponseDataModule, response_records
from .module import ResponseLMModule
from .package import save_response_package
from .prompts import encode_example, ensure_chat_template, stop_token_ids
from .rules import RuleSet

log = logging.getLogger(__name__)


def response_meta(task: DictConfig, model: DictConfig) -> dict:
    if model.get("kind") != "causal_lm":
        raise ValueError(
            f"task=response needs a causal LM backbone (model=smollm2, gemma3, local_lm or tiny_lm), "
            f"not model={model.name}"
        )
    c = partial(OmegaConf.to_container, resolve=True)
    return {
        "task": "response",
        "backbone": c(model.backbone),
        "backbone_name": model.name,
        "chat_template": model.get("chat_template"),
        "stop_tokens": list(model.get("stop_tokens") or []),
        "lora": c(model.lora),
        "optim": c(model.optim),
        "max_length": task.max_length,
        "max_response_tokens": task.max_response_tokens,
        "context_turns": task.context_turns,
        "system_prompt": c(task.system_prompt),
        "generation": c(task.generation),
    }


def train_response(cfg: DictConfig, task: DictConfig, out_dir: str | Path) -> TrainResult:
    """Fine-tune LoRA adapters of a causal LM on the corpus's agent turns; save and log the package."""
    run_settings(cfg)  # a bad model, data or trainer setting fails here, before any data or model is loaded
    L.seed_everything(cfg.seed, workers=True)
    labelbook = LabelBook.load(cfg.labels.ontology)
    glossary = Glossary.load(cfg.labels.glossary)
    rules = RuleSet.from_dict(resolved(task.rules), source="task.rules")
    meta = response_meta(task, cfg.model)
    backbone = resolve_backbone(meta["backbone"])
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    ensure_chat_template(tokenizer, meta["chat_template"])
    end_id = stop_token_ids(tokenizer, meta["stop_tokens"])[0]
    encode = partial(
        encode_example,
        tokenizer,
        system_prompt=meta["system_prompt"],
        max_length=task.max_length,
        max_response_tokens=task.max_response_tokens,
        end_id=end_id,
    )
    dm = ResponseDataModule(
        cfg.data.train_file,
        cfg.data.val_file,
        encode,
        tokenizer,
        labelbook,
        glossary,
        batch_size=task.batch_size,
        eval_batch_size=task.batch_size,
        context_turns=task.context_turns,
        seed=cfg.seed,
        bucket=cfg.data.get("length_bucketing", True),
    )
    dm.setup()
    data_fp = fingerprint(dm.train_dialogues + dm.val_dialogues, cfg.labels.ontology, cfg.labels.glossary)
    module = ResponseLMModule(str(backbone), meta["lora"], meta["optim"])
    task_dir = Path(out_dir) / task.name
    config = resolved(cfg)
    tags = {"findial.task": task.name, "findial.data_fingerprint": data_fp, "findial.backbone": cfg.model.name}
    with tracking.run(
        cfg.logger.experiment_prefix + task.name, f"train-{task.name}-{cfg.model.name}", tags=tags
    ) as active:
        tracking.log_params(
            {
                "task": {k: v for k, v in config["task"].items() if k != "rules"},
                "model": meta["lora"],
                "model_name": cfg.model.name,
                "seed": cfg.seed,
                "data": config["data"],
                "trainer": config["trainer"],
            }
        )
        tracking.log_text(OmegaConf.to_yaml(config), "config/resolved.yaml")
        n_target = sum(sum(x != -100 for x in f["labels"]) for f in dm.train_features)
        tracking.log_json(
            {
                "data_fingerprint": data_fp,
                "train_dialogues": len(dm.train_dialogues),
                "train_responses": len(dm.train_features),
                "val_responses": len(dm.val_features),
                "train_response_tokens": n_target,
            },
            "data/summary.json",
        )
        from lightning.pytorch.loggers import MLFlowLogger

        logger = MLFlowLogger(tracking_uri=cfg.logger.tracking_uri, run_id=active.info.run_id)
        trainer_cfg = resolved(cfg.trainer)
        if trainer_cfg.get("max_epochs") is None:
            trainer_cfg["max_epochs"] = task.epochs
        trainer = instantiate(
            trainer_cfg,
            logger=logger,
            default_root_dir=str(task_dir),
            plugins=[AtomicCheckpointIO()],
            callbacks=[*checkpoint_callbacks(task_dir / "checkpoints"), LearningRateMonitor(logging_interval="step")],
        )
        trainer.fit(module, datamodule=dm, ckpt_path=_resume_path(cfg.get("resume"), cfg.paths.home, task.name))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        package = task_dir / "package"
        if trainer.is_global_zero:
            save_response_package(
                module,
                {**meta, "data_fingerprint": data_fp, "train_run_id": active.info.run_id},
                package,
                rules.to_dict(),
                files={"ontology.yaml": cfg.labels.ontology, "glossary.yaml": cfg.labels.glossary},
            )
            import mlflow

            mlflow.log_artifacts(str(package), "package")
            if task.get("log_samples"):
                _log_samples(package, dm.val_dialogues, task, int(task.log_samples))
        log.info("trained %s: %s", task.name, metrics)
        # run_id "" on the other ranks of a multi-device run, as train_task does: only rank 0 registers
        return TrainResult(task.name, package, active.info.run_id if trainer.is_global_zero else "", data_fp, metrics)


def _log_samples(package: Path, dialogues: list[dict], task: DictConfig, n: int) -> None:
    """A few generated replies beside their references (masked), to read what the model says."""
    from .responder import Responder

    responder = Responder(package, device="auto")
    rows = response_records(dialogues, task.context_turns)[:n]
    samples = []
    for r in rows:
        out = responder.respond(r["history"], r["intent"], r["state"], r["lang"])
        samples.append(
            {
                "dialogue_id": r["dialogue_id"],
                "turn_index": r["turn_index"],
                "context": r["history"][-1]["text"] if r["history"] else "",
                "reference": r["response"],
                "generated": out["text"],
                "flags": out["flags"],
            }
        )
    tracking.log_json(samples, "samples.json")
    log.info("sample replies:\n%s", "\n".join(json.dumps(s, ensure_ascii=False) for s in samples))
