"""Train one task (intent or ner) from a composed Hydra config, tracked in MLflow."""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer

from findial import tracking
from findial.data.corpus import fingerprint
from findial.data.labelbook import Glossary, LabelBook
from findial.data.term_matcher import GlossaryMatcher, settled_forms
from findial.typed_config import resolved

from .averaging import TailAveraging
from .package import build_module, resolve_backbone, save_package
from .settings import run_settings
from .strategies import consolidated_trainable_state, is_launch_rank_zero, is_sharded, rebuilt_module
from .tasks import TASKS, IntentTask, NERTask, WeightAveraging, task_settings

log = logging.getLogger(__name__)


def checkpoint_callbacks(directory: Path) -> list[ModelCheckpoint]:
    """The best epoch by validation loss, and ``last.ckpt`` rewritten after every epoch (what ``resume=last``
    continues from; Lightning's ``save_last`` writes it only when a new best is saved, so a run killed after its
    best epoch would resume from there and lose the epochs since)."""
    return [
        ModelCheckpoint(dirpath=str(directory), monitor="val_loss", save_top_k=1),
        ModelCheckpoint(
            dirpath=str(directory), filename="last", monitor=None, save_top_k=1, enable_version_counter=False
        ),
    ]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed: never half-written."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


@dataclass
class TrainResult:
    task: str
    package_dir: Path
    run_id: str
    data_fingerprint: str
    metrics: dict


RUN_ID_FILE = "mlflow_run_id"  # beside checkpoints/: the MLflow run a resumed training continues


def _resumed_run_id(ckpt: str | None) -> str | None:
    """The MLflow run that wrote checkpoint ``ckpt`` (``<task dir>/checkpoints/last.ckpt``), if it is recorded
    and still in the store: a killed run left RUNNING (or FAILED) is continued, not duplicated."""
    if not ckpt:
        return None
    marker = Path(ckpt).resolve().parent.parent / RUN_ID_FILE
    if not marker.is_file():
        return None
    run_id = marker.read_text(encoding="utf-8").strip()
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        log.warning("resume: run %s (from %s) is not in this MLflow store; starting a new run", run_id, marker)
        return None
    return run_id


def _resume_path(resume: str | None, home: str, task: str) -> str | None:
    if not resume:
        return None
    if resume != "last":
        if not Path(resume).exists():  # a file, or a directory for DeepSpeed checkpoints
            raise FileNotFoundError(f"resume={resume}: no such checkpoint")
        return resume
    found = sorted(glob.glob(f"{home}/runs/**/{task}/checkpoints/last.ckpt", recursive=True), key=os.path.getmtime)
    if not found:
        raise FileNotFoundError(f"resume=last: no last.ckpt for task {task} under {home}/runs")
    return found[-1]


def _per_task(model: DictConfig, key: str, per_task_key: str, task_name: str) -> dict:
    """``model.<key>`` with the backbone's overrides for this task (``model.<per_task_key>.<task>``,
    optional): module names and step sizes are the backbone's, so per-task choices live in the model config."""
    out = resolved(model[key]) if model.get(key) else {}
    per_task = (model.get(per_task_key) or {}).get(task_name)
    if per_task:
        out.update(resolved(per_task))
    return out


def task_meta(task, model: DictConfig, labelbook: LabelBook, context_turns: int) -> dict:
    """The package meta of ``task`` (typed settings, or a task config to type)."""
    task = task if isinstance(task, (IntentTask, NERTask)) else task_settings(task)
    meta = {
        "task": task.name,
        "backbone": OmegaConf.to_container(model.backbone, resolve=True),
        "backbone_name": model.name,
        "max_length": task.max_length,
        "context_turns": context_turns,
        "lora": _per_task(model, "lora", "task_lora", task.name),
        "optim": _per_task(model, "optim", "task_optim", task.name),
    }
    encoder = _per_task(model, "encoder", "task_encoder", task.name)
    if encoder:  # backbone config overrides, kept so that loading rebuilds the same encoder
        meta["encoder"] = encoder
    return {**meta, **TASKS[task.name].meta(task, labelbook)}


def weight_averaging(wa: WeightAveraging) -> list:
    """The tail weight-averaging callback when ``task.weight_averaging.start`` is set, else none."""
    return [] if wa.start is None else [TailAveraging(wa.start, wa.every_n_steps)]


def train_task(
    cfg: DictConfig,
    task_config: DictConfig,
    out_dir: str | Path,
    tags: dict[str, str] | None = None,
    callbacks: list | None = None,
) -> TrainResult:
    """Fit one task model, save its package and log everything to one MLflow run.

    Under a multi-process launch (torchrun, SLURM, Lightning's launcher) only global
    rank 0 starts the MLflow run and writes the package; other ranks get
    ``run_id=""``. ``tags`` are added to the run (e.g. a sweep's parent run id),
    ``callbacks`` to the Trainer.
    """
    task = task_settings(task_config)  # a bad task setting fails here, before any data or model is loaded
    run_settings(cfg)  # and so does a bad model, data or trainer setting
    kind = TASKS[task.name]
    L.seed_everything(cfg.seed, workers=True)
    labelbook = LabelBook.load(cfg.labels.ontology)
    glossary = Glossary.load(cfg.labels.glossary)
    context_turns = task.context_window(cfg.data.context_turns)
    meta = task_meta(task, cfg.model, labelbook, context_turns)
    backbone = resolve_backbone(meta["backbone"])
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    encode = kind.encoder(tokenizer, task, meta, labelbook)
    dm = kind.datamodule(
        cfg.data.train_file,
        cfg.data.val_file,
        encode,
        tokenizer,
        labelbook,
        glossary,
        batch_size=task.batch_size,
        context_turns=context_turns,
        seed=cfg.seed,
        bucket=cfg.data.get("length_bucketing", True),
        non_task_intents=meta.get("non_task_intents", ()),
        turns=meta.get("turns", "all"),
    )
    dm.setup()
    if "term_matching" in meta:  # a tagger: the common glossary words the train annotation tags every time
        meta["settled_forms"] = settled_forms(dm.train_dialogues, GlossaryMatcher(glossary))
    data_fp = fingerprint(dm.train_dialogues + dm.val_dialogues, cfg.labels.ontology, cfg.labels.glossary)
    module = build_module(meta, backbone)
    task_dir = Path(out_dir) / task.name
    config = resolved(cfg)
    tags = {
        "findial.task": task.name,
        "findial.data_fingerprint": data_fp,
        "findial.backbone": cfg.model.name,
        **(tags or {}),
    }
    lead = is_launch_rank_zero()  # one MLflow run per job, however many processes train it
    ckpt = _resume_path(cfg.get("resume"), cfg.paths.home, task.name)
    resumed = _resumed_run_id(ckpt) if lead else None
    if ckpt:
        tags["findial.resumed_from"] = str(ckpt)
    with (
        tracking.run(
            cfg.logger.experiment_prefix + task.name, f"train-{task.name}-{cfg.model.name}", tags=tags, run_id=resumed
        )
        if lead
        else nullcontext()
    ) as active:
        run_id = active.info.run_id if active is not None else ""  # a run on the lead rank only
        if lead:
            task_dir.mkdir(parents=True, exist_ok=True)
            tracking.atomic_write_text(task_dir / RUN_ID_FILE, run_id)
        if lead and not resumed:
            tracking.log_params(
                {
                    "task": dataclasses.asdict(task),
                    "model": meta["lora"],
                    "model_name": cfg.model.name,
                    "seed": cfg.seed,
                    "data": config["data"],
                    "trainer": config["trainer"],
                }
            )
            tracking.log_text(OmegaConf.to_yaml(config), "config/resolved.yaml")
            tracking.log_json(
                {
                    "data_fingerprint": data_fp,
                    "train_dialogues": len(dm.train_dialogues),
                    "train_turns": len(dm.train_features),
                    "val_turns": len(dm.val_features),
                },
                "data/summary.json",
            )
        from lightning.pytorch.loggers import MLFlowLogger

        # Other ranks never touch the MLflow store (no logger, no LR monitor, which needs one).
        logger = MLFlowLogger(tracking_uri=cfg.logger.tracking_uri, run_id=run_id) if lead else False
        trainer_cfg = resolved(cfg.trainer)
        if trainer_cfg.get("max_epochs") is None:
            trainer_cfg["max_epochs"] = task.epochs
        trainer_callbacks: list[Callback] = [
            *checkpoint_callbacks(task_dir / "checkpoints"),
            *([LearningRateMonitor(logging_interval="step")] if lead else []),
            *([RichProgressBar()] if trainer_cfg.get("enable_progress_bar", True) else []),
            *weight_averaging(task.weight_averaging),
            *(callbacks or []),
        ]
        trainer = instantiate(
            trainer_cfg,
            logger=logger,
            default_root_dir=str(task_dir),
            plugins=[AtomicCheckpointIO()],
            use_distributed_sampler=False,  # the data module shards
            callbacks=trainer_callbacks,
        )
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        package = task_dir / "package"
        sharded = is_sharded(module, trainer.strategy)
        state = consolidated_trainable_state(module, trainer.strategy) if sharded else None  # every rank joins
        if trainer.is_global_zero:
            plain = rebuilt_module(state, lambda: build_module(meta, backbone)) if state is not None else module
            save_package(
                plain,
                {**meta, "data_fingerprint": data_fp, "train_run_id": run_id},
                package,
                files={"ontology.yaml": cfg.labels.ontology, "glossary.yaml": cfg.labels.glossary},
            )
            import mlflow

            mlflow.log_artifacts(str(package), "package")
        log.info("trained %s: %s", task.name, metrics)
        return TrainResult(task.name, package, run_id, data_fp, metrics)
