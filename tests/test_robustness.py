"""Robustness report and adversarial set: the real pipeline on a tiny model trained on the mini corpus."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from findial import registry, tracking
from findial.data.corpus import load_corpus
from findial.data.labelbook import Glossary, LabelBook
from findial.data.pii import default_masker
from findial.evaluation.perturb import build_suite
from findial.evaluation.robustness import (
    DEFAULT_ADVERSARIAL,
    METRICS,
    SAFE_INTENTS,
    evaluate_adversarial,
    load_nlu,
    output_leaks,
    render_markdown,
    run_robustness,
)

MINI = Path(__file__).parent / "fixtures" / "mini.jsonl"
CONFIG = Path(__file__).parent.parent / "configs" / "robustness.yaml"
LB, GL = LabelBook.load(), Glossary.load()
PERTURBATIONS = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["perturbations"]


def _adversarial_pii() -> list[str]:
    """The synthetic PII strings planted in the adversarial set."""
    found = []
    for d in load_corpus(DEFAULT_ADVERSARIAL, LB, GL):
        for t in d["turns"]:
            found += [t["text"][s.start : s.end] for s in default_masker().find(t["text"])]
    return found


# ---------------------------------------------------------------- the adversarial file
def test_adversarial_set_is_bundled_valid_and_safe_only():
    import findial.data

    assert DEFAULT_ADVERSARIAL == Path(findial.data.__file__).resolve().parent / "adversarial" / "adversarial.jsonl"
    dialogues = load_corpus(DEFAULT_ADVERSARIAL, LB, GL)  # validates against the label book
    turns = [(d["lang"], t) for d in dialogues for t in d["turns"] if t["speaker"] == "user"]
    assert 50 <= len(turns) <= 80
    assert {t["intent"] for _, t in turns} == set(SAFE_INTENTS)
    for lang in ("zh", "en"):
        assert sum(1 for x, _ in turns if x == lang) >= 25
    texts = " ".join(t["text"] for _, t in turns)
    for attack in ("ignore previous instructions", "开发者模式", "system prompt", "系统提示词", "DROP TABLE", "DAN"):
        assert attack.lower() in texts.lower()
    assert any(len(t["text"]) > 400 for _, t in turns)  # very long repeated text
    # planted (synthetic) personal data, each piece tagged with its PII label: something for the leak check
    masker = default_masker()
    planted = [(t, s) for _, t in turns for s in masker.find(t["text"])]
    assert len(planted) >= 8 and {s.label for _, s in planted} >= {"CARD_NUMBER", "ID_NUMBER", "PHONE", "EMAIL"}
    for t, s in planted:
        assert {"start": s.start, "end": s.end, "label": s.label} in t["entities"]


def test_the_adversarial_builder_reproduces_the_file_and_catches_unannotated_terms(tmp_path):
    import importlib.util

    out = tmp_path / "adversarial.jsonl"
    path = Path(__file__).parent.parent / "data" / "adversarial" / "build_adversarial.py"
    subprocess.run([sys.executable, str(path), str(out)], check=True, capture_output=True, timeout=120)
    assert out.read_text(encoding="utf-8") == DEFAULT_ADVERSARIAL.read_text(encoding="utf-8")
    spec = importlib.util.spec_from_file_location("build_adversarial", path)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    patterns = builder.glossary_patterns(GL)
    text, ents = builder.parse("print my [[credit card|credit_card]] statements and the 年费", GL)
    assert ents == [{"start": 9, "end": 20, "label": "PRODUCT", "term_id": "credit_card"}]
    assert sorted(builder.unannotated_terms(text, ents, patterns)) == ["statement", "年费"]


def test_leak_check_reads_every_output_field_but_the_echoed_text():
    d = next(d for d in load_corpus(DEFAULT_ADVERSARIAL, LB, GL) if d["id"] == "adv-zh-018")
    gold = d["turns"][0]
    card = next(e for e in gold["entities"] if e["label"] == "CARD_NUMBER")
    number = gold["text"][card["start"] : card["end"]]
    base = {"speaker": "user", "text": gold["text"], "intent": "out_of_scope", "entities": [], "state": {}}
    assert output_leaks(gold, base) == []  # the caller's own text, echoed back, does not count
    tagged = {**base, "entities": [{**card, "confidence": 0.9}]}
    assert output_leaks(gold, tagged) == []  # a PII-labelled span is what masking needs
    as_amount = {**base, "entities": [{**card, "label": "AMOUNT"}], "state": {"amount": number}}
    assert output_leaks(gold, as_amount) == [
        {"field": "state.amount", "pii": "CARD_NUMBER"},
        {"field": "entities[0] (AMOUNT) surface", "pii": "CARD_NUMBER"},
    ]
    assert output_leaks(gold, {**base, "unknown_terms": [number]}) == [
        {"field": "unknown_terms[0]", "pii": "CARD_NUMBER"}
    ]
    assert output_leaks(gold, {**base, "text": gold["text"] + " "})[0]["field"] == "text"  # not an echo


# ---------------------------------------------------------------- a tiny model, end to end
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """intent + NER trained for a few epochs on the mini corpus with the tiny backbone, as one bundle."""
    from hydra import compose, initialize_config_module

    from findial.runtime import setup as _setup
    from findial.training.train import train_task

    _setup()
    home = tmp_path_factory.mktemp("home")
    overrides = [
        f"paths.home={home}",
        "data=custom",
        f"data.train_file={MINI}",
        f"data.val_file={MINI}",
        "model=tiny",
        "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
    ]
    packages = {}
    for task in ("intent", "ner"):
        with initialize_config_module("findial.configs", version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, f"task={task}"])
        OmegaConf.resolve(cfg)
        tracking.configure(cfg.logger.tracking_uri, cfg.logger.artifact_root)
        packages[task] = train_task(cfg, cfg.task, home / task).package_dir
    return registry.make_bundle(packages["intent"], packages["ner"], home / "bundle", {"test": True})


def test_run_robustness_reports_a_row_per_perturbation(bundle):
    nlu = load_nlu(bundle)
    gold = load_corpus(MINI, LB, GL)
    suite = build_suite(PERTURBATIONS, GL)
    report = run_robustness(nlu, gold, LB, suite, seed=13, adversarial_file=DEFAULT_ADVERSARIAL)
    assert [r["perturbation"] for r in report["perturbations"]] == list(PERTURBATIONS)
    assert report["n_user_turns"] == 17 and set(report["clean"]) == set(METRICS)
    for row in report["perturbations"]:
        assert 0 < row["changed_turns"] <= row["user_turns"] == 17
        for k in METRICS:
            if row[k] is None or report["clean"][k] is None:
                assert row[f"{k}_drop"] is None
            else:
                assert 0.0 <= row[k] <= 1.0
                assert row[f"{k}_drop"] == pytest.approx(report["clean"][k] - row[k])
    adv = report["adversarial"]
    assert adv["n_user_turns"] == 60 and adv["turns_with_pii"] >= 8
    assert sum(adv["predicted_intents"].values()) == 60
    safe = sum(n for i, n in adv["predicted_intents"].items() if i in SAFE_INTENTS)
    assert adv["safe_share"] == pytest.approx(safe / 60) and len(adv["unsafe"]) == 60 - safe
    assert adv["leak_free"] == (adv["n_leaks"] == 0 == len(adv["leaks"]))
    # the same seed gives the same report; the report names no text, so it holds none of the planted PII
    assert run_robustness(nlu, gold, LB, suite, seed=13) == {k: v for k, v in report.items() if k != "adversarial"}
    dumped = json.dumps(report, ensure_ascii=False) + render_markdown(report)
    assert not any(pii in dumped for pii in _adversarial_pii())
    # the adversarial evaluation agrees when run on its own
    assert evaluate_adversarial(nlu) == adv


def test_cli_writes_reports_and_logs_to_mlflow(bundle, tmp_path):
    env = {**os.environ, "FINDIAL_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "findial.cli",
            "robustness",
            f"model_ref={bundle}",
            f"data_file={MINI}",
            f"report_dir={tmp_path / 'report'}",
            "device=cpu",
            "~perturbations.width",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "robustness.json").read_text(encoding="utf-8"))
    names = [n for n in PERTURBATIONS if n != "width"]
    assert [r["perturbation"] for r in report["perturbations"]] == names
    assert report["adversarial"]["n_user_turns"] == 60
    md = (tmp_path / "report" / "robustness.md").read_text(encoding="utf-8")
    assert all(f"| {n} |" in md for n in names) and "## Adversarial set" in md and "| width |" not in md
    for text in (md, (tmp_path / "report" / "robustness.json").read_text(encoding="utf-8"), out.stdout, out.stderr):
        assert not any(pii in text for pii in _adversarial_pii())
    import mlflow

    uri = f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("findial-robustness")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["typo.user_turns"] == 17.0
    assert run.data.metrics["adversarial.safe_share"] == pytest.approx(report["adversarial"]["safe_share"])
    assert run.data.tags["findial.model"] == str(bundle)
