"""The model, data and trainer groups of a run (``configs/model``, ``configs/data``, ``configs/trainer`` with
``configs/strategy``), typed: ``run_settings(cfg)`` checks them before any data or model is loaded, every
bad key named (``model.lora.r: must be >= 1, got 0``), as ``task_settings`` does for the task
(``findial.typed_config``). Nothing is instantiated: a ``_target_`` is checked to import and to take the
node's arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from findial.typed_config import ConfigError, build, check_target, one_of, plain

PER_TASK = ("intent", "ner")  # the tasks model.task_lora / task_optim / task_encoder may name


class RunConfigError(ConfigError):
    """A bad model, data or trainer setting; the message names the key (``model.lora.r: ...``)."""


def _at_least(where: str, value: float | None, low: float) -> None:
    if value is not None and value < low:
        raise RunConfigError(f"{where}: must be >= {low}, got {value}")


def _within(where: str, value: float, low: float, high: float, high_open: bool = False) -> None:
    if not low <= value <= high or (high_open and value == high):
        raise RunConfigError(f"{where}: must be in [{low}, {high}{')' if high_open else ']'}, got {value}")


@dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    top_layers: int | None = None  # adapt only the top N layers; None: all

    def check(self, where: str) -> None:
        _at_least(f"{where}.r", self.r, 1)
        _at_least(f"{where}.alpha", self.alpha, 0)
        _within(f"{where}.dropout", self.dropout, 0.0, 1.0, high_open=True)
        if not self.target_modules:
            raise RunConfigError(f"{where}.target_modules: name at least one module")
        _at_least(f"{where}.top_layers", self.top_layers, 1)


@dataclass(frozen=True)
class OptimSettings:
    lr: float
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    head_lr: float | None = None  # None: lr
    head_dropout: float = 0.1

    def check(self, where: str) -> None:
        _at_least(f"{where}.lr", self.lr, 0)
        _at_least(f"{where}.head_lr", self.head_lr, 0)
        _at_least(f"{where}.weight_decay", self.weight_decay, 0)
        _within(f"{where}.warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        _within(f"{where}.head_dropout", self.head_dropout, 0.0, 1.0, high_open=True)


@dataclass(frozen=True)
class ModelSettings:
    name: str
    backbone: dict[str, Any]  # a Hydra `_target_` node returning a local Hugging Face directory
    lora: LoraSettings
    optim: OptimSettings
    kind: Literal["encoder", "causal_lm"] = "encoder"
    licence: str | None = None
    chat_template: str | None = None  # causal LMs: used when the tokenizer has none
    stop_tokens: tuple[str, ...] = ()
    encoder: dict[str, Any] = field(default_factory=dict)  # overrides of the backbone's own config
    # Per task (intent, ner): the complete settings after the task's overrides of lora, optim and encoder
    task_lora: dict[str, LoraSettings] = field(default_factory=dict)
    task_optim: dict[str, OptimSettings] = field(default_factory=dict)
    task_encoder: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lora_for(self, task: str) -> LoraSettings:
        return self.task_lora.get(task, self.lora)

    def optim_for(self, task: str) -> OptimSettings:
        return self.task_optim.get(task, self.optim)


@dataclass(frozen=True)
class CorpusFile:
    path: str
    repeat: int = 1  # the file's dialogues are read this many times (a weight)


@dataclass(frozen=True)
class DataSettings:
    name: str
    train_file: tuple[CorpusFile, ...]
    val_file: tuple[CorpusFile, ...]
    test_file: tuple[CorpusFile, ...] = ()  # the gated evaluation set
    eval_sets: dict[str, tuple[CorpusFile, ...]] = field(default_factory=dict)
    context_turns: int = 3
    length_bucketing: bool = True


@dataclass(frozen=True)
class TrainerSettings:
    """The keys configs/trainer names; any other ``lightning.Trainer`` argument is kept in ``extra``."""

    _target_: str
    max_epochs: int | None = None  # None: the task's epochs; -1: no limit
    accelerator: str = "auto"
    devices: int | str | tuple[int, ...] = "auto"
    num_nodes: int = 1
    precision: int | str = "32-true"
    gradient_clip_val: float | None = None
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    deterministic: bool | str = False
    strategy: str | dict[str, Any] = "auto"  # configs/strategy: a name, or a `_target_` node
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSettings:
    model: ModelSettings
    data: DataSettings
    trainer: TrainerSettings
    members: dict[str, ModelSettings] = field(default_factory=dict)  # findial run: the ensemble members' models


def model_settings(node: Any, where: str = "model") -> ModelSettings:
    raw = plain(node, where, RunConfigError)
    for key, base in (("task_lora", "lora"), ("task_optim", "optim"), ("task_encoder", "encoder")):
        per_task = raw.get(key) or {}
        if not isinstance(per_task, Mapping):
            raise RunConfigError(f"{where}.{key}: expected a mapping of task -> settings, got {per_task!r}")
        for task, override in per_task.items():
            one_of(f"{where}.{key}", "", task, PER_TASK, RunConfigError)
            if not isinstance(override, Mapping):
                raise RunConfigError(f"{where}.{key}.{task}: expected a mapping, got {override!r}")
        defaults = raw.get(base) or {}
        if isinstance(defaults, Mapping):  # else the base key's own check names it
            raw[key] = {task: {**defaults, **override} for task, override in per_task.items()}
    settings = build(ModelSettings, raw, where, RunConfigError)
    if settings.kind == "encoder" and (settings.chat_template or settings.stop_tokens):
        raise RunConfigError(f"{where}.kind: chat_template and stop_tokens are for kind causal_lm")
    check_target(settings.backbone, f"{where}.backbone", RunConfigError)
    settings.lora.check(f"{where}.lora")
    settings.optim.check(f"{where}.optim")
    for task, lora in settings.task_lora.items():
        lora.check(f"{where}.task_lora.{task}")
    for task, optim in settings.task_optim.items():
        optim.check(f"{where}.task_optim.{task}")
    return settings


def _corpus_files(spec: Any) -> Any:
    """``data.*_file``: one path, or a list of paths and ``{path, repeat}`` entries, as a list of mappings."""
    if isinstance(spec, str):
        return [{"path": spec}]
    if isinstance(spec, (list, tuple)):
        return [{"path": e} if isinstance(e, str) else e for e in spec]
    return spec  # a wrong type: the build names it


def data_settings(node: Any, where: str = "data") -> DataSettings:
    raw = plain(node, where, RunConfigError)
    for key in ("train_file", "val_file", "test_file"):
        if key in raw:
            raw[key] = _corpus_files(raw[key])
    if isinstance(raw.get("eval_sets"), Mapping):
        raw["eval_sets"] = {name: _corpus_files(spec) for name, spec in raw["eval_sets"].items()}
    elif raw.get("eval_sets") is None:
        raw.pop("eval_sets", None)
    settings = build(DataSettings, raw, where, RunConfigError)
    for key in ("train_file", "val_file"):
        if not getattr(settings, key):
            raise RunConfigError(f"{where}.{key}: name at least one corpus file")
    files = [(k, getattr(settings, k)) for k in ("train_file", "val_file", "test_file")]
    for key, entries in files + [(f"eval_sets.{n}", e) for n, e in settings.eval_sets.items()]:
        for i, entry in enumerate(entries):
            _at_least(f"{where}.{key}[{i}].repeat", entry.repeat, 1)
    _at_least(f"{where}.context_turns", settings.context_turns, 0)
    return settings


def trainer_settings(node: Any, where: str = "trainer") -> TrainerSettings:
    raw = plain(node, where, RunConfigError)
    check_target(raw, where, RunConfigError)  # an unknown key is not an argument of lightning.Trainer
    named = {f.name for f in fields(TrainerSettings)} - {"extra"}
    settings = build(
        TrainerSettings,
        {**{k: v for k, v in raw.items() if k in named}, "extra": {k: v for k, v in raw.items() if k not in named}},
        where,
        RunConfigError,
    )
    if settings.max_epochs != -1:
        _at_least(f"{where}.max_epochs", settings.max_epochs, 1)
    _at_least(f"{where}.num_nodes", settings.num_nodes, 1)
    _at_least(f"{where}.gradient_clip_val", settings.gradient_clip_val, 0)
    _at_least(f"{where}.log_every_n_steps", settings.log_every_n_steps, 1)
    if isinstance(settings.deterministic, str):
        one_of(f"{where}.deterministic", "", settings.deterministic, ("warn",), RunConfigError)
    if isinstance(settings.strategy, dict):
        check_target(settings.strategy, f"{where}.strategy", RunConfigError)
    return settings


def run_settings(cfg: Any) -> RunSettings:
    """The model, data and trainer groups of a composed train / pipeline config (and, in a pipeline's
    ``members``, each member's model), checked: the first bad key is a ``RunConfigError`` naming it."""
    members = cfg.get("members") or {}
    return RunSettings(
        model=model_settings(cfg.model),
        data=data_settings(cfg.data),
        trainer=trainer_settings(cfg.trainer),
        members={name: model_settings(spec.model, f"members.{name}.model") for name, spec in members.items()},
    )
