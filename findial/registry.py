"""MLflow Model Registry: register models, record evaluations, gated promotion with an audit trail.

Two kinds of model go through the registry the same way: an NLU bundle (``bundle.json``: intent +
NER packages, ``findial-nlu``) and a response-generation package (``findial_model.json`` of task
``response``, ``findial-response``). Evaluation results are stored as model-version tags
``eval.<eval_set>.<metric>``; promotion reads them, so a version that was never evaluated on the
named set has no metrics and cannot be promoted. The gates, and the data fingerprint each evaluation set
must have been scored with, come from the promotion policy (``configs/policy.yaml``, ``findial.policy``)
of the version's kind (tag ``findial.task=response``: a response model, else NLU).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from findial import audit, branch_gates, gates, tracking
from findial.policy import Policy, load as load_policy, promoter

BUNDLE_ARTIFACT = "model"
DESCRIPTIONS = {
    "nlu": "findial NLU bundle: intent (+emotion) and NER models",
    "response": "findial response model: LoRA adapters of a causal LM that write the agent's reply",
}


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def make_bundle(
    intent_package: str | Path,
    ner_package: str | Path,
    target: str | Path,
    info: dict,
    members: dict[str, str | Path] | None = None,
) -> Path:
    """An NLU bundle: both task packages and the label book, as one directory (written atomically).
    ``members`` (name -> intent or NER package) go into the package of their task as its ensemble
    members (``intent/members/<name>``, ``ner/members/<name>``, listed in its meta; see
    ``IntentPredictor``, ``EntityPredictor``)."""
    from findial.training.package import check_member, read_meta

    with tracking.atomic_directory(target) as tmp:
        shutil.copytree(intent_package, tmp / "intent")
        shutil.copytree(ner_package, tmp / "ner")
        added: dict[str, list[str]] = {}
        for name, path in (members or {}).items():
            member = read_meta(path)
            task = member.get("task")
            main = tmp / ("ner" if task == "ner" else "intent")  # check_member names a wrong task
            check_member(name, member, read_meta(main), path)
            assert isinstance(task, str)  # check_member refuses a member without the main package's task
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
    return Path(target)


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
        client.create_registered_model(name, description=DESCRIPTIONS.get(model_kind(bundle) or "", "findial model"))
    run = client.get_run(run_id)
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/{BUNDLE_ARTIFACT}", run_id=run_id, tags=tags or {})
    return str(mv.version)


def register(path: str | Path, name: str, tags: dict[str, str], info: dict | None = None) -> str:
    """Register ``path`` from a run of the ``findial-registry`` experiment carrying ``tags`` (and ``info``
    as ``bundle_info.json``); returns the new version."""
    with tracking.run("findial-registry", f"register-{name}", tags=tags) as active:
        if info is not None:
            tracking.log_json(info, "bundle_info.json")
        return register_bundle(path, name, active.info.run_id, tags=tags)


def resolve_model(ref: str, download_dir: str | Path, expect: str | None = None) -> tuple[Path, tuple[str, str] | None]:
    """A model directory, or models:/NAME/VERSION or models:/NAME@ALIAS -> (local directory, (name, version)).

    A directory must be an NLU bundle (``bundle.json``) or a response package (``findial_model.json``).
    ``expect`` ("nlu" or "response"): refuse another kind of model (a registered version's kind is its
    ``findial.task`` tag, checked before anything is downloaded)."""
    if not ref.startswith("models:/"):
        path = Path(ref)
        kind = model_kind(path)
        if kind is None:
            raise FileNotFoundError(
                f"model={ref}: neither a findial NLU bundle (no bundle.json) nor a response "
                "package (no findial_model.json of task response)"
            )
        _expect(ref, kind, expect)
        return path, None
    spec = ref[len("models:/") :]
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


def record_evaluation(
    name: str, version: str, eval_set: str, metrics: dict, data_fingerprint: str, run_id: str
) -> None:
    client = _client()
    client.set_model_version_tag(name, version, f"eval.{eval_set}.data_fingerprint", data_fingerprint)
    client.set_model_version_tag(name, version, f"eval.{eval_set}.run_id", run_id)
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            client.set_model_version_tag(name, version, f"eval.{eval_set}.{k}", repr(float(v)))


class PromotionError(ValueError):
    """A promotion that cannot even be decided (no such version): nothing is audited."""


def kind_of(tags: dict[str, str]) -> str:
    return "response" if tags.get("findial.task") == "response" else "nlu"


def eval_metrics(tags: dict[str, str], eval_set: str) -> dict[str, float]:
    prefix = f"eval.{eval_set}."
    out = {}
    for k, v in tags.items():
        if k.startswith(prefix) and k[len(prefix) :] not in ("data_fingerprint", "run_id"):
            try:
                out[k[len(prefix) :]] = float(v)
            except ValueError:
                continue
    return out


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
    results: dict = field(default_factory=dict)  # gates.check: per gate value, bound, passed, reason

    def summary(self) -> str:
        head = (
            f"PROMOTED {self.model_name} v{self.version} -> @{self.alias}"
            if self.promoted
            else f"REFUSED {self.model_name} v{self.version} -> @{self.alias}"
        )
        lines = [head + f" (eval set {self.eval_set})"]
        for metric, r in self.results.items():
            value, state = r["value"], "pass" if r["passed"] else ("missing" if r["value"] is None else "FAIL")
            vs = f"  (champion {r['champion']:.4f}, max regression {r['max_regression']})" if "champion" in r else ""
            lines.append(f"  {metric:<24} {'-' if value is None else f'{value:.4f}':>8}  {r['bound']:<9} {state}{vs}")
        lines += [f"  {f}" for f in self.failures if f.split(":")[0] not in self.results]
        return "\n".join(lines)


def _version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    if not str(version).isdigit():
        raise PromotionError(
            f"version={version!r}: a model version is a number (findial-nlu versions: "
            f"the registry's Models page, or `findial compare`)"
        )
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise PromotionError(f"{name} has no version {version}") from None


def _champion(client, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:  # no such alias (or model) yet
        return None


def decide(
    name: str,
    version: str,
    alias: str,
    eval_set: str,
    policy: Policy | None = None,
    compare_alias: str | None = None,
) -> Decision:
    """Whether ``version`` may take ``alias``: its evaluation on ``eval_set`` is one the policy binds (same data
    fingerprint) and passes every gate of its kind, including the no-regression tolerance against the version
    ``compare_alias`` (default: ``alias``) names now. Nothing is changed or audited: ``promote`` and the release
    steps (``findial release``) do that."""
    policy = policy or load_policy()
    client = _client()
    mv = _version(client, name, str(version))
    kind = kind_of(mv.tags)
    kind_gates = policy.gates_for(kind)
    metrics = {m: v for m, v in eval_metrics(mv.tags, eval_set).items() if m in kind_gates}
    fp = mv.tags.get(f"eval.{eval_set}.data_fingerprint")
    failures = [f"eval set: {p}"] if (p := policy.eval_set_problem(kind, eval_set, fp)) else []
    compare_alias = compare_alias or alias
    champion = _champion(client, name, compare_alias)
    current = champion if compare_alias == alias else _champion(client, name, alias)
    champion_metrics = None
    if champion is not None and str(champion.version) != str(version):
        if champion.tags.get(f"eval.{eval_set}.data_fingerprint") == fp:
            champion_metrics = eval_metrics(champion.tags, eval_set)
        elif any(g.max_regression is not None for g in kind_gates.values()):
            failures.append(
                f"{compare_alias}: v{champion.version} has no evaluation on {eval_set!r} with data fingerprint "
                f"{fp} to compare with; evaluate it first: findial eval "
                f"model_ref=models:/{name}@{compare_alias} eval_set={eval_set} data_file=..."
            )
    results = gates.check(kind_gates, metrics, champion_metrics)
    failures = gates.failures(results) + failures
    other = champion if champion is not None and str(champion.version) != str(version) else None
    failures += branch_gates.failures(  # a federated version: every branch on its own validation data
        branch_gates.check(policy.branch_gates.get(kind, {}), mv.tags, other.tags if other is not None else None)
    )
    return Decision(
        model_name=name,
        version=str(version),
        alias=alias,
        eval_set=eval_set,
        promoted=not failures,
        user=promoter(),
        timestamp=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        gates={m: {"bound": g.bound, "max_regression": g.max_regression} for m, g in kind_gates.items()},
        metrics=metrics,
        failures=failures,
        data_fingerprint=fp,
        eval_run_id=mv.tags.get(f"eval.{eval_set}.run_id"),
        previous_version=None if current is None else str(current.version),
        results=results,
    )


def promote(
    name: str, version: str, alias: str, eval_set: str, audit_log: str | Path, policy: Policy | None = None
) -> Decision:
    """Move ``alias`` to ``version`` only if ``decide`` lets it. Always audited; the promoter is
    ``policy.promoter()``."""
    with audit.step_lock(audit_log):  # concurrent promotions decide on the alias one at a time
        decision = decide(name, version, alias, eval_set, policy)
        _audit(decision, audit_log)  # the record exists before the alias moves
        if decision.promoted:
            move_alias(decision)
    return decision


def move_alias(decision: Decision) -> None:
    """Point ``decision.alias`` at its version (after the record is written), tagging the version."""
    client = _client()
    client.set_registered_model_alias(decision.model_name, decision.alias, decision.version)
    client.set_model_version_tag(
        decision.model_name, decision.version, f"promotion.{decision.alias}", decision.timestamp
    )


def _audit(decision: Decision, audit_log: str | Path) -> dict:
    return audit_step(asdict(decision), audit_log, f"promote-{decision.model_name}-v{decision.version}")


def audit_step(record: dict, audit_log: str | Path, run_name: str) -> dict:
    """Append a registry step's record (a promotion, a release step: ``model_name``, ``version``, ``promoted``,
    ``user``, ...) to the audit chain, point the model's head tag at it, and log it to the
    ``findial-promotions`` MLflow experiment; returns the chained record."""
    name = record["model_name"]
    chained = audit.append(
        audit_log, record, then=lambda r: _client().set_registered_model_tag(name, audit.HEAD_TAG, r["hash"])
    )
    with tracking.run(
        "findial-promotions",
        run_name,
        tags={
            "findial.promoted": str(record.get("promoted")),
            "findial.model": name,
            "findial.version": str(record.get("version")),
            "findial.user": str(record.get("user")),
            **({"findial.action": record["action"]} if record.get("action") else {}),
        },
    ):
        tracking.log_json(chained, "audit.json")
        tracking.log_metrics(record.get("metrics") or {})
    return chained


def audit_heads() -> dict[str, str]:
    """Registered model name -> the hash of its last audited promotion, as the registry holds it."""
    return {
        m.name: m.tags[audit.HEAD_TAG]
        for m in _client().search_registered_models(max_results=1000)
        if m.tags.get(audit.HEAD_TAG)
    }
