"""runtime=onnx: the e5 (BERT-like) models of a bundle under ONNX Runtime give the torch path's outputs, and
the ensemble members' gate (member_gate) runs them only on the turns the main models are unsure of.

A tiny randomly initialised bundle (intent + an intent member, NER + a NER member, all on the tiny BERT)
is trained once for the module; the exports go to a temporary FINDIAL_CACHE.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from findial import tracking  # noqa: E402
from findial.data.corpus import load_corpus, turn_records  # noqa: E402
from findial.data.labelbook import Glossary, LabelBook  # noqa: E402
from findial.evaluation.metrics import evaluate_dialogues  # noqa: E402
from findial.training import onnx_runtime  # noqa: E402
from findial.training.inference import EntityPredictor, IntentPredictor, NLUPipeline, member_rows  # noqa: E402

MINI = str(Path(__file__).parent / "fixtures" / "mini.jsonl")
DATA = [
    "data=custom",
    f"data.train_file={MINI}",
    f"data.val_file={MINI}",
    "model=tiny",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]
TEXTS = ["我的信用卡昨天丢了", "send $300 to HSBC next Friday", "   ", "年费多少？", "what is the LPR rate"]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """(bundle dir, onnx cache dir): a tiny bundle with one member per task, trained on mini.jsonl."""
    from hydra import compose, initialize_config_module

    from findial.registry import make_bundle
    from findial.runtime import setup
    from findial.training.train import train_task

    root = tmp_path_factory.mktemp("onnx")
    cache = root / "cache"
    saved = os.environ.get("FINDIAL_CACHE")
    setup()

    def train(name, task, epochs, extra=()):
        with initialize_config_module("findial.configs", version_base="1.3"):
            cfg = compose(
                "train", [f"paths.home={root}", *DATA, f"task={task}", f"trainer.max_epochs={epochs}", *extra]
            )
        OmegaConf.resolve(cfg)
        tracking.configure(cfg.logger.tracking_uri, cfg.logger.artifact_root)
        return train_task(cfg, cfg.task, root / name).package_dir

    intent = train("intent", "intent", 8, ["model.optim.lr=3e-2"])
    member = train("member", "intent_member", 2)
    ner = train("ner", "ner", 4, ["model.optim.lr=3e-2"])
    ner_member = train("ner_member", "ner", 1, ["seed=1"])
    bundle = make_bundle(intent, ner, root / "bundle", {}, members={"m": member, "m_ner": ner_member})
    os.environ["FINDIAL_CACHE"] = str(cache)  # the tiny backbone is already built under the default cache
    try:
        yield bundle, cache
    finally:
        if saved is None:
            os.environ.pop("FINDIAL_CACHE", None)
        else:
            os.environ["FINDIAL_CACHE"] = saved


def rows():
    return turn_records(load_corpus(MINI, LabelBook.load(), Glossary.load()), 3)


def test_the_onnx_intent_model_gives_the_torch_probabilities(tiny_bundle):
    bundle, cache = tiny_bundle
    torch_p = IntentPredictor(bundle / "intent")
    onnx_p = IntentPredictor(bundle / "intent", runtime="onnx")
    assert isinstance(onnx_p.module, onnx_runtime.OnnxModule)
    assert all(isinstance(m.module, onnx_runtime.OnnxModule) for m in onnx_p.members)  # a tiny-BERT member
    batch = [{**r, "previous_intent": r["intent"] if k % 2 else None} for k, r in enumerate(rows())]
    for a, b in zip(torch_p.probabilities(batch), onnx_p.probabilities(batch)):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5)
    # logits too, on a padded batch of unequal lengths
    feats = [torch.tensor([2, 7 + k, 9, 11, 3][: 3 + k % 3]) for k in range(4)]
    ids = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    mask = (ids != 0).long()
    with torch.inference_mode():
        ref = torch_p.module({"input_ids": ids, "attention_mask": mask})
    out = onnx_p.module({"input_ids": ids, "attention_mask": mask})
    assert set(out) == set(ref) == {"intent_logits", "emotion_logits"}
    for name in ref:
        assert torch.allclose(ref[name], out[name], atol=1e-4), name
    assert torch_p.predict_in_order(batch) == onnx_p.predict_in_order(batch)


def test_the_onnx_ner_model_gives_the_torch_word_probabilities_and_entities(tiny_bundle):
    bundle, _ = tiny_bundle
    torch_p, onnx_p = EntityPredictor(bundle / "ner"), EntityPredictor(bundle / "ner", runtime="onnx")
    for (wa, pa, _), (wb, pb, _) in zip(torch_p.word_outputs(TEXTS), onnx_p.word_outputs(TEXTS)):
        assert wa == wb and torch.allclose(pa, pb, atol=1e-5)
    assert torch_p.predict(TEXTS) == onnx_p.predict(TEXTS)


def test_the_onnx_pipeline_scores_within_0005_of_torch(tiny_bundle):
    bundle, _ = tiny_bundle
    labelbook = LabelBook.load(bundle / "ontology.yaml")
    gold = load_corpus(MINI, labelbook, Glossary.load(bundle / "glossary.yaml"))
    preds = {
        rt: NLUPipeline(bundle / "intent", bundle / "ner", runtime=rt).predict_dialogues(gold)
        for rt in ("torch", "onnx")
    }
    metrics = {rt: evaluate_dialogues(gold, p, labelbook) for rt, p in preds.items()}
    for name, value in metrics["torch"].items():
        if isinstance(value, float):
            assert abs(metrics["onnx"][name] - value) <= 0.005, name
    for dt, do in zip(preds["torch"], preds["onnx"]):  # intent, emotion, entities, state per turn
        for tt, to in zip(dt["turns"], do["turns"]):
            assert {k: tt.get(k) for k in ("intent", "emotion", "entities", "state", "unknown_terms")} == {
                k: to.get(k) for k in ("intent", "emotion", "entities", "state", "unknown_terms")
            }
            if "confidence" in tt:
                assert abs(tt["confidence"] - to["confidence"]) <= 1e-3


def test_the_serving_path_answers_the_same_under_onnx(tiny_bundle):
    from findial.serving.understanding import TurnInput, understand_batch

    bundle, _ = tiny_bundle
    items = [TurnInput(t) for t in TEXTS if t.strip()] + [
        TurnInput("要，补卡要多久", "zh", (("user", "我的信用卡丢了"),))
    ]
    a = understand_batch(NLUPipeline(bundle / "intent", bundle / "ner"), items)
    b = understand_batch(NLUPipeline(bundle / "intent", bundle / "ner", runtime="onnx"), items)
    for x, y in zip(a, b):
        assert abs(x.pop("confidence") - y.pop("confidence")) <= 1e-3
        assert abs(x.pop("emotion_confidence") - y.pop("emotion_confidence")) <= 1e-3
        for e, f in zip(x["entities"], y["entities"]):
            assert abs(e.pop("confidence") - f.pop("confidence")) <= 1e-3
        assert x == y


def test_the_export_is_cached_by_content_and_redone_for_new_weights(tiny_bundle, tmp_path):
    bundle, cache = tiny_bundle
    from findial.training.package import read_meta, resolve_backbone

    backbone = resolve_backbone(read_meta(bundle / "intent")["backbone"])
    IntentPredictor(bundle / "intent", runtime="onnx")
    exported = sorted((cache / "onnx").iterdir())
    assert exported and not [p for p in exported if p.name.startswith(".")]  # nothing half-written left
    key = onnx_runtime.export_key(bundle / "intent", backbone)
    target = cache / "onnx" / f"intent-{key}"
    assert (target / "model.onnx").is_file() and json.loads((target / "findial_onnx.json").read_text())["outputs"]
    mtime = (target / "model.onnx").stat().st_mtime_ns
    IntentPredictor(bundle / "intent", runtime="onnx")  # a second load reuses the export
    assert (target / "model.onnx").stat().st_mtime_ns == mtime
    # a new version of the package (other weights) gets its own export
    other = shutil.copytree(bundle / "intent", tmp_path / "intent")
    from safetensors.torch import load_file, save_file

    state = load_file(str(other / "weights.safetensors"))
    save_file({k: v + 0.01 for k, v in state.items()}, str(other / "weights.safetensors"))
    assert onnx_runtime.export_key(other, backbone) != key
    # members and gates do not change the graph: a gated copy shares the export
    meta = json.loads((other / "findial_model.json").read_text())
    gated = {**meta, "member_gate": {"by": "margin", "below": 0.3}, "members": ["x"]}
    (other / "findial_model.json").write_text(json.dumps(gated))
    new_key = onnx_runtime.export_key(other, backbone)
    (other / "findial_model.json").write_text(json.dumps(meta))
    assert onnx_runtime.export_key(other, backbone) == new_key


def test_unknown_runtime_and_unsupported_device_are_refused_clearly(tiny_bundle):
    bundle, _ = tiny_bundle
    with pytest.raises(ValueError, match="runtime: must be one of torch, onnx"):
        IntentPredictor(bundle / "intent", runtime="tensorrt")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(onnx_runtime.OnnxRuntimeUnavailable, match="runtime: torch"):
            onnx_runtime.providers("cuda")
    assert not onnx_runtime.exportable(bundle)  # not a Hugging Face model directory: stays on torch


def test_serve_refuses_a_bad_runtime_before_starting():
    from findial.serving.model_store import ModelHolder
    from findial.serving.settings import ServeSettings, SettingsError

    with pytest.raises(SettingsError, match="serve.yaml: runtime: must be one of"):
        ModelHolder.for_nlu(ServeSettings.from_mapping({"runtime": "fast"}))
    holder = ModelHolder.for_nlu(ServeSettings.from_mapping({"runtime": "onnx"}))
    assert holder.loader.keywords == {"runtime": "onnx"}


def test_member_rows_pick_the_uncertain_rows():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.5, 0.45, 0.05], [0.4, 0.3, 0.3]])
    assert member_rows(None, probs, [0, 1, 2]) == [0, 1, 2]
    assert member_rows({"by": "margin", "below": 0.2}, probs, [0, 1, 2]) == [1, 2]
    assert member_rows({"by": "confidence", "below": 0.45}, probs, [0, 1, 2]) == [2]
    assert member_rows({"by": "margin", "below": 0.0}, probs, [0, 1, 2]) == []


def _gated(bundle, tmp_path, gate):
    out = shutil.copytree(bundle, tmp_path / f"gated-{gate['below'] if gate else 'none'}")
    for task in ("intent", "ner"):
        f = out / task / "findial_model.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), "member_gate": gate}), encoding="utf-8")
    return out


def test_a_member_gate_runs_the_members_only_on_uncertain_turns(tiny_bundle, tmp_path):
    bundle, _ = tiny_bundle
    labelbook = LabelBook.load(bundle / "ontology.yaml")
    gold = load_corpus(MINI, labelbook, Glossary.load(bundle / "glossary.yaml"))
    always = NLUPipeline(bundle / "intent", bundle / "ner")
    never_dir = _gated(bundle, tmp_path, {"by": "margin", "below": 0.0})
    never = NLUPipeline(never_dir / "intent", never_dir / "ner")
    gated_dir = _gated(bundle, tmp_path, {"by": "margin", "below": 0.5})
    gated = NLUPipeline(gated_dir / "intent", gated_dir / "ner")
    alone = NLUPipeline(bundle / "intent", bundle / "ner")
    alone.intent.members, alone.ner.members = [], []
    assert never.predict_dialogues(gold) == alone.predict_dialogues(gold)  # below 0: the members never run
    full = _gated(bundle, tmp_path, {"by": "confidence", "below": 1.0})  # below 1: every turn
    assert NLUPipeline(full / "intent", full / "ner").predict_dialogues(gold) == always.predict_dialogues(gold)
    # in between: the members read exactly the turns whose main-model margin is below the gate
    seen = []
    member = gated.intent.members[0]
    original = member.probabilities
    member.probabilities = lambda rs: (seen.extend(r["text"] for r in rs), original(rs))[1]
    batch = [{**r, "previous_intent": None} for r in rows()]
    top = gated.intent.probabilities(batch)[0].topk(2, -1).values
    margins = sorted(a - b for a, b in top.tolist())
    gated.intent.member_gate = {"by": "margin", "below": margins[len(margins) // 2]}  # the median
    expected = [r["text"] for r, (a, b) in zip(batch, top.tolist()) if a - b < margins[len(margins) // 2]]
    assert 0 < len(expected) < len(batch)
    gated.intent.predict(batch)
    assert seen == expected
    # the NER members likewise: only on texts with a word below the gate
    words = gated.ner.word_outputs(TEXTS)
    low = sorted(float((p.topk(2, -1).values[:, 0] - p.topk(2, -1).values[:, 1]).min()) for _, p, _ in words if len(p))
    gated.ner.member_gate = {"by": "margin", "below": low[len(low) // 2]}
    asked = gated.ner.member_texts(words)
    assert 0 < len(asked) < len(TEXTS) and 2 not in asked  # the blank text has no word to ask about
    full_ner = EntityPredictor(bundle / "ner")
    both = full_ner.predict(TEXTS)
    alone_ner = EntityPredictor(bundle / "ner")
    alone_ner.members = []
    own = alone_ner.predict(TEXTS)
    assert gated.ner.predict(TEXTS) == [both[i] if i in asked else own[i] for i in range(len(TEXTS))]
    with pytest.raises(ValueError, match="member_gate.below must be a number"):
        bad = _gated(bundle, tmp_path / "bad", {"by": "margin", "below": 2})
        IntentPredictor(bad / "intent")


def test_the_gate_is_chosen_on_validation_and_written_into_a_copy_of_the_bundle(tiny_bundle, tmp_path):
    from findial.training import member_gate

    bundle, _ = tiny_bundle
    labelbook = LabelBook.load(bundle / "ontology.yaml")
    gold = load_corpus(MINI, labelbook, Glossary.load(bundle / "glossary.yaml"))
    pipe = NLUPipeline(bundle / "intent", bundle / "ner", runtime="onnx")
    calls = []
    original = pipe.ner.members[0].word_probabilities
    pipe.ner.members[0].word_probabilities = lambda texts: (calls.append(len(texts)), original(texts))[1]
    result = member_gate.choose(
        pipe, gold, labelbook, tolerance=1.0, grid=(0.1, 0.5), log=lambda s: None, max_changed=None
    )
    assert result["always"]["ner_member_share"] == 1.0 and result["never"]["ner_member_share"] == 0.0
    assert result["never"]["entities_changed"] >= 0 and "_answers" not in result["never"]
    # any loss is tolerated here: the cheapest gate of the grid is taken
    chosen = result["chosen"]
    assert chosen["intent_gate"]["below"] == min(
        (0.1, 0.5),
        key=lambda t: next(r["intent_member_share"] for r in result["intent"] if r["intent_gate"]["below"] == t),
    )
    assert sum(calls) <= len([t for d in gold for t in d["turns"] if t["speaker"] == "user"])  # computed once per text
    out = member_gate.write_gated(
        bundle, tmp_path / "gated", chosen["intent_gate"], chosen["ner_gate"], {"chosen_on": "x"}
    )
    meta = json.loads((out / "intent" / "findial_model.json").read_text())
    assert meta["member_gate"]["below"] == chosen["intent_gate"]["below"] and meta["member_gate"]["chosen_on"] == "x"
    assert NLUPipeline(out / "intent", out / "ner").intent.member_gate["below"] == chosen["intent_gate"]["below"]
    with pytest.raises(SystemExit):
        member_gate.main([str(bundle), "--data", "data/natural/test.jsonl"])  # never on a test split
