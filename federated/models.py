"""The two task models of a federation (intent + NER) and what of them travels: trainable tensors only.

A branch and the server hold the same frozen backbone (rebuilt from the model config), so one round
exchanges only ``LoRATaskModule.trainable_state_dict()`` of each task: the LoRA adapters and the heads.
They travel as one Flower ``ArrayRecord`` with keys ``intent/<name>`` and ``ner/<name>`` (float32).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message
from omegaconf import DictConfig

from findial.data.labelbook import LabelBook
from findial.training.modules import LoRATaskModule
from findial.training.package import build_module, resolve_backbone
from findial.training.train import task_meta

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TASKS = ("intent", "ner")
SEP = "/"


@dataclass
class TaskModels:
    """Intent and NER modules built from a composed config, with their package metadata."""

    modules: dict[str, LoRATaskModule]
    metas: dict[str, dict]
    backbone: Path
    tokenizer: PreTrainedTokenizerBase = field(repr=False)


_CACHE: dict[str, TaskModels] = {}


def build_task_models(cfg: DictConfig, cache: bool = True) -> TaskModels:
    """Build (or reuse, within one process) the intent and NER modules described by ``cfg``.

    A ClientApp process serves many rounds; rebuilding the backbone each round is the slow part,
    so the modules are cached by their metadata. Their trainable tensors are overwritten each round.
    """
    from transformers import AutoTokenizer

    labelbook = LabelBook.load(cfg.labels.ontology)
    metas = {
        name: task_meta(cfg.tasks[name], cfg.model, labelbook, cfg.data.context_turns if name == "intent" else 0)
        for name in TASKS
    }
    key = repr(sorted((k, repr(v)) for k, v in metas.items()))
    if cache and key in _CACHE:
        return _CACHE[key]
    backbone = resolve_backbone(metas["intent"]["backbone"])
    torch.manual_seed(int(cfg.seed))  # the server's initial adapters and heads: reproducible
    modules = {name: build_module(metas[name], backbone) for name in TASKS}
    models = TaskModels(modules, metas, backbone, AutoTokenizer.from_pretrained(str(backbone)))
    if cache:
        _CACHE.clear()
        _CACHE[key] = models
    return models


def to_record(models: TaskModels) -> ArrayRecord:
    """The trainable tensors of both tasks, in a fixed key order, as one ArrayRecord of float32 arrays."""
    arrays = {}
    for task in TASKS:
        for name, tensor in models.modules[task].trainable_state_dict().items():
            arrays[f"{task}{SEP}{name}"] = Array(tensor.detach().cpu().float().numpy().copy())
    return ArrayRecord(arrays)


def load_record(models: TaskModels, record: ArrayRecord) -> None:
    """Overwrite the trainable tensors of both tasks from ``record``; unknown or missing keys are an error."""
    per_task: dict[str, dict[str, torch.Tensor]] = {t: {} for t in TASKS}
    for key, array in record.items():
        task, _, name = key.partition(SEP)
        if task not in per_task:
            raise ValueError(f"array {key!r}: expected a key '<intent|ner>/<parameter>'")
        per_task[task][name] = torch.from_numpy(np.array(array.numpy(), copy=True))
    for task in TASKS:
        module = models.modules[task]
        expected = set(module.trainable_state_dict())
        got = set(per_task[task])
        if got != expected:
            raise ValueError(
                f"{task}: arrays do not match the model: missing {sorted(expected - got)[:3]}, "
                f"unexpected {sorted(got - expected)[:3]}"
            )
        module.load_state_dict(per_task[task], strict=False)


# package meta keys that must agree for a package's tensors to be this federation's starting point
WARM_START_KEYS = ("backbone_name", "lora", "intents", "emotions", "tags", "pooling", "stand_head")


def warm_start(models: TaskModels, model_ref: str) -> dict[str, str]:
    """Start from a trained NLU bundle (``models:/findial-nlu@champion``, a version or a bundle directory):
    overwrite the trainable tensors of both tasks with its packages'. The packages must describe the same
    models (backbone, adapters, labels, heads): a difference is an error naming the task and the key.
    Returns what was loaded, for the run's tags."""
    import tempfile

    from safetensors.torch import load_file

    from findial import registry
    from findial.training.package import read_meta

    with tempfile.TemporaryDirectory(prefix="findial-warm-") as tmp:
        bundle, registered = registry.resolve_model(model_ref, tmp, expect="nlu")
        for task in TASKS:
            meta = read_meta(bundle / task)
            for key in WARM_START_KEYS:
                if meta.get(key) != models.metas[task].get(key):
                    raise ValueError(
                        f"warm_start={model_ref}: {task}.{key} differs from the federation's model "
                        f"({meta.get(key)!r} vs {models.metas[task].get(key)!r})"
                    )
            state = load_file(str(bundle / task / "weights.safetensors"))
            expected = set(models.modules[task].trainable_state_dict())
            if set(state) != expected:
                raise ValueError(f"warm_start={model_ref}: {task} weights do not match the federation's model")
            models.modules[task].load_state_dict(state, strict=False)
    return {
        "findial.federated.warm_start": model_ref,
        **({"findial.federated.warm_start_version": registered[1]} if registered else {}),
    }


def message_bytes(msg: Message) -> int:
    """Payload bytes of a message: every record's ``count_bytes()`` (0 for an error reply)."""
    if msg.has_error():
        return 0
    return sum(record.count_bytes() for record in msg.content.values())


def exchange_sizes(models: TaskModels) -> dict[str, int]:
    """Bytes (float32) of one copy of what travels (adapters + heads) and of both whole task models."""
    mods = models.modules.values()
    adapters = sum(t.numel() * 4 for m in mods for t in m.trainable_state_dict().values())
    full = sum(p.numel() * 4 for m in mods for p in m.parameters())
    return {"adapter_bytes": adapters, "full_model_bytes": full}
