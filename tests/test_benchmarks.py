"""Public benchmark loaders (BANKING77, NLU++ banking) and benchmarks/public_benchmarks.py.

Tests on the real data skip when the datasets folder is not there (../shared/datasets from the
repository root, or $FINDIAL_DATASETS); the error-reporting tests build small files of their own.
"""

import csv
import importlib.util
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from findial.data import benchmarks as B
from findial.data.corpus import load_corpus
from findial.data.labelbook import Glossary, LabelBook

SCRIPT = B.REPO_ROOT / "benchmarks" / "public_benchmarks.py"


@pytest.fixture(scope="module")
def root() -> Path:
    try:
        return B.resolve_datasets_dir()
    except B.BenchmarkDataError as exc:
        pytest.skip(f"public datasets not available here ({exc}); set {B.DATASETS_ENV} to run these tests")


@pytest.fixture(scope="module")
def banking77(root):
    return B.load_banking77(root)


@pytest.fixture(scope="module")
def nlupp(root):
    return B.load_nlupp_banking(root)


def _ids(dialogues):
    return [d["id"] for d in dialogues]


def test_banking77_counts_and_stratified_validation(root, banking77):
    s = banking77.splits
    assert len(s["train"]) + len(s["validation"]) == 10003 and len(s["test"]) == 3080
    assert len(banking77.ontology["intents"]) == 77
    ids = _ids(s["train"]) + _ids(s["validation"]) + _ids(s["test"])
    assert len(ids) == len(set(ids))
    with (root / "banking77" / "train.csv").open(encoding="utf-8", newline="") as fh:
        raw = Counter((r["text"], r["category"]) for r in csv.DictReader(fh))
    got = Counter((d["turns"][0]["text"], B.intent_of(d)) for d in s["train"] + s["validation"])
    assert got == raw  # every row kept, with its label, nothing invented
    per_train, per_val = Counter(map(B.intent_of, s["train"])), Counter(map(B.intent_of, s["validation"]))
    assert set(per_val) == set(per_train) and len(per_train) == 77
    for intent, n_val in per_val.items():  # stratified: ~10% of every intent
        assert abs(n_val - 0.1 * (n_val + per_train[intent])) <= 1, intent
    again, other = B.load_banking77(root, seed=13), B.load_banking77(root, seed=14)
    assert _ids(again.splits["validation"]) == _ids(s["validation"])
    assert _ids(other.splits["validation"]) != _ids(s["validation"])


def test_nlupp_counts_and_spans_match_the_source(root, nlupp):
    folds, ontology = B.load_nlupp_folds(root)
    assert len(folds) == 20 and sum(map(len, folds.values())) == 2071
    assert len(ontology["entities"]) == 13
    for f, dialogues in folds.items():
        raw = json.loads((root / "nluplusplus-banking" / f"fold{f}.json").read_text(encoding="utf-8"))
        assert len(raw) == len(dialogues)
        for ex, d in zip(raw, dialogues):
            turn = d["turns"][0]
            assert turn["text"] == ex["text"] and turn["intents"] == ex.get("intents", [])
            want = sorted((v["span"][0], v["span"][1], v["text"]) for v in (ex.get("slots") or {}).values())
            got = sorted((e["start"], e["end"], turn["text"][e["start"] : e["end"]]) for e in turn["entities"])
            assert got == want
    s = nlupp.splits
    assert [len(s["test"])] == [len(folds[0]) + len(folds[1])]
    assert len(s["train"]) + len(s["validation"]) == 2071 - len(s["test"])
    assert all(d["id"].startswith(("nlupp-banking-f00-", "nlupp-banking-f01-")) for d in s["test"])
    assert not set(_ids(s["test"])) & set(_ids(s["train"]) + _ids(s["validation"]))


def test_generated_corpora_pass_the_findial_loader(banking77, nlupp, tmp_path):
    for bench in (banking77, nlupp):
        files = bench.write(tmp_path / bench.name)
        labelbook, glossary = LabelBook.load(files["ontology"]), Glossary.load(files["glossary"])
        assert glossary.terms == {} and glossary.lookup("credit card") is None
        assert labelbook.languages == ("en",) and labelbook.terminology_labels == frozenset()
        for split, dialogues in bench.splits.items():
            assert len(load_corpus(files[split], labelbook, glossary)) == len(dialogues)
    nlupp_book = LabelBook.load(tmp_path / "nlupp-banking" / "ontology.yaml")
    assert "PERSON" in nlupp_book.pii_labels and "DATE_PERIOD" in nlupp_book.entities
    assert B.NLUPP_PLACEHOLDER_INTENT in nlupp_book.intents and len(nlupp_book.intents) == 49
    assert LabelBook.load(tmp_path / "banking77" / "ontology.yaml").entities == []


def test_datasets_dir_resolution(tmp_path, monkeypatch):
    configured, env, flag = (tmp_path / n for n in ("configured", "env", "flag"))
    for d in (configured, env, flag):
        d.mkdir()
    relative = os.path.relpath(configured, B.REPO_ROOT)  # the configured path is taken from the repo root
    monkeypatch.delenv(B.DATASETS_ENV, raising=False)
    monkeypatch.chdir(tmp_path / "flag")
    assert B.resolve_datasets_dir(None, relative) == configured.resolve()
    monkeypatch.setenv(B.DATASETS_ENV, str(env))
    assert B.resolve_datasets_dir(None, relative) == env.resolve()
    assert B.resolve_datasets_dir(str(flag), relative) == flag.resolve()
    monkeypatch.setenv(B.DATASETS_ENV, str(tmp_path / "missing"))
    with pytest.raises(B.BenchmarkDataError, match=f"missing: datasets directory not found.*{B.DATASETS_ENV}"):
        B.resolve_datasets_dir(None, relative)


def test_bad_banking77_rows_are_reported_with_file_and_line(tmp_path):
    base = tmp_path / "banking77"
    base.mkdir()
    (base / "categories.json").write_text('["card_arrival", "age_limit"]', encoding="utf-8")
    (base / "train.csv").write_text(
        'text,category\nwhere is my card,card_arrival\n"two\nlines",top_up\n ,age_limit\n', encoding="utf-8"
    )
    (base / "test.csv").write_text("text,label\nx,age_limit\n", encoding="utf-8")
    with pytest.raises(B.BenchmarkDataError) as err:
        B.load_banking77(tmp_path)
    assert err.value.problems == [
        f"{base / 'train.csv'}:3: category: 'top_up' is not in categories.json",
        f"{base / 'train.csv'}:5: text: empty",
    ]
    (base / "train.csv").write_text("text,category\nwhere is my card,card_arrival\n", encoding="utf-8")
    with pytest.raises(B.BenchmarkDataError, match=r"test.csv:1: header: missing column\(s\) \['category'\]"):
        B.load_banking77(tmp_path)


def _fake_nlupp(root: Path, bad_fold: int, bad_examples: list) -> Path:
    base = root / "nluplusplus-banking"
    base.mkdir(parents=True)
    onto = {
        "intents": {"card": {"domain": ["banking"]}, "booking": {"domain": ["hotels"]}},
        "slots": {"date": {"domain": ["general"]}, "rooms": {"domain": ["hotels"]}},
    }
    (base / "ontology.json").write_text(json.dumps(onto), encoding="utf-8")
    good = [{"text": "card by friday", "intents": ["card"], "slots": {"date": {"text": "friday", "span": [8, 14]}}}]
    for f in range(20):
        (base / f"fold{f}.json").write_text(
            json.dumps(good + (bad_examples if f == bad_fold else [])), encoding="utf-8"
        )
    return base


def test_bad_nlupp_examples_are_reported_with_file_example_and_field(tmp_path):
    base = _fake_nlupp(
        tmp_path,
        3,
        [
            {"text": "on monday", "slots": {"date": {"text": "monday", "span": [2, 9]}}},
            {"text": "2 rooms", "intents": ["booking"], "slots": {"rooms": {"text": "2", "span": [0, 1]}}},
        ],
    )
    with pytest.raises(B.BenchmarkDataError) as err:
        B.load_nlupp_banking(tmp_path)
    where = f"{base / 'fold3.json'}: examples"
    assert err.value.problems == [
        f"{where}[1].slots.date.span: text[2:9] is ' monday', the slot text is 'monday'",
        f"{where}[2].intents: unknown intent(s) ['booking'] (not a banking intent of ontology.json)",
        f"{where}[2].slots.rooms: not a banking slot of ontology.json",
    ]
    with pytest.raises(ValueError, match="test_folds"):
        B.load_nlupp_banking(tmp_path, test_folds=[20])


def test_split_off_is_seeded_and_stratified_and_take_covers_every_group():
    items = [(i, "a" if i < 80 else "b") for i in range(100)]
    kept, held = B.split_off(items, 0.1, seed=1, key=lambda x: x[1])
    assert Counter(x[1] for x in held) == {"a": 8, "b": 2} and len(kept) == 90
    assert B.split_off(items, 0.1, seed=1, key=lambda x: x[1]) == (kept, held)
    assert B.split_off(items, 0.1, seed=2, key=lambda x: x[1])[1] != held
    picked = B.take(items, 4, seed=0, key=lambda x: x[1])
    assert len(picked) == 4 and {x[1] for x in picked} == {"a", "b"}
    assert B.take(items, None, seed=0) == items


def _load_script():
    spec = importlib.util.spec_from_file_location("public_benchmarks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_benchmark_takes_its_model_and_epochs_from_the_settings_unless_the_command_line_says():
    from omegaconf import OmegaConf

    script = _load_script()
    settings = OmegaConf.load(script.SETTINGS)
    assert script.model_and_epochs("banking77", settings, script.parse_args([])) == ("minilm", 5)
    assert script.model_and_epochs("nlupp", settings, script.parse_args([])) == ("minilm", None)
    args = script.parse_args(["--model", "e5_small", "--epochs", "2"])
    assert script.model_and_epochs("nlupp", settings, args) == ("e5_small", 2)
    bare = OmegaConf.create({"banking77": {"val_fraction": 0.1}})
    assert script.model_and_epochs("banking77", bare, script.parse_args([])) == ("e5_small", None)


@pytest.mark.slow
def test_script_end_to_end_on_a_tiny_subset(root, tmp_path):
    import mlflow

    out, home = tmp_path / "results.json", tmp_path / "home"
    results = _load_script().main(
        [
            "--datasets-dir",
            str(root),
            "--which",
            "banking77,nlupp",
            "--model",
            "tiny",
            "--epochs",
            "1",
            "--max-train",
            "64",
            "--max-eval",
            "48",
            "--out",
            str(out),
            "--home",
            str(home),
        ]
    )
    assert json.loads(out.read_text(encoding="utf-8")) == json.loads(json.dumps(results))
    b77, nlu = results["benchmarks"]["banking77"], results["benchmarks"]["nlupp"]
    assert b77["examples"] == {"train": 64, "validation": 48, "test": 48} and b77["subset"] is True
    assert 0.0 <= b77["test"]["accuracy"] <= 1.0 and b77["value"] == round(100 * b77["test"]["accuracy"], 2)
    assert (b77["published"], b77["target"]) == (93.36, 93.5)
    assert nlu["test"]["slot_mentions"] > 0 and 0.0 <= nlu["test"]["slot_f1"] <= 1.0
    assert nlu["test"]["slot_f1_tokenisation_ceiling"] >= 0.95  # the char-level tiny tokenizer aligns the spans
    assert set(nlu["test"]["per_label"]) == {e["name"] for e in B.load_nlupp_folds(root)[1]["entities"]}
    for r in (b77, nlu):
        assert r["epochs"] == 1 and r["inference_samples_per_s"] > 0
        assert 0 < r["train_samples_per_s"] < r["train_step_samples_per_s"]  # the steps are part of the wall time
    assert not list(home.glob(".bench-data-*"))  # the written corpora are removed at the end
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db", registry_uri=f"sqlite:///{home}/mlflow.db")
    assert client.get_run(b77["train_run_id"]).data.tags["findial.task"] == "intent"
    assert client.get_run(nlu["train_run_id"]).data.tags["findial.task"] == "ner"


@pytest.mark.slow
def test_full_train_trains_on_validation_too_and_says_so(root, tmp_path):
    results = _load_script().main(
        [
            "--datasets-dir",
            str(root),
            "--which",
            "banking77",
            "--model",
            "tiny",
            "--epochs",
            "1",
            "--max-train",
            "32",
            "--max-eval",
            "16",
            "--full-train",
            "--out",
            str(tmp_path / "r.json"),
            "--home",
            str(tmp_path / "home"),
        ]
    )
    b77 = results["benchmarks"]["banking77"]
    assert b77["examples"] == {"train": 32 + 16, "validation": 16, "test": 16}
    assert b77["validation_in_training"] is True and "--full-train" in b77["protocol"]


def test_first_turn_probe_scores_every_first_task_turn(tmp_path):
    """benchmarks/first_turn_probe.py end to end on the default backbone, a few steps: one prediction per
    probed turn, every one an intent of the label book, and the accuracy is over the task turns."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "probe.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "first_turn_probe.py"),
            "--backbone",
            "e5_small",
            "--epochs",
            "0.01",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = importlib.util.spec_from_file_location("probe", root / "benchmarks" / "first_turn_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    result = json.loads(out.read_text())
    intents = set(LabelBook.load().intents)
    for split in ("validation", "test"):
        rows = probe.first_turns(split)
        preds = result[split]["predictions"]
        assert len(preds) == len(rows) and set(preds) <= intents
        task = [(p, r[1]) for p, r in zip(preds, rows) if r[2]]
        assert result[split]["first_task_turn_accuracy"] == pytest.approx(sum(p == y for p, y in task) / len(task))
        assert f"{split}: first task turns" in proc.stdout
