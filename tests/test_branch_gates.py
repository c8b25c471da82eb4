"""Per-branch gates of federated versions (findial.branch_gates, policy branch_gates): promotion in a real sqlite
registry refuses a version that one branch's own validation figures fail, or that regressed on one branch
against the champion, even when the central gates pass."""

import pytest

from findial import branch_gates, policy, registry, tracking
from findial.federated.publish import version_tags

FP = "fp-test"
POLICY = policy.Policy.of(
    {"nlu": {"terminology_f1": 0.5}},
    {"nlu": {"bundled-test": FP}},
    branch_gates={"nlu": {"multi_turn_accuracy": {"minimum": 0.6, "max_regression": 0.05}}},
)


@pytest.fixture()
def home(tmp_path):
    tracking.configure(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "mlartifacts")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    return tmp_path, bundle


def federated_version(bundle, per_branch: dict[str, float], branches=("a", "b")) -> str:
    tags = {"findial.federated": "true", "findial.federated.branches": ",".join(branches)}
    tags |= branch_gates.branch_tags({b: {"multi_turn_accuracy": v, "n_turns": 10} for b, v in per_branch.items()})
    version = registry.register(bundle, "findial-nlu", tags)
    registry.record_evaluation("findial-nlu", version, "bundled-test", {"terminology_f1": 0.9}, FP, "run")
    return version


def promote(home, version):
    return registry.promote("findial-nlu", version, "champion", "bundled-test", home / "audit.jsonl", POLICY)


def test_a_branch_below_its_gate_or_missing_blocks_the_promotion(home):
    home, bundle = home
    low = promote(home, federated_version(bundle, {"a": 0.9, "b": 0.5}))
    assert not low.promoted and low.failures == ["branch b: multi_turn_accuracy: 0.5000 < 0.6"]
    missing = promote(home, federated_version(bundle, {"a": 0.9}))
    assert not missing.promoted and missing.failures == ["branch b: multi_turn_accuracy: missing"]


def test_regression_on_one_branch_against_the_champion_is_refused(home):
    home, bundle = home
    assert promote(home, federated_version(bundle, {"a": 0.9, "b": 0.8})).promoted
    worse = promote(home, federated_version(bundle, {"a": 0.95, "b": 0.7}))  # b: 0.7 < 0.8 - 0.05
    assert not worse.promoted and worse.failures == ["branch b: multi_turn_accuracy: 0.7000 < champion 0.8000 - 0.05"]
    assert promote(home, federated_version(bundle, {"a": 0.88, "b": 0.78})).promoted  # within the tolerance


def test_central_versions_have_no_branch_gates(home):
    home, bundle = home
    version = registry.register(bundle, "findial-nlu", {})
    registry.record_evaluation("findial-nlu", version, "bundled-test", {"terminology_f1": 0.9}, FP, "run")
    assert promote(home, version).promoted


def test_publish_tags_carry_the_branches_last_evaluation():
    from omegaconf import OmegaConf

    summary = {
        "rounds": 2, "rounds_applied": 2, "branches": ["a", "b"], "participating_branches": ["a", "b"],
        "strategy": "fedavg", "mlflow_run_id": "r", "privacy": {"mode": "none"},
        "branch_eval": {"a": {"multi_turn_accuracy": 0.7}, "b": {"multi_turn_accuracy": 0.4}},
    }  # fmt: skip
    tags = version_tags(OmegaConf.create({"model": {"name": "tiny"}}), summary)
    assert branch_gates.branch_metrics(tags) == {"a": {"multi_turn_accuracy": 0.7}, "b": {"multi_turn_accuracy": 0.4}}


def test_bad_branch_gates_in_the_policy_file_name_the_key(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("nlu:\n  gates: {f1: 0.9}\n  branch_gates:\n    f1: {min: 0.9}\n")
    with pytest.raises(policy.PolicyError, match="nlu.branch_gates.f1"):
        policy.load(path)
    assert policy.load().branch_gates["nlu"]["multi_turn_accuracy"].minimum == 0.85  # the shipped policy
