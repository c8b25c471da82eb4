"""Gated promotion against a real MLflow registry on sqlite."""

import getpass
import json

import pytest

from findial import audit as audit_log, gates, registry, tracking
from findial.policy import Policy

GATES = {"terminology_f1": 0.90, "multi_turn_accuracy": 0.85}
POLICY = Policy.of({"nlu": GATES}, {"nlu": {"test-set": "fp123"}})


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


def promote_cli(tmp, *args):
    """`findial promote` as a user runs it (a subprocess: Hydra's in-process state stays out of other tests)."""
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "findial.cli",
            "promote",
            *args,
            f"paths.home={tmp}",
            f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stderr


def audit(tmp_path):
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_promotion_succeeds_when_every_gate_passes(store):
    tmp, new_version = store
    v = new_version({"terminology_f1": 0.93, "multi_turn_accuracy": 0.88, "intent_accuracy": 0.9})
    d = registry.promote("findial-nlu", v, "champion", "test-set", tmp / "audit.jsonl", POLICY)
    assert d.promoted and d.failures == []
    assert alias_version("findial-nlu", "champion") == v
    rec = audit(tmp)[-1]
    assert rec["promoted"] is True and rec["user"] == getpass.getuser() and rec["version"] == v
    assert rec["metrics"] == {"terminology_f1": 0.93, "multi_turn_accuracy": 0.88}
    assert rec["data_fingerprint"] == "fp123" and rec["timestamp"]


def test_refused_when_a_gate_fails_and_alias_stays(store):
    tmp, new_version = store
    good = new_version({"terminology_f1": 0.95, "multi_turn_accuracy": 0.90})
    registry.promote("findial-nlu", good, "champion", "test-set", tmp / "audit.jsonl", POLICY)
    bad = new_version({"terminology_f1": 0.95, "multi_turn_accuracy": 0.84})
    d = registry.promote("findial-nlu", bad, "champion", "test-set", tmp / "audit.jsonl", POLICY)
    assert not d.promoted
    assert d.failures == ["multi_turn_accuracy: 0.8400 < 0.85"]
    assert alias_version("findial-nlu", "champion") == good
    assert [r["promoted"] for r in audit(tmp)] == [True, False]
    assert "FAIL" in d.summary()


def test_refused_when_a_metric_is_missing(store):
    tmp, new_version = store
    v = new_version({"terminology_f1": 0.99})
    d = registry.promote("findial-nlu", v, "champion", "test-set", tmp / "audit.jsonl", POLICY)
    assert not d.promoted and d.failures[0].startswith("multi_turn_accuracy: missing")
    assert alias_version("findial-nlu", "champion") is None


def test_refused_when_evaluated_on_another_set(store):
    tmp, new_version = store
    v = new_version({"terminology_f1": 0.99, "multi_turn_accuracy": 0.99}, eval_set="validation")
    d = registry.promote("findial-nlu", v, "champion", "test-set", tmp / "audit.jsonl", POLICY)
    assert not d.promoted and len(d.failures) == 3  # both metrics missing, and no evaluation on the bound data
    assert alias_version("findial-nlu", "champion") is None


def test_gate_exactly_at_threshold_passes():
    results = gates.check(GATES, {"terminology_f1": 0.9, "multi_turn_accuracy": 0.85})
    assert gates.failures(results) == [] and all(r["passed"] for r in results.values())
    assert gates.failures(gates.check(GATES, {"terminology_f1": 0.8999})) == [
        "terminology_f1: 0.8999 < 0.9",
        "multi_turn_accuracy: missing",
    ]


def test_promote_command_exits_nonzero_on_refusal(store, capsys):
    tmp, new_version = store
    v = new_version({"terminology_f1": 0.5, "multi_turn_accuracy": 0.99})
    code, err = promote_cli(tmp, f"version={v}", "eval_set=test-set")
    assert code == 1  # the reviewed policy file: its gates, and test-set is none of its eval sets
    assert "terminology_f1: 0.5000 < 0.9" in err and "'test-set' is not in the promotion policy" in err
    assert audit_path_records(tmp / "audit" / "promotions.jsonl")[-1]["promoted"] is False


def audit_path_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_user_comes_from_the_environment_not_an_argument(store, monkeypatch):
    tmp, new_version = store
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "mlflow-erin")
    v = new_version({"terminology_f1": 0.95, "multi_turn_accuracy": 0.95})
    registry.promote("findial-nlu", v, "champion", "test-set", tmp / "audit.jsonl", POLICY)
    assert audit(tmp)[-1]["user"] == "mlflow-erin"


@pytest.mark.parametrize(
    "override",
    [
        "gates.multi_turn_accuracy=0.0",
        "+gates.multi_turn_accuracy=0.0",
        "~gates.multi_turn_accuracy",
        "user=anyone",
        "+user=anyone",
    ],
)
def test_promote_refuses_gate_and_user_overrides(store, override, capsys):
    tmp, new_version = store
    v = new_version({"terminology_f1": 0.95, "multi_turn_accuracy": 0.10})
    code, _ = promote_cli(tmp, f"version={v}", "eval_set=test-set", override)
    assert code not in (0, None)
    assert alias_version("findial-nlu", "champion") is None
    assert not (tmp / "audit" / "promotions.jsonl").exists()  # refused before anything was decided


@pytest.mark.parametrize("version", ["999", "abc"])
def test_promote_names_a_missing_version_without_a_traceback(store, version, capsys):
    tmp, new_version = store
    new_version({"terminology_f1": 0.95, "multi_turn_accuracy": 0.95})
    code, err = promote_cli(tmp, f"version={version}", "eval_set=test-set")
    assert code == 2 and "Traceback" not in err
    assert (f"no version {version}" in err) if version.isdigit() else ("a model version is a number" in err)


def test_refused_when_evaluated_on_another_file_under_the_bound_name(store):
    tmp, new_version = store
    v = new_version()
    registry.record_evaluation(
        "findial-nlu", v, "test-set", {"terminology_f1": 1.0, "multi_turn_accuracy": 1.0}, "my-own-easy-file", "run-y"
    )
    d = registry.promote("findial-nlu", v, "champion", "test-set", tmp / "audit.jsonl", POLICY)
    assert not d.promoted and d.failures == [
        "eval set: eval set 'test-set' is bound to data fingerprint fp123, the evaluation recorded my-own-easy-file"
    ]


def test_a_regression_against_the_champion_beyond_the_tolerance_is_refused(store):
    tmp, new_version = store
    policy = Policy.of(
        {"nlu": {"terminology_f1": 0.90, "multi_turn_accuracy": {"minimum": 0.85, "max_regression": 0.01}}},
        POLICY.eval_sets,
    )
    champion = new_version({"terminology_f1": 0.95, "multi_turn_accuracy": 0.95})
    assert registry.promote("findial-nlu", champion, "champion", "test-set", tmp / "audit.jsonl", policy).promoted
    worse = new_version({"terminology_f1": 0.99, "multi_turn_accuracy": 0.93})  # passes the minimums
    d = registry.promote("findial-nlu", worse, "champion", "test-set", tmp / "audit.jsonl", policy)
    assert not d.promoted and d.failures == ["multi_turn_accuracy: 0.9300 < champion 0.9500 - 0.01"]
    assert alias_version("findial-nlu", "champion") == champion and "champion 0.9500" in d.summary()
    close = new_version({"terminology_f1": 0.99, "multi_turn_accuracy": 0.941})  # within the tolerance
    assert registry.promote("findial-nlu", close, "champion", "test-set", tmp / "audit.jsonl", policy).promoted
    assert audit(tmp)[-1]["previous_version"] == champion


def test_a_champion_without_a_comparable_evaluation_blocks_a_regression_gate(store):
    tmp, new_version = store
    policy = Policy.of(
        {"nlu": {"multi_turn_accuracy": {"minimum": 0.5, "max_regression": 0.0}}},
        {"nlu": {"test-set": "fp123", "other": "fp-other"}},
    )
    old = new_version()
    registry.record_evaluation("findial-nlu", old, "other", {"multi_turn_accuracy": 0.9}, "fp-other", "r")
    assert registry.promote("findial-nlu", old, "champion", "other", tmp / "audit.jsonl", policy).promoted
    new = new_version({"multi_turn_accuracy": 0.95})
    d = registry.promote("findial-nlu", new, "champion", "test-set", tmp / "audit.jsonl", policy)
    assert not d.promoted and "evaluate it first" in d.failures[0]


def test_every_promotion_is_audited_in_a_verified_chain(store):
    tmp, new_version = store
    for metrics in ({"terminology_f1": 0.95, "multi_turn_accuracy": 0.95}, {"terminology_f1": 0.5}):
        registry.promote("findial-nlu", new_version(metrics), "champion", "test-set", tmp / "audit.jsonl", POLICY)
    assert audit_log.verify(tmp / "audit.jsonl", registry.audit_heads()) == []
    lines = (tmp / "audit.jsonl").read_text().splitlines()
    (tmp / "audit.jsonl").write_text(lines[0] + "\n")  # the refusal removed from the end
    assert "removed from the end" in audit_log.verify(tmp / "audit.jsonl", registry.audit_heads())[0]


def _promote_in_process(args):
    home, version = args
    tracking.configure(f"sqlite:///{home}/mlflow.db", f"{home}/artifacts")
    return registry.promote("findial-nlu", version, "champion", "test-set", f"{home}/audit.jsonl", POLICY).promoted


def test_six_concurrent_promotions_leave_six_chained_records(store):
    import multiprocessing

    tmp, new_version = store
    versions = [new_version({"terminology_f1": 0.95, "multi_turn_accuracy": 0.95}) for _ in range(6)]
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        pool.map(_promote_in_process, [(str(tmp), v) for v in versions])
    recs = audit(tmp)
    assert sorted(r["version"] for r in recs) == sorted(versions)
    assert audit_log.verify(tmp / "audit.jsonl", registry.audit_heads()) == []


def test_a_maximum_gate_bounds_a_lower_is_better_metric():
    latency = gates.Gate("p95_ms", maximum=150.0, max_regression=10.0)
    results = gates.check({"p95_ms": latency}, {"p95_ms": 140.0}, champion={"p95_ms": 120.0})
    assert results["p95_ms"]["passed"] is False and results["p95_ms"]["bound"] == "<= 150.0"
    assert gates.failures(results) == ["p95_ms: 140.0000 > champion 120.0000 + 10.0"]
    assert gates.check({"p95_ms": latency}, {"p95_ms": 129.0}, champion={"p95_ms": 120.0})["p95_ms"]["passed"]
    assert gates.failures(gates.check({"p95_ms": latency}, {"p95_ms": 151.0})) == ["p95_ms: 151.0000 > 150.0"]
    with pytest.raises(ValueError, match="exactly one of minimum and maximum"):
        gates.Gate("x", minimum=1.0, maximum=2.0)
    policy = Policy.of({"nlu": {"p95_ms": {"maximum": 150}}})
    assert policy.gates_for("nlu")["p95_ms"] == gates.Gate("p95_ms", maximum=150.0)
