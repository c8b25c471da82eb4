"""The stand head: which predicted mention becomes its slot's value (a fallback or background value does not)."""

import json
from pathlib import Path

from omegaconf import OmegaConf
from safetensors.torch import load_file

from findial import tracking
from findial.data.corpus import load_corpus, turn_records
from findial.data.labelbook import Glossary, LabelBook
from findial.data.state import DialogueStateTracker
from findial.training.features import IGNORE, encode_ner
from findial.training.inference import EntityPredictor, NLUPipeline
from findial.training.package import load_package, read_meta
from findial.training.train import train_task

MINI = str(Path(__file__).parent / "fixtures" / "mini.jsonl")
DATA = [
    "data=custom",
    f"data.train_file={MINI}",
    f"data.val_file={MINI}",
    "model=tiny",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]
FAST = ["model.optim.lr=3e-2", "model.optim.head_lr=5e-2", "task.weight_averaging.start=null"]  # one step an epoch


def ent(text, surface, label, term_id=None, **extra):
    start = text.index(surface)
    return {
        "start": start,
        "end": start + len(surface),
        "label": label,
        **({"term_id": term_id} if term_id else {}),
        **extra,
    }


def test_stand_labels_mark_the_standing_mention_one_the_fallback_zero_and_the_rest_ignored(tmp_path):
    from transformers import AutoTokenizer

    from findial.training.backbones import tiny

    t1, t2, t3 = "信用卡账单想分期", "12期吧，利率3%以上的话就6期", "还是6期吧"
    dialogue = {
        "id": "d",
        "lang": "zh",
        "turns": [
            {
                "speaker": "user",
                "text": t1,
                "intent": "bill_installment",
                "entities": [ent(t1, "信用卡", "PRODUCT", "credit_card")],
                "state": {"product": "credit_card"},
            },
            {"speaker": "agent", "text": "分几期？"},
            {
                "speaker": "user",
                "text": t2,
                "intent": "bill_installment",
                "entities": [ent(t2, "12期", "DURATION"), ent(t2, "3%", "RATE"), ent(t2, "6期", "DURATION")],
                "state": {"product": "credit_card", "duration": "12期"},
            },
            {"speaker": "user", "text": t3, "intent": "bill_installment", "entities": [ent(t3, "6期", "DURATION")]},
        ],
    }
    tokenizer = AutoTokenizer.from_pretrained(str(tiny(cache_dir=tmp_path)))
    lb = LabelBook.load()
    rows = turn_records([dialogue], 0)
    first, second, unannotated = (encode_ner(tokenizer, r, 64, lb.bio_tags, lb.state_slots) for r in rows)

    def within(f, text, surface):
        start = text.index(surface)
        return [x for (s, e), x in zip(f["offsets"], f["stand_labels"]) if s < e and start <= s < start + len(surface)]

    assert within(second, t2, "12期") == [1.0, 1.0] and within(second, t2, "6期") == [0.0, 0.0]
    assert set(within(second, t2, "3%")) == set(within(second, t2, "吧，利")) == {IGNORE}  # RATE fills no slot
    assert second["stand_labels"][0] == second["stand_labels"][-1] == IGNORE  # [CLS], [SEP]
    duration = {lb.bio_tags.index(t) for t in ("B-DURATION", "I-DURATION")}
    assert [x != IGNORE for x in second["stand_labels"]] == [t in duration for t in second["tag_labels"]]
    assert within(first, t1, "信用卡") == [1.0] * 3 and set(within(first, t1, "账单想分期")) == {IGNORE}
    assert set(unannotated["stand_labels"]) == {IGNORE}  # a turn without a state says nothing
    assert (
        encode_ner(tokenizer, {**rows[1], "state": json.dumps(rows[1]["state"])}, 64, lb.bio_tags, lb.state_slots)
        == second
    )  # the datamodule's rows hold the state as a JSON string
    assert "stand_labels" not in encode_ner(tokenizer, rows[1], 64, lb.bio_tags)  # the head off: as before


def test_the_tracker_skips_a_mention_that_does_not_stand():
    tracker = DialogueStateTracker(LabelBook.load(), stand_threshold=0.5)
    t = "12期吧，手续费高的话就6期"
    fallback = [ent(t, "12期", "DURATION", stands=0.9), ent(t, "6期", "DURATION", stands=0.2)]
    assert tracker.update({}, fallback, t) == {"duration": "12期"}
    assert tracker.update({}, [{k: v for k, v in e.items() if k != "stands"} for e in fallback], t) == {
        "duration": "6期"
    }  # without the head the last mention wins, as the rule says
    t = "I paid 500 last month already, this month's bill is wrong"
    before = {"amount": "800"}
    assert tracker.update(
        before, [ent(t, "500", "AMOUNT", stands=0.1), ent(t, "last month", "DATE", stands=0.7)], t
    ) == {"amount": "800", "date": "last month"}


def test_the_pipeline_reads_stands_but_never_returns_them():
    from findial.data.term_linker import TermLinker
    from findial.data.term_matcher import GlossaryMatcher

    pipeline = NLUPipeline.__new__(NLUPipeline)
    pipeline.labelbook, pipeline.glossary = LabelBook.load(), Glossary.load()
    pipeline.linker, pipeline.matcher = TermLinker(pipeline.glossary), GlossaryMatcher(pipeline.glossary)
    pipeline.term_matching, pipeline.tracker = "glossary", DialogueStateTracker(pipeline.labelbook, 0.5)
    pipeline.stateless_intents = frozenset()
    t = "信用卡还是12期吧，手续费高的话就6期"
    predicted = [
        ent(t, "信用卡", "PRODUCT", confidence=0.9, stands=0.3),  # the glossary form takes its stands
        ent(t, "12期", "DURATION", confidence=0.9, stands=0.8),
        ent(t, "6期", "DURATION", confidence=0.9, stands=0.4),
    ]
    ents, state, _ = pipeline.resolve_turn(t, predicted, {"product": "debit_card"}, "bill_installment")
    # "手续费", a listed form the model did not tag, has no stands: it stands, as every mention did before
    assert state == {"product": "debit_card", "duration": "12期", "term": "handling_fee"}
    assert [e["label"] for e in ents] == ["PRODUCT", "DURATION", "TERM", "DURATION"]
    assert not any("stands" in e for e in ents) and all("stands" in e for e in predicted)


def _train(compose, out, task, epochs, extra=()):
    cfg = compose("train", [*DATA, f"task={task}", f"trainer.max_epochs={epochs}", *extra])
    OmegaConf.resolve(cfg)
    tracking.configure(cfg.logger.tracking_uri, cfg.logger.artifact_root)
    return train_task(cfg, cfg.task, out)


def test_a_stand_head_goes_into_the_package_and_its_probabilities_never_leave_the_pipeline(compose, tmp_path):
    head = _train(compose, tmp_path / "head", "ner", 60, [*FAST, "task.stand_head.enabled=true"])
    plain = _train(compose, tmp_path / "plain", "ner", 1, FAST)
    intent = _train(compose, tmp_path / "intent", "intent", 1)
    assert "val_stand_loss" in head.metrics
    meta, plain_meta = read_meta(head.package_dir), read_meta(plain.package_dir)
    assert meta["stand_head"] == {"weight": 0.5, "threshold": 0.5}
    # the head off: the package is what it was (no new meta key, no new tensor)
    assert {k: v for k, v in plain_meta.items() if k != "train_run_id"} == {
        k: v for k, v in meta.items() if k not in ("train_run_id", "stand_head")
    }
    weights = set(load_file(str(head.package_dir / "weights.safetensors")))
    assert weights - set(load_file(str(plain.package_dir / "weights.safetensors"))) == {
        "stand_head.weight",
        "stand_head.bias",
    }
    module, _, _ = load_package(head.package_dir)
    assert module.stand_head is not None and load_package(plain.package_dir)[0].stand_head is None

    dialogues = load_corpus(MINI, LabelBook.load(), Glossary.load())
    texts = [r["text"] for r in turn_records(dialogues, 0)]
    spans = [e for ents in EntityPredictor(head.package_dir).predict(texts) for e in ents]
    assert spans and all(isinstance(e["stands"], float) and 0.0 <= e["stands"] <= 1.0 for e in spans)
    assert not any("stands" in e for ents in EntityPredictor(plain.package_dir).predict(texts) for e in ents)
    pipeline = NLUPipeline(intent.package_dir, head.package_dir)
    assert pipeline.tracker.stand_threshold == 0.5
    turns = [t for d in pipeline.predict_dialogues(dialogues) for t in d["turns"] if t["speaker"] == "user"]
    assert any(t["entities"] for t in turns) and not any("stands" in e for t in turns for e in t["entities"])
