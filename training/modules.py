"""Lightning modules: a frozen encoder with LoRA adapters (peft) and small task heads.

Checkpoints hold only the trainable tensors (adapters and heads): the frozen
backbone is rebuilt from its config, so a checkpoint of the 118M-parameter
default model is a few MB.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModel

from .features import IGNORE


def build_encoder(backbone_path: str | Path, lora: dict, config: dict | None = None):
    """The backbone with LoRA adapters; ``config`` overrides keys of the backbone's own config
    (``use_bidirectional_attention`` lets a Gemma 3 decoder read a whole sentence, as NER needs)."""
    kwargs = dict(config or {})
    if _is_bert_like(backbone_path):
        kwargs["add_pooling_layer"] = False
    base = AutoModel.from_pretrained(str(backbone_path), **kwargs)
    n_layers = getattr(base.config, "num_hidden_layers", None)
    top = lora.get("top_layers")
    layers = list(range(n_layers - top, n_layers)) if top and n_layers and top < n_layers else None
    cfg = LoraConfig(
        r=lora.get("r", 8),
        lora_alpha=lora.get("alpha", 16),
        lora_dropout=lora.get("dropout", 0.05),
        target_modules=list(lora.get("target_modules", ["query", "value"])),
        layers_to_transform=layers,
        bias="none",
    )
    return get_peft_model(base, cfg)


def _is_bert_like(path) -> bool:
    import json

    try:
        mt = json.loads((Path(path) / "config.json").read_text())["model_type"]
    except (OSError, KeyError, ValueError):
        return False
    return mt in {"bert", "roberta", "xlm-roberta"}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def first_segment_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first sequence of a pair (the current turn), up to and including its separator.

    A sequence ends with the separator token ([SEP], </s>) that also closes the first segment, so the
    first position holding the sequence's last real token marks the end of the turn.
    """
    last = attention_mask.sum(1).clamp(min=1) - 1
    sep = input_ids.gather(1, last.unsqueeze(1))
    hits = (input_ids == sep) & attention_mask.bool()
    end = hits.float().argmax(1)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    return (positions <= end.unsqueeze(1)).long() * attention_mask


class LeanLoRAModule(L.LightningModule):
    """What every findial module shares: the optimiser and schedule (adapters at ``optim.lr``, other trainable
    tensors at ``optim.head_lr``) and lean checkpoints (the trainable tensors only)."""

    optim: dict  # set by the subclass: lr, head_lr, weight_decay, warmup_ratio

    def configure_optimizers(self):
        o = self.optim
        lr = o.get("lr", 5e-4)
        adapters = [p for n, p in self.named_parameters() if p.requires_grad and n.startswith("encoder.")]
        heads = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
        # Fresh heads need a larger step than the adapters (1e-3 leaves a 45-way head near chance for
        # hundreds of steps on e5 features; 1e-2 fits it in tens).
        opt = torch.optim.AdamW(
            [{"params": adapters, "lr": lr}, {"params": heads, "lr": o.get("head_lr", lr)}],
            weight_decay=o.get("weight_decay", 0.01),
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = int(total * o.get("warmup_ratio", 0.06))

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / max(1, warm)
            return max(0.0, (total - step) / max(1, total - warm))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu() for k, v in self.state_dict().items() if k in names}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Filter the state dict the strategy already built (complete under FSDP) rather than rebuild it here.
        from .strategies import trainable_names

        names = trainable_names(self)
        checkpoint["state_dict"] = {k: v.cpu() for k, v in checkpoint["state_dict"].items() if k in names}


class LoRATaskModule(LeanLoRAModule):
    """An encoder with LoRA adapters and the plumbing of the task heads."""

    def __init__(self, backbone_path: str, lora: dict, optim: dict, encoder: dict | None = None):
        super().__init__()
        self.encoder = build_encoder(backbone_path, lora, encoder)
        self.optim = dict(optim)
        self.strict_loading = False  # checkpoints carry trainable tensors only
        hidden = self.encoder.config.hidden_size
        self.dropout = nn.Dropout(optim.get("head_dropout", 0.1))
        # Encoder features are small (mean-pooled e5 dims have std ~0.09): normalise them so the
        # freshly initialised heads learn at the same pace as the adapters.
        self.norm = nn.LayerNorm(hidden)
        self.hidden_size = hidden
        self.encoder.train()  # from_pretrained leaves it in eval mode

    def encode(self, batch) -> torch.Tensor:
        return self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")


class IntentModule(LoRATaskModule):
    """Intent (with dialogue context) and, when the label book has emotions, an emotion head.

    pooling ``mean``: the mean over all tokens (turn and context); ``turn_and_all``: the mean over the
    current turn beside the mean over everything, so a long context does not drown the turn itself.
    ``label_smoothing`` applies to the intent loss only (the emotion head's labels are sparse).
    """

    def __init__(
        self,
        backbone_path: str,
        intents: list[str],
        emotions: list[str],
        lora: dict,
        optim: dict,
        emotion_weight: float = 0.5,
        pooling: str = "mean",
        label_smoothing: float = 0.0,
        encoder: dict | None = None,
    ):
        super().__init__(backbone_path, lora, optim, encoder)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"task.label_smoothing={label_smoothing!r}: expected a value in [0, 1)")
        self.label_smoothing = float(label_smoothing)
        if pooling not in ("mean", "turn_and_all"):
            raise ValueError(f"task.pooling={pooling!r}: expected 'mean' or 'turn_and_all'")
        self.pooling = pooling
        width = self.hidden_size * (2 if pooling == "turn_and_all" else 1)
        self.norm = nn.LayerNorm(width)
        self.intents, self.emotions = list(intents), list(emotions)
        self.intent_head = nn.Linear(width, len(intents))
        self.emotion_head = nn.Linear(width, len(emotions)) if emotions else None
        self.emotion_weight = emotion_weight

    def forward(self, batch):
        hidden, mask = self.encode(batch), batch["attention_mask"]
        features = mean_pool(hidden, mask)
        if self.pooling == "turn_and_all":
            turn = mean_pool(hidden, first_segment_mask(batch["input_ids"], mask))
            features = torch.cat([turn, features], dim=-1)
        pooled = self.dropout(self.norm(features))
        out = {"intent_logits": self.intent_head(pooled)}
        if self.emotion_head is not None:
            out["emotion_logits"] = self.emotion_head(pooled)
        return out

    def _step(self, batch, stage: str):
        out = self(batch)
        loss = nn.functional.cross_entropy(
            out["intent_logits"], batch["intent_label"], label_smoothing=self.label_smoothing
        )
        acc = (out["intent_logits"].argmax(-1) == batch["intent_label"]).float().mean()
        if self.emotion_head is not None:  # the mean over labelled turns; 0 (still in the graph: DDP) if none
            labelled = (batch["emotion_label"] != IGNORE).sum().clamp(min=1)
            loss = (
                loss
                + self.emotion_weight
                * nn.functional.cross_entropy(
                    out["emotion_logits"], batch["emotion_label"], ignore_index=IGNORE, reduction="sum"
                )
                / labelled
            )
        bs = batch["input_ids"].shape[0]
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=bs, sync_dist=stage == "val")
        self.log(f"{stage}_intent_acc", acc, prog_bar=True, batch_size=bs, sync_dist=stage == "val")
        return loss


class NERModule(LoRATaskModule):
    """Token classification over the label book's BIO tags and, with ``stand_weight`` set, a stand head:
    per token, the logit that the mention it belongs to stands (becomes its slot's value after the turn;
    ``features.stand_labels``), its BCE loss over the labelled tokens added to the tag loss times
    ``stand_weight``."""

    def __init__(
        self,
        backbone_path: str,
        tags: list[str],
        lora: dict,
        optim: dict,
        encoder: dict | None = None,
        stand_weight: float | None = None,
    ):
        super().__init__(backbone_path, lora, optim, encoder)
        self.tags = list(tags)
        self.tag_head = nn.Linear(self.hidden_size, len(tags))
        self.stand_head = nn.Linear(self.hidden_size, 1) if stand_weight is not None else None
        self.stand_weight = stand_weight

    def forward(self, batch):
        features = self.dropout(self.norm(self.encode(batch)))
        out = {"tag_logits": self.tag_head(features)}
        if self.stand_head is not None:
            out["stand_logits"] = self.stand_head(features).squeeze(-1)
        return out

    def _step(self, batch, stage: str):
        out = self(batch)
        logits, labels = out["tag_logits"], batch["tag_labels"]
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        mask = labels != IGNORE
        acc = ((logits.argmax(-1) == labels) & mask).sum() / mask.sum().clamp(min=1)
        bs = labels.shape[0]
        if self.stand_head is not None:  # the mean over labelled tokens; 0 (still in the graph: DDP) if none
            stand = batch["stand_labels"]
            labelled = (stand != IGNORE).to(out["stand_logits"].dtype)
            stand_loss = nn.functional.binary_cross_entropy_with_logits(
                out["stand_logits"], stand.clamp(min=0).to(labelled.dtype), weight=labelled, reduction="sum"
            ) / labelled.sum().clamp(min=1)
            loss = loss + self.stand_weight * stand_loss
            self.log(f"{stage}_stand_loss", stand_loss, batch_size=bs, sync_dist=stage == "val")
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=bs, sync_dist=stage == "val")
        self.log(f"{stage}_token_acc", acc, prog_bar=True, batch_size=bs, sync_dist=stage == "val")
        return loss
