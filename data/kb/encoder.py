"""Sentence embeddings as e5 makes them: a ``"query: "`` / ``"passage: "`` prefix, mean pooling of the last
hidden state over the attention mask, L2 normalisation. Any local BERT-style directory works (the
bundled e5-small from ``findial.training.backbones.e5_small()``, or ``tiny()`` in tests); nothing is
downloaded. ``model_id`` names a model directory by its name and the hash of its config, without loading it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

PREFIX = {"query": "query: ", "passage": "passage: "}
MAX_LENGTH = {"query": 128, "passage": 512}


def model_id(path: str | Path) -> str:
    """``<directory name>:<8 hex of config.json (and findial_e5.json)>``: changes when the model does."""
    path = Path(path)
    h = hashlib.sha256()
    for name in ("config.json", "findial_e5.json"):
        if (path / name).is_file():
            h.update((path / name).read_bytes())
    return f"{path.name}:{h.hexdigest()[:8]}"


class Encoder:
    """Embeds texts in batches on CPU (no gradients); vectors are float32 and unit length."""

    def __init__(self, path: str | Path, batch_size: int = 16):
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path)
        self.model_id = model_id(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval()
        self.dim = int(self.model.config.hidden_size)
        self.batch_size = batch_size

    def embed(self, texts: list[str], kind: str = "passage") -> np.ndarray:
        """``(len(texts), dim)`` unit vectors; ``kind`` is ``query`` or ``passage`` (prefix and max length)."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch with less padding
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [PREFIX[kind] + texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=MAX_LENGTH[kind],
                    return_tensors="pt",
                )
                hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out
