"""Lightning DataModule: corpus files -> tokenised turns -> length-bucketed, dynamically padded batches."""

from __future__ import annotations

import random
from functools import partial
from typing import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from findial.data.corpus import load_corpora, to_dataset

from .features import IGNORE


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar length (less padding), in a shuffled order each epoch.

    Indices are shuffled, cut into pools of ``pool`` batches, sorted by length
    inside a pool and split into batches; the batch order is then shuffled.
    With ``num_replicas`` > 1 (DDP, FSDP, DeepSpeed) rank ``rank`` takes every
    ``num_replicas``-th batch; the list is padded with its first batches so that
    every rank runs the same number of steps.
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        shuffle: bool = True,
        pool: int = 50,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.lengths, self.batch_size, self.shuffle, self.pool, self.seed = lengths, batch_size, shuffle, pool, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        idx = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(idx)
        size = self.batch_size * self.pool
        batches = []
        for i in range(0, len(idx), size):
            chunk = sorted(idx[i : i + size], key=self.lengths.__getitem__)
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        if self.num_replicas > 1 and batches:
            per_rank = -(-len(batches) // self.num_replicas)
            batches = (batches * self.num_replicas)[: per_rank * self.num_replicas][self.rank :: self.num_replicas]
        return iter(batches)

    def __len__(self) -> int:
        total = (len(self.lengths) + self.batch_size - 1) // self.batch_size
        return -(-total // self.num_replicas)


def collate(features: list[dict], pad_id: int) -> dict:
    """Pad to the longest sequence of the batch (dynamic padding)."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {
        "input_ids": torch.tensor([f["input_ids"] + [pad_id] * (width - len(f["input_ids"])) for f in features]),
        "attention_mask": torch.tensor(
            [f["attention_mask"] + [0] * (width - len(f["attention_mask"])) for f in features]
        ),
    }
    for key in ("tag_labels", "stand_labels"):
        if key in features[0]:
            batch[key] = torch.tensor([f[key] + [IGNORE] * (width - len(f[key])) for f in features])
    for key in ("intent_label", "emotion_label"):
        if key in features[0]:
            batch[key] = torch.tensor([f[key] for f in features])
    return batch


# Which user turns a model learns from: all; "first_task": those before the dialogue has a task (its first
# task turn and the greetings before it); "own_task": those that do not continue the dialogue's task (the
# first task turn, a new task, a greeting or thanks), what an intent ensemble member reads (inference.py).
TURN_SCOPES = ("all", "first_task", "own_task")


def in_scope(row: dict, turns: str) -> bool:
    """Whether a turn record (``turn_records``: ``previous_intent`` is the dialogue's annotated task
    before the turn) is one a model of this ``turns`` scope learns from."""
    if turns == "first_task":
        return row["previous_intent"] is None
    if turns == "own_task":
        return row["intent"] != row["previous_intent"]
    return True


class TurnDataModule(L.LightningDataModule):
    def __init__(
        self,
        train_file,
        val_file,
        encode: Callable[[dict], dict],
        tokenizer,
        labelbook,
        glossary,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        context_turns: int = 3,
        seed: int = 0,
        bucket: bool = True,
        non_task_intents=(),
        turns: str = "all",
    ):
        super().__init__()
        self.train_file, self.val_file, self.encode, self.tokenizer = train_file, val_file, encode, tokenizer
        self.labelbook, self.glossary = labelbook, glossary
        self.batch_size, self.eval_batch_size, self.context_turns = batch_size, eval_batch_size, context_turns
        self.seed, self.bucket, self.non_task_intents = seed, bucket, tuple(non_task_intents)
        if turns not in TURN_SCOPES:
            raise ValueError(f"task.turns={turns!r}: expected one of {TURN_SCOPES}")
        self.turns = turns
        self.train_dialogues: list[dict] = []
        self.val_dialogues: list[dict] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_dialogues:
            return
        self.train_dialogues = load_corpora(self.train_file, self.labelbook, self.glossary)
        self.val_dialogues = load_corpora(self.val_file, self.labelbook, self.glossary)
        self.train_features = self._features(self.train_dialogues)
        self.val_features = self._features(self.val_dialogues)

    def _features(self, dialogues: list[dict]):
        """User turns as a Hugging Face dataset, tokenised with the task's encoder."""
        ds = to_dataset(dialogues, self.context_turns, self.non_task_intents)
        if self.turns != "all":
            ds = ds.filter(partial(in_scope, turns=self.turns), desc=f"{self.turns} turns")
        return ds.map(self.encode, remove_columns=ds.column_names, desc="tokenising")

    def _loader(self, features, batch_size: int, shuffle: bool) -> DataLoader:
        pad = self.tokenizer.pad_token_id or 0
        lengths = [len(ids) for ids in features["input_ids"]]
        trainer = self.trainer  # set while fitting; the sampler shards batches across ranks itself
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = LengthBucketSampler(
            lengths,
            batch_size,
            shuffle=shuffle,
            seed=self.seed,
            pool=50 if self.bucket else 1,
            num_replicas=replicas,
            rank=rank,
        )
        return DataLoader(features, batch_sampler=sampler, collate_fn=lambda b: collate(b, pad))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_features, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_features, self.eval_batch_size, shuffle=False)
