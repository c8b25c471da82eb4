"""MLflow Model Registry: register models, record evaluations, gated promotion with an audit trail.

Two kinds of model go through the registry the same way: an NLU bundle (``bundle.json``: intent +
NER packages, ``findial-nlu``) and a response-generation package (``findial_model.json`` of task
``response``, ``findial-response``). Evaluation results are stored as model-version tags
``eval.<eval_set>.<metric>``; promotion reads them, so a version that was never evaluated on the
named set has no metrics and cannot be promoted. A version tagged ``findial.task=response`` is
gated by ``configs/gates/response.yaml`` unless the gates given name response metrics.
"""
from __future__ import annotations

import datetime as dt
import importlib.resources
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from findial import tracking

BUNDLE_ARTIFACT = "model"
DESCRIPTIONS = {"nlu": "findial NLU bundle: intent (+emotion) and NER models",
                "response": "findial response model: LoRA adapters of a causal LM that write the agent's reply"}
RESPONSE_GATES = Path(str(importlib.resources.files("findial.configs") / "gates" / "response.yaml"))
RESPONSE_METRICS = ("bleu", "chrf", "rouge_l", "term_recall", "term_grounding", "pii_clean_rate",
                    "compliance_clean_rate")


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def make_bundle(intent_package: str | Path, ner_package: str | Path, target: str | Path, info: dict,
                members: dict[str, str | Path] | None = None) -> Path:
    """An NLU bundle: both task packages and the label book, as one directory (written atomically).
    ``members`` (name -> intent or NER package) go into the package of their task as its ensemble
    members (``intent/members/<name>``, ``ner/members/<name>``, listed in its meta; see
    ``IntentPredictor``, ``EntityPredictor``)."""
    from findial.training.package import check_member, read_meta

    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(intent_package, tmp / "intent")
        shutil.copytree(ner_package, tmp / "ner")
        added: dict[str, list[str]] = {}
        for name, path in (members or {}).items():
            member = read_meta(path)
            task = member.get("task")
            main = tmp / ("ner" if task == "ner" else "intent")  # check_member names a wrong task
            check_member(name, member, read_meta(main), path)
            shutil.copytree(path, main / "members" / name)
            added.setdefault(task, []).append(name)
        for task, names in added.items():
            meta_file = tmp / task / "findial_model.json"
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            meta["members"] = names
            meta_file.write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
        for name in ("ontology.yaml", "glossary.yaml"):
            shutil.copyfile(Path(intent_package) / name, tmp / name)
        tracking.atomic_write_text(tmp / "bundle.json", json.dumps(info, indent=2, ensure_ascii=False))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def model_kind(path: str | Path) -> str | None:
    """``"nlu"`` for an NLU bundle, ``"response"`` for a response package, None for anything else."""
    path = Path(path)
    if (path / "bundle.json").is_file():
        return "nlu"
    meta = path / "findial_model.json"
    if meta.is_file() and json.loads(meta.read_text(encoding="utf-8")).get("task") == "response":
        return "response"
    return None


def register_bundle(bundle: str | Path, name: str, run_id: str, tags: dict[str, str] | None = None) -> str:
    """Log a model directory (an NLU bundle or a response package) as artifacts of ``run_id`` and
    register it as a new version of ``name``; returns the version."""
    import mlflow

    client = _client()
    client.log_artifacts(run_id, str(bundle), BUNDLE_ARTIFACT)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description=DESCRIPTIONS.get(model_kind(bundle), "findial model"))
    run = client.get_run(run_id)
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/{BUNDLE_ARTIFACT}", run_id=run_id,
                                     tags=tags or {})
    return str(mv.version)


def register(path: str | Path, name: str, tags: dict[str, str], info: dict | None = None) -> str:
    """Register ``path`` from a run of the ``findial-registry`` experiment carrying ``tags`` (and ``info``
    as ``bundle_info.json``); returns the new version."""
    with tracking.run("findial-registry", f"register-{name}", tags=tags) as active:
        if info is not None:
            tracking.log_json(info, "bundle_info.json")
        return register_bundle(path, name, active.info.run_id, tags=tags)


def resolve_model(ref: str, download_dir: str | Path, expect: str | None = None
                  ) -> tuple[Path, tuple[str, str] | None]:
    """A model directory, or models:/NAME/VERSION or models:/NAME@ALIAS -> (local directory, (name, version)).

    A directory must be an NLU bundle (``bundle.json``) or a response package (``findial_model.json``).
    ``expect`` ("nlu" or "response"): refuse another kind of model (a registered version's kind is its
    ``findial.task`` tag, checked before anything is downloaded)."""
    if not ref.startswith("models:/"):
        path = Path(ref)
        kind = model_kind(path)
        if kind is None:
            raise FileNotFoundError(f"model={ref}: neither a findial NLU bundle (no bundle.json) nor a response "
                                    "package (no findial_model.json of task response)")
        _expect(ref, kind, expect)
        return path, None
    spec = ref[len("models:/"):]
    client = _client()
    if "@" in spec:
        name, alias = spec.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    else:
        name, version = spec.rsplit("/", 1)
        mv = client.get_model_version(name, version)
    _expect(ref, "response" if mv.tags.get("findial.task") == "response" else "nlu", expect)
    import mlflow

    local = mlflow.artifacts.download_artifacts(mv.source, dst_path=str(download_dir))
    return Path(local), (name, str(mv.version))


class WrongModelKind(ValueError):
    """``resolve_model(..., expect=KIND)`` was given another kind of model."""


def _expect(ref: str, kind: str, expect: str | None) -> None:
    if expect is not None and kind != expect:
        names = {"nlu": "an NLU bundle", "response": "a response model"}
        raise WrongModelKind(f"model={ref}: {names[kind]}, not {names.get(expect, expect)}")


def record_evaluation(name: str, version: str, eval_set: str, metrics: dict, data_fingerprint: str,
                      run_id: str) -> None:
    client = _client()
    client.set_model_version_tag(name, version, f"eval.{eval_set}.data_fingerprint", data_fingerprint)
    client.set_model_version_tag(name, version, f"eval.{eval_set}.run_id", run_id)
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            client.set_model_version_tag(name, version, f"eval.{eval_set}.{k}", repr(float(v)))


@dataclass
class Decision:
    model_name: str
    version: str
    alias: str
    eval_set: str
    promoted: bool
    user: str
    timestamp: str
    gates: dict
    metrics: dict
    failures: list = field(default_factory=list)
    data_fingerprint: str | None = None
    eval_run_id: str | None = None
    previous_version: str | None = None

    def summary(self) -> str:
        head = (f"PROMOTED {self.model_name} v{self.version} -> @{self.alias}" if self.promoted
                else f"REFUSED {self.model_name} v{self.version} -> @{self.alias}")
        lines = [head + f" (eval set {self.eval_set})"]
        for metric, minimum in self.gates.items():
            value = self.metrics.get(metric)
            state = "missing" if value is None else ("pass" if value >= minimum else "FAIL")
            lines.append(f"  {metric:<24} {'-' if value is None else f'{value:.4f}':>8}  >= {minimum:<6} {state}")
        return "\n".join(lines)


def load_gates(path: str | Path = RESPONSE_GATES) -> dict[str, float]:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return {k: float(v) for k, v in raw.items()}


def gates_for(task: str | None, gates: dict[str, float]) -> dict[str, float]:
    """The gates that apply to a model of ``task``: the NLU gates (``gates=default``) mean nothing to a
    response model, so unless ``gates`` names a response metric, configs/gates/response.yaml applies."""
    if task == "response" and not set(gates) & set(RESPONSE_METRICS):
        return load_gates()
    return dict(gates)


def check_gates(tags: dict[str, str], eval_set: str, gates: dict[str, float]) -> tuple[dict, list[str]]:
    metrics, failures = {}, []
    for metric, minimum in gates.items():
        raw = tags.get(f"eval.{eval_set}.{metric}")
        if raw is None:
            failures.append(f"{metric}: missing (no evaluation of this version on {eval_set!r} reported it)")
            continue
        value = float(raw)
        metrics[metric] = value
        if not value >= minimum:
            failures.append(f"{metric}: {value:.4f} < {minimum}")
    return metrics, failures


def promote(name: str, version: str, alias: str, eval_set: str, gates: dict[str, float], user: str,
            audit_log: str | Path) -> Decision:
    """Move ``alias`` to ``version`` only if every gate metric is present and passes. Always audited.

    A response model (tag ``findial.task=response``) is held to ``gates_for("response", gates)``."""
    client = _client()
    mv = client.get_model_version(name, str(version))
    gates = gates_for(mv.tags.get("findial.task"), gates)
    metrics, failures = check_gates(mv.tags, eval_set, gates)
    try:
        previous = str(client.get_model_version_by_alias(name, alias).version)
    except Exception:  # no such alias yet
        previous = None
    decision = Decision(
        model_name=name, version=str(version), alias=alias, eval_set=eval_set, promoted=not failures,
        user=user, timestamp=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        gates=dict(gates), metrics=metrics, failures=failures,
        data_fingerprint=mv.tags.get(f"eval.{eval_set}.data_fingerprint"),
        eval_run_id=mv.tags.get(f"eval.{eval_set}.run_id"), previous_version=previous)
    _audit(decision, audit_log)  # the record exists before the alias moves
    if decision.promoted:
        client.set_registered_model_alias(name, alias, str(version))
        client.set_model_version_tag(name, str(version), f"promotion.{alias}", decision.timestamp)
    return decision


def _audit(decision: Decision, audit_log: str | Path) -> None:
    record = asdict(decision)
    path = Path(audit_log)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    tracking.atomic_write_text(path, old + json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    with tracking.run("findial-promotions", f"promote-{decision.model_name}-v{decision.version}",
                      tags={"findial.promoted": str(decision.promoted), "findial.model": decision.model_name,
                            "findial.version": decision.version, "findial.user": decision.user}):
        tracking.log_json(record, "audit.json")
        tracking.log_metrics(decision.metrics)
