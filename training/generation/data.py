"""Agent turns of a corpus as response-generation examples, and the Lightning DataModule over them."""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader

from findial.training.datamodule import LengthBucketSampler, TurnDataModule

from .prompts import IGNORE


def response_records(dialogues: list[dict], context_turns: int = 6) -> list[dict]:
    """One row per agent turn: the preceding turns, the intent and state of the last user turn
    before it (gold annotations), and the agent's text as the reference response."""
    rows = []
    for d in dialogues:
        last_user: dict = {}
        for i, t in enumerate(d["turns"]):
            if t["speaker"] == "agent":
                history = [{"speaker": x["speaker"], "text": x["text"]} for x in d["turns"][:i]]
                rows.append(
                    {
                        "dialogue_id": d["id"],
                        "turn_index": i,
                        "lang": d["lang"],
                        "history": history[-context_turns:] if context_turns else [],
                        "intent": last_user.get("intent"),
                        "state": dict(last_user.get("state") or {}),
                        "response": t["text"],
                    }
                )
            else:
                last_user = t
    return rows


def collate_lm(features: list[dict], pad_id: int) -> dict:
    """Right-pad to the longest example of the batch; padding is masked and carries no loss."""
    width = max(len(f["input_ids"]) for f in features)

    def pad(key: str, value: int) -> torch.Tensor:
        return torch.tensor([f[key] + [value] * (width - len(f[key])) for f in features])

    return {
        "input_ids": pad("input_ids", pad_id),
        "attention_mask": pad("attention_mask", 0),
        "labels": pad("labels", IGNORE),
    }


class ResponseDataModule(TurnDataModule):
    """The corpus loading of :class:`TurnDataModule`, over agent turns instead of user turns."""

    def __init__(
        self,
        train_file: str,
        val_file: str,
        encode: Callable[[dict], dict],
        tokenizer,
        labelbook,
        glossary,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        context_turns: int = 6,
        seed: int = 0,
        bucket: bool = True,
    ):
        super().__init__(
            train_file,
            val_file,
            encode,
            tokenizer,
            labelbook,
            glossary,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            context_turns=context_turns,
            seed=seed,
            bucket=bucket,
        )

    def _features(self, dialogues: list[dict]) -> list[dict]:
        rows = response_records(dialogues, self.context_turns)
        if not rows:
            raise ValueError("the corpus has no agent turns: nothing to learn responses from")
        return [self.encode(r) for r in rows]

    def _loader(self, features: list[dict], batch_size: int, shuffle: bool) -> DataLoader:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        lengths = [len(f["input_ids"]) for f in features]
        sampler = LengthBucketSampler(
            lengths, batch_size, shuffle=shuffle, seed=self.seed, pool=50 if self.bucket else 1
        )
        # a list is a map-style dataset (len and getitem), which DataLoader's annotation does not say
        return DataLoader(features, batch_sampler=sampler, collate_fn=lambda b: collate_lm(b, pad))  # type: ignore[arg-type]
