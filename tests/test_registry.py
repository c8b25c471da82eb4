"""Gated promotion against a real MLflow registry on sqlite."""
import json

import pytest

from findial import registry, tracking

GATES = {"terminology_f1": 0.90, "multi_turn_accuracy": 0.85}


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracking.configure(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")

    def new_version(metrics=None, eval_set="test-set"):
        with tracking.run("findial-registry", "register") as active:
            version = registry.register_bundle(bundle, "findial-nlu", active.info.run_id)
        if metrics is not None:
            registry.record_evaluation("findial-nlu", version, eval_set, metrics, "fp123", "run-x")
        return version

    return tmp_path, new_version


def alias_version(name, alias):
    from mlflow import MlflowClient

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except Exception:
        return None


def audit(tmp_path):
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_promotion_succeeds_when_every_gate_passes(store):
    tmp, new_version = store
    v = new_version({"terminology_f1": 0.93, "multi_turn_accuracy": 0.88, "intent_accuracy": 0.9})
    d = registry.promote("findial-nlu", v, "champion", "test-set", GATES, "alice", tmp / "audit.jsonl")
    assert d.promoted and d.failures == []
    assert alias_version("findial-nlu", "champion") == v
    rec = audit(tmp)[-1]
    assert rec["promoted"] is True and rec["user"] == "alice" and rec["version"] == v
    assert rec["metrics"] == {"terminology_f1": 0.93, "multi_turn_accuracy": 0.88}
    assert rec["data_fingerprint"] == "fp123" and rec["timestamp"]


def test_refused_when_a_gate_fails_and_alias_stays(store):
    tmp, new_version = store
    good = new_version({"terminology_f1": 0.95, "multi_turn_accuracy": 0.90})
    registry.promote("findial-nlu", good, "champion", "test-set", GATES, "alice", tmp / "audit.jsonl")
    bad = new_version({"terminology_f1": 0.95, "multi_turn_accuracy": 0.84})
    d = registry.promote("findial-nlu", bad, "champion", "test-set", GATES, "bob", tmp / "audit.jsonl")
    assert not d.promoted
    assert d.failures == ["multi_turn_accuracy: 0.8400 < 0.85"]
    assert alias_version("findial-nlu", "champion") == good
    assert [r["promoted"] for r in audit(tmp)] == [True, False]
    assert "FAIL" in d.summary()


def test_refused_when_a_metric_is_missing(store):
    tmp, new_version = store
    v = new_version({"terminology_f1": 0.99})
    d = registry.promote("findial-nlu", v, "champion", "test-set", GATES, "carol", tmp / "audit.jsonl")
    assert not d.promoted and d.failures[0].startswith("multi_turn_accuracy: missing")
    assert alias_version("findial-nlu", "champion") is None


def test_refused_when_evaluated_on_another_set(store):
    tmp, new_version = store
    v = new_version({"terminology_f1": 0.99, "multi_turn_accuracy": 0.99}, eval_set="validation")
    d = registry.promote("findial-nlu", v, "champion", "test-set", GATES, "dave", tmp / "audit.jsonl")
    assert not d.promoted and len(d.failures) == 2
    assert alias_version("findial-nlu", "champion") is None


def test_gate_exactly_at_threshold_passes():
    metrics, failures = registry.check_gates({"eval.s.terminology_f1": "0.9", "eval.s.multi_turn_accuracy": "0.85"},
                                             "s", GATES)
    assert failures == [] and metrics == {"terminology_f1": 0.9, "multi_turn_accuracy": 0.85}


def test_promote_command_exits_nonzero_on_refusal(store, capsys):
    from findial.cli import main

    tmp, new_version = store
    v = new_version({"terminology_f1": 0.5, "multi_turn_accuracy": 0.99})
    with pytest.raises(SystemExit) as info:
        main(["promote", f"version={v}", "eval_set=test-set", f"paths.home={tmp}",
              f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "terminology_f1: 0.5000 < 0.9" in err
    assert audit_path_records(tmp / "audit" / "promotions.jsonl")[-1]["promoted"] is False


def audit_path_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]
