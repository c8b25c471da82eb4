"""The server side: a Flower ServerApp that aggregates branch adapters, evaluates, logs and publishes.

Each round is logged to MLflow (experiment ``<prefix>federated``): the aggregated training metrics, the
federated evaluation (support-weighted over branches) and each branch's own, the server's global
evaluation on ``data.test_file``, bytes sent and received, participating and failed branches, and the
privacy budget spent. At the end the intent and NER packages are saved, bundled and registered like
``findial run`` does, with the federation recorded as model-version tags (see ``publish.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from findial import tracking

from . import checkpoints
from .config import resolver
from .local import score_dialogues
from .models import build_task_models, exchange_sizes, load_record, to_record, warm_start
from .privacy import PrivacyPlan
from .publish import publish
from .rounds import FederationError, RoundReport, run_rounds
from .strategies import build_strategy

log = logging.getLogger(__name__)


def _out_dir(cfg) -> Path:
    if cfg.get("out_dir"):
        return Path(cfg.out_dir)
    return Path(cfg.paths.home) / "federated" / dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")


def _log_round(report: RoundReport) -> None:
    step = report.round
    tracking.log_metrics(
        {
            "seconds": report.seconds,
            "bytes_sent": report.bytes_sent,
            "bytes_received": report.bytes_received,
            "branches_asked": report.asked,
            "branches_participating": len(report.participants),
            "branches_failed": len(report.failed),
            "update_applied": float(report.applied),
        },
        prefix="round.",
        step=step,
    )
    tracking.log_metrics(report.train, prefix="train.", step=step)
    tracking.log_metrics(report.federated_eval, prefix="fed_eval.", step=step)
    tracking.log_metrics(report.global_eval, prefix="global.", step=step)
    for branch, metrics in report.branch_eval.items():
        tracking.log_metrics(metrics, prefix=f"branch.{branch}.", step=step)
    if report.epsilon is not None:
        tracking.log_metrics({"privacy.epsilon": report.epsilon}, step=step)
    tracking.log_json(report.as_dict(), f"rounds/round-{step:03d}.json")


def serve(grid: Grid, cfg) -> dict:
    """Run the whole federation on ``grid``; returns the summary (also written as ``federation.json``)."""
    from findial.data.corpus import load_corpus
    from findial.data.labelbook import Glossary, LabelBook

    tracking.configure(cfg.logger.tracking_uri, cfg.logger.artifact_root)
    plan = PrivacyPlan.for_federation(cfg)
    accountant = plan.accountant()
    models = build_task_models(cfg, cache=False)
    strategy = build_strategy(cfg, plan)
    settings, ckpt = checkpoints.settings_of(cfg), None
    if cfg.get("resume"):  # the global model, aggregator state and privacy spent after the checkpoint's round
        ckpt = checkpoints.load(cfg.resume)
        checkpoints.check_compatible(ckpt, settings)
        if ckpt.round >= int(cfg.rounds):
            raise FederationError(f"resume={cfg.resume}: round {ckpt.round} of rounds={cfg.rounds} is done already")
        checkpoints.restore_accountant(accountant, ckpt.accountant)
        checkpoints.restore_strategy(strategy, ckpt.strategy)
        load_record(models, ckpt.arrays)
        started_from = {"findial.federated.resumed_from": f"{ckpt.path} (round {ckpt.round})"}
    else:
        started_from = warm_start(models, str(cfg.warm_start)) if cfg.get("warm_start") else {}
    test = load_corpus(cfg.data.test_file, LabelBook.load(cfg.labels.ontology), Glossary.load(cfg.labels.glossary))
    out_dir = _out_dir(cfg)
    sizes = exchange_sizes(models)

    def global_eval(rnd: int, arrays: ArrayRecord) -> dict:
        load_record(models, arrays)
        return score_dialogues(models, cfg, test)

    tags = {
        "findial.federated": "true",
        "findial.backbone": str(cfg.model.name),
        "findial.federated.strategy": str(cfg.aggregation.name),
        "findial.privacy.mode": plan.mode,
        **started_from,
    }
    with tracking.run(
        f"{cfg.logger.experiment_prefix}federated",
        f"fed-{cfg.aggregation.name}-{cfg.model.name}",
        tags=tags,
        run_id=ckpt.mlflow_run_id if ckpt else None,  # a resumed federation continues its MLflow run
    ) as active:

        def checkpoint(rnd: int, arrays: ArrayRecord, reports: list[RoundReport]) -> None:
            where = checkpoints.save(
                out_dir / "checkpoints", rnd, arrays, reports, accountant, strategy, settings, active.info.run_id
            )
            log.info("round %d checkpoint: %s", rnd, where)

        if ckpt is None:  # a resumed run has them (MLflow refuses to change a parameter)
            tracking.log_params(
                {
                    "branches": ",".join(cfg.branches),
                    "rounds": int(cfg.rounds),
                    "local_epochs": int(cfg.local_epochs),
                    "aggregation": dict(cfg.aggregation),
                    "sampling": dict(cfg.sampling),
                    "privacy": dict(cfg.privacy),
                    "model": str(cfg.model.name),
                    "lora": {t: m["lora"] for t, m in models.metas.items()},
                    "seed": int(cfg.seed),
                }
            )
        tracking.log_metrics(sizes, prefix="exchange.")
        final, reports = run_rounds(
            grid,
            strategy,
            to_record(models),
            cfg,
            plan,
            accountant,
            global_eval,
            _log_round,
            start=ckpt.round + 1 if ckpt else 1,
            prior=ckpt.reports if ckpt else None,
            after_round=checkpoint,
        )
        load_record(models, final)
        participants = sorted({b for r in reports for b in r.participants})
        import mlflow

        mlflow.set_tags(
            {
                "findial.federated.participants": ",".join(participants),
                "findial.federated.rounds_applied": str(sum(r.applied for r in reports)),
            }
        )
        summary = {
            "rounds": int(cfg.rounds),
            "rounds_completed": len(reports),
            "rounds_applied": sum(r.applied for r in reports),
            "branches": list(cfg.branches),
            "participating_branches": participants,
            "strategy": str(cfg.aggregation.name),
            "privacy": plan.summary(accountant),
            "model": str(cfg.model.name),
            "exchange": sizes,
            "bytes_sent": sum(r.bytes_sent for r in reports),
            "bytes_received": sum(r.bytes_received for r in reports),
            "final_global_eval": reports[-1].global_eval if reports else {},
            "branch_eval": reports[-1].branch_eval if reports else {},
            "mlflow_run_id": active.info.run_id,
        }
        bundle, version = publish(models, cfg, out_dir, summary, active.info.run_id)
        summary.update(bundle=str(bundle), registered_version=version)
        tracking.log_json(summary, "federation.json")
    if version is not None and cfg.get("evaluate_after", True):
        from findial.evaluation.evaluate import evaluate

        ev = evaluate(
            f"models:/{cfg.registry.model_name}/{version}",
            cfg.data.test_file,
            eval_set=str(cfg.eval_set),
            report_dir=out_dir / "report",
            device=str(cfg.get("device", "auto")),
        )
        summary["evaluation"] = {
            "eval_set": str(cfg.eval_set),
            "report": str(ev.report_json),
            "gates": {k: v["passed"] for k, v in ev.gates.items()},
        }
    summary["rounds_report"] = [r.as_dict() for r in reports]
    tracking.atomic_write_text(out_dir / "federation.json", json.dumps(summary, indent=2, ensure_ascii=False))
    log.info("federation finished: %s", out_dir / "federation.json")
    return summary


def make_server_app(bound_config: dict | None = None, results: list | None = None) -> ServerApp:
    """A ServerApp configured by ``bound_config`` (simulation) or by the run config (deployment).

    ``results`` (simulation) receives the summary, since the ServerApp runs in a thread.
    """
    config_for = resolver(bound_config)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        summary = serve(grid, config_for(context))
        if results is not None:
            results.append(summary)

    return app


# `flwr run` (deployment): serverapp = "findial.federated.server_app:app"
app = make_server_app()
