"""The understanding tasks, typed: ``configs/task/*.yaml`` as frozen dataclasses, checked before any data or
model is loaded (``task_settings``: a missing, unknown or bad key is an error naming it, ``findial.typed_config``),
and ``TASKS``, the registry from ``task.name`` to its settings class, package meta, encoder, Lightning module,
data module and predictor.

The YAML files are the one source of defaults: a key without a default here must be in the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from findial.data.labelbook import LabelBook
from findial.typed_config import ConfigError, build, one_of, plain

from .datamodule import TURN_SCOPES, TurnDataModule
from .features import encode_intent, encode_ner
from .modules import IntentModule, NERModule

log = logging.getLogger(__name__)

POOLINGS = ("mean", "turn_and_all")
TERM_MATCHING = ("glossary", "confirmed", "model")


class TaskConfigError(ConfigError):
    """A bad task setting; the message names the key (``task.pooling: ...``)."""


@dataclass(frozen=True)
class WeightAveraging:
    start: float | None = None  # fraction of all steps after which snapshots are averaged; None: off
    every_n_steps: int = 10


@dataclass(frozen=True)
class StandHead:
    enabled: bool = False
    weight: float = 0.5
    threshold: float = 0.5


@dataclass(frozen=True)
class IntentTask:
    name: str
    epochs: int
    batch_size: int
    max_length: int
    emotion: bool
    previous_intent: bool
    non_task_intents: tuple[str, ...]
    stateless_intents: tuple[str, ...]
    pooling: str
    label_smoothing: float
    weight_averaging: WeightAveraging
    turns: str = "all"  # training rows (training/datamodule.py); members: own_task
    context_turns: int | None = None  # None: data.context_turns

    def context_window(self, data_context_turns: int) -> int:
        """The preceding turns the model reads: ``task.context_turns``, else ``data.context_turns``."""
        return data_context_turns if self.context_turns is None else self.context_turns

    def check(self, where: str) -> None:
        one_of(where, "pooling", self.pooling, POOLINGS, TaskConfigError)
        one_of(where, "turns", self.turns, TURN_SCOPES, TaskConfigError)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise TaskConfigError(f"{where}.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.context_turns is not None and self.context_turns < 0:
            raise TaskConfigError(f"{where}.context_turns: must be >= 0, got {self.context_turns}")


@dataclass(frozen=True)
class NERTask:
    name: str
    epochs: int
    batch_size: int
    max_length: int
    term_matching: str
    weight_averaging: WeightAveraging
    stand_head: StandHead = field(default_factory=StandHead)

    def context_window(self, data_context_turns: int) -> int:
        return 0  # a tagger reads the turn alone

    def check(self, where: str) -> None:
        one_of(where, "term_matching", self.term_matching, TERM_MATCHING, TaskConfigError)
        if not 0.0 <= self.stand_head.threshold <= 1.0:
            raise TaskConfigError(f"{where}.stand_head.threshold: must be in [0, 1], got {self.stand_head.threshold}")


def _intent_list(names, key: str, labelbook: LabelBook) -> list[str]:
    """Intents of ``task.<key>`` the label book has (the others named in a warning: the default lists name the
    default label book's intents, another book may not have them all)."""
    unknown = [i for i in names if i not in labelbook.intents]
    if unknown:
        log.warning("task.%s: %s not in the label book, ignored", key, unknown)
    return [i for i in names if i not in unknown]


def intent_meta(t: IntentTask, labelbook: LabelBook) -> dict:
    return dict(
        intents=labelbook.intents,
        emotions=labelbook.emotions if t.emotion else [],
        previous_intent=t.previous_intent,
        pooling=t.pooling,
        label_smoothing=t.label_smoothing,
        non_task_intents=_intent_list(t.non_task_intents, "non_task_intents", labelbook),
        stateless_intents=_intent_list(t.stateless_intents, "stateless_intents", labelbook),
        turns=t.turns,
    )


def ner_meta(t: NERTask, labelbook: LabelBook) -> dict:
    meta: dict[str, Any] = {"tags": labelbook.bio_tags, "term_matching": t.term_matching}
    if t.stand_head.enabled:  # kept so that loading rebuilds the head and the tracker reads its threshold
        meta["stand_head"] = {"weight": t.stand_head.weight, "threshold": t.stand_head.threshold}
    return meta


def intent_encoder(tokenizer, t: IntentTask, meta: dict, labelbook: LabelBook) -> Callable[[dict], dict]:
    return partial(
        encode_intent,
        tokenizer,
        max_length=t.max_length,
        intents=meta["intents"],
        emotions=meta["emotions"],
        previous_intent=meta["previous_intent"],
    )


def ner_encoder(tokenizer, t: NERTask, meta: dict, labelbook: LabelBook) -> Callable[[dict], dict]:
    return partial(
        encode_ner,
        tokenizer,
        max_length=t.max_length,
        tags=meta["tags"],
        state_slots=labelbook.state_slots if "stand_head" in meta else None,
    )


def intent_module(meta: dict, backbone: str):
    return IntentModule(
        backbone,
        meta["intents"],
        meta.get("emotions", []),
        meta["lora"],
        meta["optim"],
        pooling=meta["pooling"],
        label_smoothing=meta["label_smoothing"],
        encoder=meta.get("encoder"),
    )


def ner_module(meta: dict, backbone: str):
    return NERModule(
        backbone,
        meta["tags"],
        meta["lora"],
        meta["optim"],
        encoder=meta.get("encoder"),
        stand_weight=meta["stand_head"]["weight"] if "stand_head" in meta else None,
    )


@dataclass(frozen=True)
class TaskKind:
    settings: type[IntentTask] | type[NERTask]  # the typed config
    meta: Callable[[Any, LabelBook], dict]  # the task's keys of the package meta
    encoder: Callable[..., Callable[[dict], dict]]  # (tokenizer, settings, meta, labelbook) -> row -> features
    module: Callable[[dict, str], Any]  # (meta, backbone path) -> the Lightning module
    datamodule: type[TurnDataModule] = TurnDataModule  # corpus files -> batches of the encoder's features
    # The predictor class, "module:attribute" (training/inference.py imports this module: no import cycle).
    predictor: str = ""

    def predictor_class(self) -> type:
        """The predictor ``predictor`` names, imported."""
        from importlib import import_module

        module, _, name = self.predictor.partition(":")
        return getattr(import_module(module), name)


TASKS = {
    "intent": TaskKind(
        IntentTask,
        intent_meta,
        intent_encoder,
        intent_module,
        predictor="findial.training.inference:IntentPredictor",
    ),
    "ner": TaskKind(
        NERTask,
        ner_meta,
        ner_encoder,
        ner_module,
        predictor="findial.training.inference:EntityPredictor",
    ),
}


def task_settings(task: Any, where: str = "task") -> IntentTask | NERTask:
    """The typed settings of one task config (a DictConfig or a plain mapping)."""
    raw = plain(task, where, TaskConfigError)
    name = raw.get("name")
    if name not in TASKS:
        raise TaskConfigError(
            f"{where}.name: {name!r} is not an understanding task ({', '.join(TASKS)}); "
            "response generation is trained by findial train task=response"
        )
    settings = build(TASKS[name].settings, raw, where, TaskConfigError)
    for key in ("epochs", "batch_size", "max_length"):
        if getattr(settings, key) < 1:
            raise TaskConfigError(f"{where}.{key}: must be >= 1, got {getattr(settings, key)}")
    settings.check(where)
    return settings
