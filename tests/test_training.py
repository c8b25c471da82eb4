"""Tiny-model training runs: the real Lightning + peft path on a randomly initialised BERT."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from findial import tracking
from findial.data.corpus import load_corpus, turn_records
from findial.data.labelbook import Glossary, LabelBook
from findial.training.inference import EntityPredictor, IntentPredictor
from findial.training.package import load_package, read_meta
from findial.training.train import task_meta, train_task

MINI = str(Path(__file__).parent / "fixtures" / "mini.jsonl")
DATA = [
    "data=custom",
    f"data.train_file={MINI}",
    f"data.val_file={MINI}",
    "model=tiny",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]


def _train(compose, tmp_path, task, epochs, extra=()):
    cfg = compose("train", [*DATA, f"task={task}", f"trainer.max_epochs={epochs}", *extra])
    OmegaConf.resolve(cfg)
    tracking.configure(cfg.logger.tracking_uri, cfg.logger.artifact_root)
    return cfg, train_task(cfg, cfg.task, tmp_path / "run")


def test_intent_model_learns_the_training_set(compose, tmp_path):
    _, result = _train(compose, tmp_path, "intent", 60, ["model.optim.lr=3e-2"])
    rows = turn_records(load_corpus(MINI, LabelBook.load(), Glossary.load()), 3)
    preds = IntentPredictor(result.package_dir).predict_in_order(rows)
    acc = sum(p["intent"] == r["intent"] for p, r in zip(preds, rows)) / len(rows)
    majority = max(sum(r["intent"] == i for r in rows) for i in {r["intent"] for r in rows}) / len(rows)
    assert majority < 0.25 and acc >= 0.6, (acc, majority)  # a random tiny backbone: well above the majority class
    assert all(0.0 < p["confidence"] <= 1.0 and p["emotion"] in LabelBook.load().emotions for p in preds)
    meta = read_meta(result.package_dir)
    assert meta["task"] == "intent" and meta["data_fingerprint"] == result.data_fingerprint
    assert (result.package_dir / "adapter" / "adapter_config.json").is_file()


def test_ner_package_round_trip_and_lean_checkpoint(compose, tmp_path):
    _, result = _train(compose, tmp_path, "ner", 2)
    module, tokenizer, meta = load_package(result.package_dir)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("tag_head" in n for n in trainable)
    ckpt = torch.load(result.package_dir.parent / "checkpoints" / "last.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) == trainable  # frozen backbone is not in the checkpoint
    from findial.data.term_matcher import GlossaryMatcher, settled_forms

    train = load_corpus(MINI, LabelBook.load(), Glossary.load())
    assert meta["settled_forms"] == settled_forms(train, GlossaryMatcher(Glossary.load()))
    spans = EntityPredictor(result.package_dir).predict(["我的信用卡昨天丢了", "send $300 next Friday"])
    assert len(spans) == 2
    for text, ents in zip(["我的信用卡昨天丢了", "send $300 next Friday"], spans):
        for e in ents:
            assert 0 <= e["start"] < e["end"] <= len(text)
            assert e["label"] in LabelBook.load().entities


def test_resume_from_last_checkpoint(compose, tmp_path):
    from safetensors.torch import load_file

    _train(compose, tmp_path, "ner", 1)
    kept = tmp_path / "kept.ckpt"
    shutil.copy(next((tmp_path / "run").rglob("last.ckpt")), kept)
    saved = torch.load(kept, weights_only=False)["state_dict"]
    # Another seed would give other initial weights; resuming a finished 1-epoch run restores the checkpoint as is.
    _, result = _train(compose, tmp_path, "ner", 1, [f"resume={kept}", "seed=7"])
    weights = load_file(str(result.package_dir / "weights.safetensors"))
    assert set(weights) == set(saved)
    assert all(torch.equal(weights[k], saved[k]) for k in saved)
    _, fresh = _train(compose, tmp_path, "ner", 1, ["seed=7"])
    other = load_file(str(fresh.package_dir / "weights.safetensors"))
    assert not all(torch.equal(other[k], saved[k]) for k in saved)


def test_resume_with_missing_checkpoint_fails_clearly(compose, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        _train(compose, tmp_path, "ner", 1, [f"resume={tmp_path}/nope.ckpt"])


def test_first_segment_mask_is_the_current_turn():
    from findial.training.modules import first_segment_mask

    ids = torch.tensor(
        [
            [0, 5, 6, 2, 2, 7, 8, 2, 1, 1],  # XLM-R pair: <s> a </s></s> b </s> <pad>
            [0, 5, 6, 7, 2, 1, 1, 1, 1, 1],  # one sequence
            [101, 9, 102, 11, 12, 102, 0, 0, 0, 0],
        ]
    )  # BERT pair
    mask = (torch.arange(10) < torch.tensor([[8], [5], [6]])).long()
    assert first_segment_mask(ids, mask).sum(1).tolist() == [4, 5, 3]


def test_context_reads_the_previous_intent_only_when_asked():
    from findial.training.features import context_text

    row = {"context": ["user: 我的卡丢了", "agent: 请提供手机号"], "previous_intent": "card_lost_report"}
    assert context_text(row) == "agent: 请提供手机号 | user: 我的卡丢了"
    assert context_text(row, True) == "intent: card lost report | agent: 请提供手机号 | user: 我的卡丢了"
    assert context_text({"context": [], "previous_intent": None}, True) is None


def test_previous_intent_is_the_dialogue_task_skipping_non_task_intents():
    dialogue = {
        "id": "d",
        "lang": "en",
        "turns": [
            {"speaker": "user", "text": "hi", "intent": "greeting"},
            {"speaker": "user", "text": "I lost my card", "intent": "card_lost_report"},
            {"speaker": "agent", "text": "Shall I block it?"},
            {"speaker": "user", "text": "yes", "intent": "affirm"},
            {"speaker": "user", "text": "my number is [PHONE]", "intent": "card_lost_report"},
            {"speaker": "user", "text": "and my limit?", "intent": "credit_limit_increase"},
        ],
    }
    acts = ("greeting", "affirm")
    assert [r["previous_intent"] for r in turn_records([dialogue], 3, acts)] == [
        None,
        None,
        "card_lost_report",
        "card_lost_report",
        "card_lost_report",
    ]
    assert [r["previous_intent"] for r in turn_records([dialogue], 3)] == [
        None,
        "greeting",
        "card_lost_report",
        "affirm",
        "card_lost_report",
    ]


def test_non_task_intents_outside_the_label_book_are_named_and_dropped(compose, caplog):
    cfg = compose("train", [*DATA, "task=intent", "task.non_task_intents=[greeting,greting]"])
    with caplog.at_level("WARNING", logger="findial.training.train"):
        meta = task_meta(cfg.task, cfg.model, LabelBook.load(), 3)
    assert meta["non_task_intents"] == ["greeting"]
    assert "greting" in caplog.text and "task.non_task_intents" in caplog.text


def test_model_task_lora_overrides_lora_for_its_task_only(compose):
    cfg = compose(
        "train",
        [*DATA, "+model.task_lora.intent.target_modules=[query,key,value,dense]", "+model.task_lora.intent.r=2"],
    )
    intent = task_meta(cfg.task, cfg.model, LabelBook.load(), 3)["lora"]
    assert intent["target_modules"] == ["query", "key", "value", "dense"] and intent["r"] == 2
    assert intent["alpha"] == cfg.model.lora.alpha  # keys not overridden come from model.lora
    ner = compose("train", [*DATA, "task=ner", "+model.task_lora.intent.r=2"])
    assert task_meta(ner.task, ner.model, LabelBook.load(), 0)["lora"] == OmegaConf.to_container(ner.model.lora)


def test_a_stateless_intent_leaves_the_state_but_keeps_its_entities():
    from findial.data.state import DialogueStateTracker
    from findial.data.term_linker import TermLinker
    from findial.data.term_matcher import GlossaryMatcher
    from findial.training.inference import NLUPipeline

    pipeline = NLUPipeline.__new__(NLUPipeline)
    pipeline.labelbook, pipeline.glossary = LabelBook.load(), Glossary.load()
    pipeline.linker, pipeline.matcher = TermLinker(pipeline.glossary), GlossaryMatcher(pipeline.glossary)
    pipeline.term_matching, pipeline.tracker = "glossary", DialogueStateTracker(pipeline.labelbook)
    pipeline.stateless_intents = frozenset({"greeting"})
    before = {"amount": "8000元"}
    false_date = [{"start": 0, "end": 2, "label": "DATE"}]  # "下午" of "下午好": a false DATE
    ents, state, _ = pipeline.resolve_turn("下午好", false_date, before, "greeting")
    assert state == before and [(e["start"], e["end"], e["label"]) for e in ents] == [(0, 2, "DATE")]
    _, state, _ = pipeline.resolve_turn("下午好", false_date, before, "transfer_money")
    assert state == {**before, "date": "下午"} and before == {"amount": "8000元"}


def test_inference_carries_the_predicted_task_past_non_task_intents(monkeypatch):
    rows = turn_records(
        [
            {
                "id": "d",
                "lang": "en",
                "turns": [{"speaker": "user", "text": t} for t in ("hi", "I lost my card", "yes", "[PHONE]")],
            }
        ],
        3,
    )
    predictor = IntentPredictor.__new__(IntentPredictor)
    predictor.meta = {"previous_intent": True, "non_task_intents": ["greeting", "affirm"]}
    predicted = iter(["greeting", "card_lost_report", "affirm", "card_lost_report"])
    seen = []

    def fake_predict(batch):
        seen.extend(r["previous_intent"] for r in batch)
        return [{"intent": next(predicted)} for _ in batch]

    monkeypatch.setattr(predictor, "predict", fake_predict)
    predictor.predict_in_order(rows)
    assert seen == [None, None, "card_lost_report", "card_lost_report"]
    assert predictor.dialogue_task(["card_lost_report", "affirm", None]) == "card_lost_report"


def test_inference_feeds_predicted_never_gold_previous_intents(monkeypatch):
    rows = turn_records(load_corpus(MINI, LabelBook.load(), Glossary.load()), 3)
    assert any(r["previous_intent"] for r in rows)  # the gold one is there to be ignored
    predictor = IntentPredictor.__new__(IntentPredictor)
    predictor.meta = {"previous_intent": True}
    seen = []

    def fake_predict(batch):
        seen.extend((r["dialogue_id"], r["turn_index"], r["previous_intent"]) for r in batch)
        return [{"intent": f"p{r['turn_index']}"} for r in batch]

    monkeypatch.setattr(predictor, "predict", fake_predict)
    out = predictor.predict_in_order(rows)
    assert [o["intent"] for o in out] == [f"p{r['turn_index']}" for r in rows]
    last = {}
    for dialogue, index, previous in sorted(seen, key=lambda s: (s[0], s[1])):
        assert previous == last.get(dialogue)
        last[dialogue] = f"p{index}"


def test_intent_label_smoothing_reaches_the_loss(compose):
    from findial.training.package import build_module, resolve_backbone

    cfg = compose("train", [*DATA, "task=intent", "task.label_smoothing=0.2", "task.emotion=false"])
    OmegaConf.resolve(cfg)
    meta = task_meta(cfg.task, cfg.model, LabelBook.load(), 3)
    assert meta["label_smoothing"] == 0.2
    module = build_module(meta, resolve_backbone(meta["backbone"]))
    plain = build_module({**meta, "label_smoothing": 0.0}, resolve_backbone(meta["backbone"]))
    plain.load_state_dict(module.state_dict())
    module.eval(), plain.eval()
    batch = {"input_ids": torch.tensor([[2, 5, 6, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        logits = module(batch)["intent_logits"]
    batch["intent_label"] = logits.argmax(-1)  # the predicted class: smoothing can only raise its loss
    with torch.no_grad():
        assert module._step(batch, "val") > plain._step(batch, "val")
    with pytest.raises(ValueError, match="label_smoothing"):
        build_module({**meta, "label_smoothing": 1.0}, resolve_backbone(meta["backbone"]))


def test_turn_scopes_pick_the_turns_an_ensemble_member_learns_from():
    from findial.training.datamodule import in_scope

    dialogue = {
        "id": "d",
        "lang": "en",
        "turns": [
            {"speaker": "user", "text": "hi", "intent": "greeting"},
            {"speaker": "user", "text": "I lost my card", "intent": "card_lost_report"},
            {"speaker": "user", "text": "my number is [PHONE]", "intent": "card_lost_report"},
            {"speaker": "user", "text": "thanks", "intent": "thanks"},
            {"speaker": "user", "text": "and my limit?", "intent": "credit_limit_increase"},
        ],
    }
    rows = turn_records([dialogue], 0, ("greeting", "thanks"))
    assert [in_scope(r, "first_task") for r in rows] == [True, True, False, False, False]
    assert [in_scope(r, "own_task") for r in rows] == [True, True, False, True, True]
    assert all(in_scope(r, "all") for r in rows)


def test_model_task_optim_overrides_optim_for_its_task_only(compose):
    cfg = compose("train", [*DATA, "+model.task_optim.intent.head_lr=0.5"])
    assert task_meta(cfg.task, cfg.model, LabelBook.load(), 3)["optim"]["head_lr"] == 0.5
    ner = compose("train", [*DATA, "task=ner", "+model.task_optim.intent.head_lr=0.5"])
    assert task_meta(ner.task, ner.model, LabelBook.load(), 0)["optim"] == OmegaConf.to_container(ner.model.optim)


def test_model_task_encoder_overrides_the_backbone_config_of_its_task_and_loads_back(compose, tmp_path):
    override = "+model.task_encoder.ner.attention_probs_dropout_prob=0.0"
    intent = compose("train", [*DATA, override])
    assert "encoder" not in task_meta(intent.task, intent.model, LabelBook.load(), 3)
    _, result = _train(compose, tmp_path, "ner", 1, [override])
    assert read_meta(result.package_dir)["encoder"] == {"attention_probs_dropout_prob": 0.0}
    module, _, _ = load_package(result.package_dir)
    assert module.encoder.config.attention_probs_dropout_prob == 0.0  # the tiny BERT's own config says 0.1


def test_members_preset_composes_a_text_only_intent_member_and_a_ner_member(compose):
    cfg = compose("pipeline", [])  # the default
    member = cfg.members.gemma3
    assert member.model.name == "gemma3" and member.task.name == "intent"
    assert (member.task.turns, member.task.context_turns, member.task.previous_intent) == ("own_task", 0, False)
    assert "encoder" not in task_meta(member.task, member.model, LabelBook.load(), 0)  # a classifier stays causal
    tagger = cfg.members.gemma3_ner
    assert tagger.model.name == "gemma3" and tagger.task.name == "ner" and tagger.task.epochs == 3
    assert task_meta(tagger.task, tagger.model, LabelBook.load(), 0)["encoder"] == {"use_bidirectional_attention": True}
    assert not compose("pipeline", ["members=none"]).members
    assert not compose("pipeline", ["experiment=smoke"]).members  # smoke runs stay on the tiny backbone


def test_an_intent_ensemble_member_answers_with_the_main_model_on_turns_of_their_own_task(compose, tmp_path):
    from findial.registry import make_bundle

    _, main = _train(compose, tmp_path / "main", "intent", 3)
    _, member = _train(compose, tmp_path / "member", "intent_member", 3)
    _, ner = _train(compose, tmp_path / "ner", "ner", 1)
    assert read_meta(member.package_dir)["turns"] == "own_task"
    other = shutil.copytree(member.package_dir, tmp_path / "other")  # a member over other intents
    meta = json.loads((other / "findial_model.json").read_text(encoding="utf-8"))
    (other / "findial_model.json").write_text(json.dumps({**meta, "intents": meta["intents"][:-1]}), encoding="utf-8")
    with pytest.raises(ValueError, match="plain intent package over the intents"):
        make_bundle(main.package_dir, ner.package_dir, tmp_path / "bad", {}, members={"x": other})
    assert not list(tmp_path.glob("*bad*"))  # nothing half-written
    bundle = make_bundle(main.package_dir, ner.package_dir, tmp_path / "bundle", {}, members={"m": member.package_dir})
    predictor = IntentPredictor(bundle / "intent")
    assert read_meta(bundle / "intent")["members"] == ["m"] and len(predictor.members) == 1

    rows = turn_records(load_corpus(MINI, LabelBook.load(), Glossary.load()), 3)
    intents = predictor.meta["intents"]
    # no task yet: the mean of both models' probabilities
    first = [{**r, "previous_intent": None} for r in rows]
    main_p, member_p = predictor.probabilities(first)[0], predictor.members[0].probabilities(first)[0]
    for p, a, b in zip(predictor.predict(first), main_p, member_p):
        assert p["confidence"] == pytest.approx(float(((a + b) / 2).max()), abs=1e-4)
    # with a task: the main model's answer alone where it keeps that task, the mean where it reads a new one
    task = [{**r, "previous_intent": r["intent"]} for r in rows]
    main_p, member_p = predictor.probabilities(task)[0], predictor.members[0].probabilities(task)[0]
    kept = [intents[int(a.argmax())] == r["intent"] for r, a in zip(task, main_p)]
    assert any(kept)
    for p, a, b, keeps in zip(predictor.predict(task), main_p, member_p, kept):
        expected = a if keeps else (a + b) / 2
        assert p["confidence"] == pytest.approx(float(expected.max()), abs=1e-4)


def test_a_ner_ensemble_member_goes_into_the_ner_package_and_averages_on_common_words(compose, tmp_path):
    from findial.registry import make_bundle
    from findial.training.inference import common_words

    _, intent = _train(compose, tmp_path / "intent", "intent", 1)
    _, ner = _train(compose, tmp_path / "ner", "ner", 2)
    _, other = _train(compose, tmp_path / "other", "ner", 1, ["seed=1"])
    bundle = make_bundle(
        intent.package_dir,
        ner.package_dir,
        tmp_path / "bundle",
        {},
        members={"twin": ner.package_dir, "other": other.package_dir},
    )
    assert read_meta(bundle / "ner")["members"] == ["twin", "other"] and "members" not in read_meta(bundle / "intent")
    texts = ["我的信用卡昨天丢了", "send $300 next Friday", "   "]
    predictor = EntityPredictor(bundle / "ner")
    assert len(predictor.members) == 2
    # the ensemble's probabilities are the mean of the three models' on the same words (one tokenizer)
    parts = [m.word_probabilities(texts) for m in [predictor] + predictor.members]
    for k, text in enumerate(texts):
        words, p = common_words([part[k] for part in parts], predictor.meta["tags"])
        assert words == parts[0][k][0]
        assert torch.allclose(p, sum(part[k][1] for part in parts) / 3, atol=1e-6)
    alone = EntityPredictor(ner.package_dir).predict(texts)
    predictor.members = predictor.members[:1]  # the model and its twin: the model's own answer
    assert predictor.predict(texts) == alone and alone[2] == []


def test_common_words_splits_a_word_one_tokenizer_keeps_whole_as_its_continuation():
    from findial.training.inference import common_words

    tags = ["O", "B-PRODUCT", "I-PRODUCT"]
    whole = ([(0, 3), (4, 6)], torch.tensor([[0.1, 0.8, 0.1], [1.0, 0.0, 0.0]]))  # "信用卡" one word
    split = ([(0, 1), (1, 2), (2, 3)], torch.tensor([[0.2, 0.6, 0.2], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4]]))
    words, p = common_words([whole, split], tags)
    assert words == [(0, 1), (1, 2), (2, 3), (4, 6)]  # (4, 6): only the first model has a word there
    expected = torch.tensor(
        [
            [0.15, 0.7, 0.15],
            [0.15, 0.1, 0.75],  # inside the first model's word: its B- counts as I-
            [0.3, 0.05, 0.65],
            [1.0, 0.0, 0.0],
        ]
    )
    assert torch.allclose(p, expected, atol=1e-6)


def test_a_killed_run_is_continued_by_its_resume(tmp_path):
    """SIGKILL leaves the MLflow run RUNNING; resume=last continues that run (FINISHED), not a second one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    env = {**os.environ, "FINDIAL_HOME": str(tmp_path), "CI": "true"}
    args = [sys.executable, "-m", "findial.cli", "train", "task=ner", *DATA, "trainer.max_epochs=500"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob("runs/*/ner/checkpoints/last.ckpt")) and time.monotonic() < deadline:
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    tracking.configure(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "mlartifacts")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("findial-ner")
    (killed,) = client.search_runs([experiment.experiment_id])
    assert killed.info.status == "RUNNING"
    last = next(tmp_path.glob("runs/*/ner/checkpoints/last.ckpt"))
    epochs = torch.load(last, weights_only=False)["epoch"] + 2  # one more epoch than the checkpoint holds
    done = subprocess.run(
        [*args[:-1], f"trainer.max_epochs={epochs}", "resume=last"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [killed.info.run_id] and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["findial.resumed_from"].endswith("last.ckpt")


def test_a_package_of_a_newer_format_is_refused_by_name(tmp_path):
    from findial.training.package import FORMAT_VERSION

    for version in (FORMAT_VERSION + 1, "1", 0):
        (tmp_path / "findial_model.json").write_text(json.dumps({"task": "ner", "format_version": version}))
        with pytest.raises(ValueError, match=r"findial_model.json: format_version .* reads package formats 1\.\."):
            read_meta(tmp_path)
    (tmp_path / "findial_model.json").write_text(json.dumps({"task": "ner", "format_version": FORMAT_VERSION}))
    assert read_meta(tmp_path)["task"] == "ner"


def test_last_checkpoint_is_rewritten_every_epoch_even_without_a_new_best(compose, tmp_path):
    """resume=last must continue from the latest epoch: Lightning's save_last alone writes last.ckpt only when a
    new best is saved."""
    _, result = _train(compose, tmp_path, "ner", 4, ["model.optim.lr=0.0", "model.optim.head_lr=0.0"])
    ckpts = result.package_dir.parent / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", weights_only=False)
    best = [p for p in ckpts.glob("epoch=*.ckpt")]
    assert last["epoch"] == 3 and len(best) == 1  # no learning, so no new best after epoch 0; last is epoch 4's
    assert torch.load(best[0], weights_only=False)["epoch"] == 0
