"""The response model goes through the registry like the NLU bundle: `findial train task=response`
registers it, `findial eval task=response model_ref=...` records its metrics on the version and
`findial promote model_name=findial-response` gates it with the policy's response gates (configs/policy.yaml)."""

import json
import sys
from pathlib import Path

import pytest

from findial import registry, tracking
from findial.policy import Policy, load as load_policy

MINI = Path(__file__).parent / "fixtures" / "mini.jsonl"
NAME = "findial-response"
# low enough for a tiny random model; the PII gate stays at 1.0: the Responder masks every reply
LOW_GATES = {"pii_clean_rate": 1.0, "compliance_clean_rate": 0.0, "term_grounding": 0.0, "chrf": 0.0}


def low_policy(home: Path) -> Policy:
    """Gates a tiny random model passes, on the mini set as its evaluation recorded it (library API only:
    the command line always uses configs/policy.yaml)."""
    fp = mlflow_client(home).get_model_version(NAME, "1").tags["eval.mini.data_fingerprint"]
    return Policy.of({"response": LOW_GATES}, {"response": {"mini": fp}})


def mlflow_client(home: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def findial(monkeypatch, home: Path, *args: str) -> int:
    """The `findial` command in process; returns its exit status (a message: SystemExit's)."""
    from findial.cli import main

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setenv("FINDIAL_HYDRA_COMMAND", "")
    try:
        main([*args, f"paths.home={home}"])
    except SystemExit as exc:
        if isinstance(exc.code, str):
            raise
        return exc.code or 0
    return 0


def audit(home: Path) -> list[dict]:
    return [json.loads(x) for x in (home / "audit" / "promotions.jsonl").read_text().splitlines()]


def alias_version(home: Path, alias: str = "champion") -> str | None:
    try:
        return str(mlflow_client(home).get_model_version_by_alias(NAME, alias).version)
    except Exception:
        return None


def test_train_registers_the_package(response_model, tmp_path):
    home, package, stdout = response_model
    assert f"registered {NAME} v1" in stdout
    client = mlflow_client(home)
    mv = client.get_model_version(NAME, "1")
    meta = json.loads((package / "findial_model.json").read_text())
    assert mv.tags["findial.task"] == "response" and mv.tags["findial.backbone"] == "tiny_lm"
    assert mv.tags["findial.data_fingerprint"] == meta["data_fingerprint"]
    assert "response model" in client.get_registered_model(NAME).description
    tracking.configure(f"sqlite:///{home}/mlflow.db", home / "mlartifacts")
    local, ident = registry.resolve_model(f"models:/{NAME}/1", tmp_path / "dl", expect="response")
    assert ident == (NAME, "1") and registry.model_kind(local) == "response"
    assert registry.resolve_model(str(package), tmp_path) == (package, None)
    with pytest.raises(ValueError, match="a response model, not an NLU bundle"):
        registry.resolve_model(f"models:/{NAME}/1", tmp_path / "dl2", expect="nlu")
    with pytest.raises(FileNotFoundError, match="NLU bundle .* response package"):
        registry.resolve_model(str(tmp_path), tmp_path)


def test_eval_records_metrics_and_promotion_uses_the_response_gates(response_model, monkeypatch):
    home, package, _ = response_model
    assert (
        findial(
            monkeypatch,
            home,
            "eval",
            "task=response",
            f"model_ref=models:/{NAME}/1",
            f"data_file={MINI}",
            "eval_set=mini",
            "device=cpu",
        )
        == 0
    )
    tags = mlflow_client(home).get_model_version(NAME, "1").tags
    for metric in ("chrf", "term_grounding", "pii_clean_rate", "compliance_clean_rate"):
        float(tags[f"eval.mini.{metric}"])  # the LM path's metrics are recorded on the version
    assert tags["eval.mini.run_id"] and tags["eval.mini.data_fingerprint"]
    # a package directory is still scored, and outside the registry nothing is recorded
    assert (
        findial(
            monkeypatch,
            home,
            "eval",
            "task=response",
            f"package={package}",
            f"data_file={MINI}",
            "eval_set=dir",
            "device=cpu",
        )
        == 0
    )
    assert not any(k.startswith("eval.dir.") for k in mlflow_client(home).get_model_version(NAME, "1").tags)
    # the NLU gates mean nothing to a response model: the policy's response gates apply (and mini is no policy set)
    assert findial(monkeypatch, home, "promote", f"model_name={NAME}", "version=1", "eval_set=mini") == 1
    record = audit(home)[-1]
    assert set(record["gates"]) == set(load_policy().gates_for("response")) and record["promoted"] is False
    tracking.configure(f"sqlite:///{home}/mlflow.db", home / "mlartifacts")
    decision = registry.promote(NAME, "1", "champion", "mini", home / "audit" / "promotions.jsonl", low_policy(home))
    assert decision.promoted and audit(home)[-1]["promoted"] is True and alias_version(home) == "1"


def test_an_unevaluated_version_is_refused(response_model, monkeypatch, capsys):
    home, package, _ = response_model
    tracking.configure(f"sqlite:///{home}/mlflow.db", home / "mlartifacts")
    version = registry.register(package, NAME, {"findial.task": "response", "findial.backbone": "tiny_lm"})
    before = alias_version(home)
    decision = registry.promote(
        NAME, version, "champion", "mini", home / "audit" / "promotions.jsonl", low_policy(home)
    )
    assert not decision.promoted and "chrf: missing" in decision.failures
    record = audit(home)[-1]
    assert record["promoted"] is False and record["version"] == version and record["metrics"] == {}
    assert alias_version(home) == before != version


def test_eval_of_a_response_model_refuses_an_nlu_bundle(tmp_path, monkeypatch):
    bundle = tmp_path / "nlu-bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    with pytest.raises(SystemExit, match="an NLU bundle, not a response model; name a response model with"):
        findial(monkeypatch, tmp_path, "eval", "task=response", f"model_ref={bundle}", f"data_file={MINI}")
