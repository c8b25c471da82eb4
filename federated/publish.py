"""The federated model as a registered NLU bundle: same packages, same registry, same gates as central training.

The version's tags record how it was made, so ``findial promote`` and a reviewer can see it:

    findial.federated                     true
    findial.federated.rounds              rounds configured / rounds_applied: updates applied
    findial.federated.branches            the configured branches; .participants: those that ever took part
    findial.federated.strategy            fedavg | fedprox | fedadam
    findial.privacy.mode                  none | central | local
    findial.privacy.epsilon / .delta      the (epsilon, delta) spent (absent with mode none)
    findial.privacy.noise_multiplier / .clipping_norm / .accounting
    branch.<branch>.<metric>              each branch's last-round evaluation on its own validation data
"""

from __future__ import annotations

from pathlib import Path

from findial import registry
from findial.branch_gates import branch_tags

from .local import save_packages
from .models import TaskModels


def version_tags(cfg, summary: dict) -> dict[str, str]:
    privacy = summary["privacy"]
    tags = {
        "findial.federated": "true",
        "findial.backbone": str(cfg.model.name),
        "findial.federated.rounds": str(summary["rounds"]),
        "findial.federated.rounds_applied": str(summary["rounds_applied"]),
        "findial.federated.branches": ",".join(summary["branches"]),
        "findial.federated.participants": ",".join(summary["participating_branches"]),
        "findial.federated.strategy": summary["strategy"],
        "findial.federated.run_id": summary["mlflow_run_id"],
        "findial.privacy.mode": privacy["mode"],
    }
    tags.update(branch_tags(summary.get("branch_eval") or {}))  # the per-branch gates' basis (findial.branch_gates)
    if privacy["mode"] != "none":
        tags.update(
            {
                "findial.privacy.epsilon": repr(float(privacy["epsilon"])),
                "findial.privacy.delta": repr(float(privacy["delta"])),
                "findial.privacy.noise_multiplier": repr(float(privacy["noise_multiplier"])),
                "findial.privacy.clipping_norm": repr(float(privacy["clipping_norm"])),
                "findial.privacy.accounting": privacy["accounting"],
            }
        )
    return tags


def publish(models: TaskModels, cfg, out_dir: str | Path, summary: dict, run_id: str) -> tuple[Path, str | None]:
    """Save intent + NER packages, bundle them, and (``registry.register``) register the bundle."""
    out_dir = Path(out_dir)
    fed_meta = {"federated": {k: summary[k] for k in ("rounds", "rounds_applied", "branches", "strategy", "privacy")}}
    packages = save_packages(models, cfg, out_dir / "packages", extra_meta=fed_meta)
    info = {
        "federated": True,
        "backbone": str(cfg.model.name),
        **fed_meta["federated"],
        "participating_branches": summary["participating_branches"],
        "federated_run_id": run_id,
    }
    bundle = registry.make_bundle(packages["intent"], packages["ner"], out_dir / "bundle", info)
    if not cfg.registry.get("register", True):
        return bundle, None
    version = registry.register_bundle(bundle, str(cfg.registry.model_name), run_id, tags=version_tags(cfg, summary))
    return bundle, version
