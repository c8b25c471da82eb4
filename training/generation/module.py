"""Lightning module: a frozen causal LM with LoRA adapters (peft), trained on agent responses.

Like the NLU modules (``training/modules.py``) checkpoints hold only the trainable tensors (the LoRA
adapters, a few MB); the frozen backbone is rebuilt from its spec.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from findial.training.modules import LeanLoRAModule


def build_causal_lm(backbone_path: str | Path, lora: dict):
    base = AutoModelForCausalLM.from_pretrained(str(backbone_path), dtype=torch.float32)
    targets = list(lora.get("target_modules") or ["q_proj", "v_proj"])
    present = {name.rsplit(".", 1)[-1] for name, _ in base.named_modules()}
    if not set(targets) & present:
        raise ValueError(
            f"model.lora.target_modules={targets}: none of them is a module of {backbone_path} "
            f"(e.g. {sorted(n for n in present if n.endswith('proj'))[:8]})"
        )
    n_layers = getattr(base.config, "num_hidden_layers", None)
    top = lora.get("top_layers")
    layers = list(range(n_layers - top, n_layers)) if top and n_layers and top < n_layers else None
    cfg = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.get("r", 8),
        lora_alpha=lora.get("alpha", 16),
        lora_dropout=lora.get("dropout", 0.05),
        target_modules=[t for t in targets if t in present],
        layers_to_transform=layers,
        bias="none",
    )
    return get_peft_model(base, cfg)


class ResponseLMModule(LeanLoRAModule):
    """Causal LM + LoRA; the loss is the LM loss on the response tokens (labels != -100).

    The same optimiser, schedule and lean checkpoints as the NLU task modules (``LeanLoRAModule``)."""

    def __init__(self, backbone_path: str, lora: dict, optim: dict):
        super().__init__()
        self.model = build_causal_lm(backbone_path, lora)
        self.optim = dict(optim)
        self.strict_loading = False  # checkpoints carry trainable tensors only
        self.model.train()  # from_pretrained leaves it in eval mode

    def forward(self, batch) -> torch.Tensor:
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss

    def _step(self, batch, stage: str) -> torch.Tensor:
        loss = self(batch)
        n = int((batch["labels"][:, 1:] != -100).sum())
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=max(1, n))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        loss = self.trainer.callback_metrics.get("val_loss")
        if loss is not None:
            self.log("val_perplexity", torch.exp(loss.detach().clamp(max=20.0)))
