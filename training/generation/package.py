"""Response-model packages: the findial package format (``training/package.py``) for task ``response``.

findial_model.json   task "response", backbone spec, lora, prompt and decoding settings
weights.safetensors  the LoRA adapters (the only trainable tensors)
adapter/             the same adapters in peft's format (``PeftModel.from_pretrained(base, adapter)``)
rules.yaml           the compliance rules the Responder checks replies against
glossary.yaml        the glossary in use when it was trained (for the evaluation's term checks)
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer

from findial.training.package import read_meta, resolve_backbone, save_package

from .module import ResponseLMModule
from .prompts import ensure_chat_template


def save_response_package(
    module: ResponseLMModule, meta: dict, target: str | Path, rules: dict, files: dict[str, str | Path] | None = None
) -> Path:
    """Write the package atomically (through ``training.package.save_package``)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    rules_file = target.parent / f".{target.name}.rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules, allow_unicode=True, sort_keys=False), encoding="utf-8")
    try:
        # save_package writes trainable_state_dict() and encoder.save_pretrained(adapter/)
        view = SimpleNamespace(trainable_state_dict=module.trainable_state_dict, encoder=module.model)
        return save_package(
            view, {**meta, "task": "response"}, target, files={**(files or {}), "rules.yaml": rules_file}
        )
    finally:
        rules_file.unlink(missing_ok=True)


def load_response_model(path: str | Path, device: str | torch.device = "cpu"):
    """Return (module in eval mode, tokenizer, meta) of a response package."""
    meta = read_meta(path)
    if meta.get("task") != "response":
        raise ValueError(f"{path}: a {meta.get('task')!r} model package, not a response model")
    backbone = resolve_backbone(meta["backbone"])
    module = ResponseLMModule(str(backbone), meta["lora"], meta.get("optim", {}))
    state = load_file(str(Path(path) / "weights.safetensors"))
    unexpected = set(state) - set(module.state_dict())
    missing = set(module.trainable_state_dict()) - set(state)
    if unexpected or missing:
        raise ValueError(
            f"{path}: weights do not match the backbone: unexpected {sorted(unexpected)[:3]}, "
            f"missing {sorted(missing)[:3]}"
        )
    module.load_state_dict(state, strict=False)
    module.eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    ensure_chat_template(tokenizer, meta.get("chat_template"))
    return module, tokenizer, meta
