"""Response generation on the tiny random causal LM: prompts, LoRA fine-tuning, package, Responder, evaluation."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import AutoTokenizer

from findial import tracking
from findial.data.corpus import load_corpus
from findial.data.labelbook import Glossary, LabelBook
from findial.data.pii import default_masker
from findial.training.generation.backbones import tiny_lm
from findial.training.generation.data import ResponseDataModule, response_records
from findial.evaluation.responses import evaluate_responses
from findial.training.generation.module import ResponseLMModule
from findial.training.generation.prompts import IGNORE, encode_example, ensure_chat_template, prompt_ids
from findial.training.generation.responder import Responder, ServingResponder
from findial.training.generation.train import train_response

MINI = str(Path(__file__).parent / "fixtures" / "mini.jsonl")
SYSTEM = {"en": "Bank agent. Intent: {intent}. State: {state}.", "zh": "银行客服。意图：{intent}。状态：{state}。"}
LORA = {
    "r": 8,
    "alpha": 16,
    "dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_lm(cache_dir=tmp_path_factory.mktemp("cache"))
    tok = AutoTokenizer.from_pretrained(str(path))
    ensure_chat_template(tok, "chatml")  # as model=tiny_lm names it
    return path, tok


def test_agent_turns_become_examples_with_gold_intent_and_state():
    rows = response_records(load_corpus(MINI, LabelBook.load(), Glossary.load()), context_turns=6)
    first = next(r for r in rows if r["dialogue_id"] == "zh-1")
    assert first["response"] == "已为您临时挂失。请问需要补办新卡吗？"
    assert first["history"] == [{"speaker": "user", "text": "我的信用卡昨天丢了"}]
    assert first["intent"] == "card_lost_report" and first["state"] == {"product": "credit_card", "date": "昨天"}


def test_loss_only_on_the_response_and_context_dropped_oldest_first(tiny):
    _, tok = tiny
    end = tok.convert_tokens_to_ids("<|im_end|>")
    row = {
        "history": [{"speaker": "user", "text": "我的信用卡丢了"}],
        "intent": "card_lost_report",
        "state": {"product": "credit_card"},
        "lang": "zh",
        "response": "已挂失。",
    }
    ex = encode_example(tok, row, SYSTEM, max_length=256, max_response_tokens=64, end_id=end)
    target = [i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE]
    assert tok.decode(target) == "已挂失。<|im_end|>"
    prompt = tok.decode(ex["input_ids"][: len(ex["input_ids"]) - len(target)])
    assert prompt.endswith("<|im_start|>assistant\n") and "意图：card_lost_report" in prompt
    assert "product=credit_card" in prompt and "我的信用卡丢了" in prompt
    long_history = [{"speaker": "user", "text": f"turn {i} " + "x" * 40} for i in range(20)]
    ids = prompt_ids(tok, long_history, None, {}, "en", SYSTEM, max_prompt_tokens=200)
    text = tok.decode(ids)
    assert len(ids) <= 200 and "turn 19" in text and "turn 0 " not in text and text.startswith("<|im_start|>system")


def _mean_loss(module, loader) -> float:
    module.eval()
    with torch.no_grad():
        losses = [float(module(b)) for b in loader]
    module.train()
    return sum(losses) / len(losses)


def test_tiny_lm_fine_tunes_and_the_loss_decreases(tiny):
    import lightning as L

    path, tok = tiny
    L.seed_everything(0)
    encode = lambda r: encode_example(tok, r, SYSTEM, 256, 64, tok.convert_tokens_to_ids("<|im_end|>"))  # noqa: E731
    dm = ResponseDataModule(MINI, MINI, encode, tok, LabelBook.load(), Glossary.load(), batch_size=8)
    dm.setup()
    module = ResponseLMModule(str(path), LORA, {"lr": 1e-2, "warmup_ratio": 0.0})
    before = _mean_loss(module, dm.val_dataloader())
    trainer = L.Trainer(
        max_steps=40,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    after = _mean_loss(module, dm.val_dataloader())
    assert after < before - 0.5, (before, after)  # from ln(262) = 5.57, the uniform guess
    trainable = module.trainable_state_dict()
    assert trainable and all("lora_" in k for k in trainable)  # only the adapters train


def test_train_package_respond_and_evaluate(compose, tmp_path):
    cfg = compose(
        "train",
        [
            "task=response",
            "model=tiny_lm",
            "data=custom",
            f"data.train_file={MINI}",
            f"data.val_file={MINI}",
            "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu",
            "task.log_samples=0",
            "task.generation.max_new_tokens=12",
        ],
    )
    OmegaConf.resolve(cfg)
    tracking.configure(cfg.logger.tracking_uri, cfg.logger.artifact_root)
    result = train_response(cfg, cfg.task, tmp_path / "run")
    pkg = result.package_dir
    meta = json.loads((pkg / "findial_model.json").read_text(encoding="utf-8"))
    assert (
        meta["task"] == "response" and meta["backbone_name"] == "tiny_lm" and meta["generation"]["max_new_tokens"] == 12
    )
    assert {"weights.safetensors", "rules.yaml", "glossary.yaml"} <= {p.name for p in pkg.iterdir()}
    assert (pkg / "adapter" / "adapter_config.json").is_file()
    weights = load_file(str(pkg / "weights.safetensors"))
    assert weights and all("lora_" in k for k in weights)  # lean: the frozen backbone is not in the package
    ckpt = torch.load(pkg.parent / "checkpoints" / "last.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) == set(weights)
    assert "val_loss" in result.metrics

    responder = Responder(pkg)
    out = responder.respond(
        [{"speaker": "user", "text": "我的信用卡昨天丢了，卡号6222021234567890128"}],
        intent="card_lost_report",
        state={"product": "credit_card"},
    )
    assert set(out) == {"text", "flags", "lang"} and out["lang"] == "zh"
    assert default_masker().is_clean(out["text"])
    assert all(f in {"pii_masked", "empty", "truncated"} or f.startswith("compliance:") for f in out["flags"])
    prompt = responder.tokenizer.decode(
        responder.prompt([{"speaker": "user", "text": "卡号6222021234567890128"}], None, {}, "zh")
    )
    assert "6222021234567890128" not in prompt and "[CARD_NUMBER]" in prompt  # the model never sees PII

    serving = ServingResponder(responder)  # the serving protocol (serving/responder.py) over the same model
    reply = serving.respond({"text": "I lost my card", "intent": "card_lost_report", "state": {}, "lang": "en"}, [])
    assert isinstance(reply, str) and default_masker().is_clean(reply)
    assert serving.name == "findial-response-tiny_lm" and serving.version

    ev = evaluate_responses(pkg, MINI, eval_set="mini", report_dir=tmp_path / "report", responder=responder, limit=3)
    m = ev.metrics
    assert m["replies"] == 3 and 0.0 <= m["chrf"] <= 100.0 and m["pii_leaked"] == 0 and m["pii_clean_rate"] == 1.0
    # the policy's response gates are the grounded responder's: an LM reports no citations, so it misses them
    from findial.policy import load as load_policy

    assert set(ev.gates) == set(load_policy().gates_for("response"))
    assert {f.split(":")[0] for f in ev.failures} >= {"citation_accuracy", "retrieval_recall_at_5", "groundedness"}
    report = json.loads(ev.report_json.read_text(encoding="utf-8"))
    assert report["metrics"]["bleu"] == pytest.approx(m["bleu"]) and report["eval_set"] == "mini"
    replies = [json.loads(x) for x in (tmp_path / "report" / "replies.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(replies) == 3 and all("raw" not in r for r in replies)
    assert "## Gates" in ev.report_md.read_text(encoding="utf-8")
