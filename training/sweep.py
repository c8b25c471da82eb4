"""`findial sweep`: hyperparameter search on Ray Tune, ASHA early stopping, MLflow child runs.

Each trial is ``train_task`` with the sampled values written into the composed
config (``configs/sweep.yaml``: ``sweep.search_space``). A Lightning callback
reports the validation metrics to Tune after every epoch, so ASHA can stop a
trial at a rung; the trial's MLflow run is a child of the sweep's parent run
(tag ``mlflow.parentRunId``). Trials that ASHA stopped are closed as ``KILLED``
by the driver once the sweep is over. The best trial's values are written as an
experiment config and printed as ``findial train`` / ``findial run`` commands.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from findial import tracking

log = logging.getLogger(__name__)

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
TRAIN_GROUPS = ("task", "model", "data", "labels", "trainer", "strategy", "logger", "experiment", "paths")


class SweepConfigError(ValueError):
    pass


def search_space(space: DictConfig | dict) -> dict[str, Any]:
    """``sweep.search_space`` -> Ray Tune's param_space, keyed by config path (``model.lora.r``)."""
    from ray import tune

    space = OmegaConf.to_container(space, resolve=True) if isinstance(space, DictConfig) else space
    if not space:
        raise SweepConfigError("sweep.search_space: empty; name at least one parameter to search")
    out: dict[str, Any] = {}
    for name, spec in space.items():
        where = f"sweep.search_space.{name}"
        if not isinstance(spec, dict) or "path" not in spec:
            raise SweepConfigError(f"{where}: expected {{path: <config key>, <distribution>: ...}}, got {spec!r}")
        kinds = [k for k in spec if k != "path"]
        if len(kinds) != 1 or kinds[0] not in DISTRIBUTIONS:
            raise SweepConfigError(f"{where}: give exactly one of {', '.join(DISTRIBUTIONS)}; got {kinds}")
        kind, args = kinds[0], spec[kinds[0]]
        if not isinstance(args, list) or not args:
            raise SweepConfigError(f"{where}.{kind}: expected a non-empty list, got {args!r}")
        if kind in ("uniform", "loguniform", "randint"):
            if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or not args[0] < args[1]:
                raise SweepConfigError(f"{where}.{kind}: expected [low, high] with low < high, got {args}")
            if kind == "loguniform" and args[0] <= 0:
                raise SweepConfigError(f"{where}.loguniform: low must be > 0, got {args[0]}")
        path = str(spec["path"])
        if path.split(".")[0] not in TRAIN_GROUPS or path in out:
            raise SweepConfigError(f"{where}.path: {path!r} is not a key of the train config or is searched twice")
        domain = {"choice": tune.choice, "grid": tune.grid_search}.get(kind)
        out[path] = domain(args) if domain else getattr(tune, kind)(*args)
    return out


def max_epochs(cfg: DictConfig) -> int:
    """The most epochs any trial can run: ASHA's max_t."""
    space = OmegaConf.to_container(cfg.sweep.search_space, resolve=True)
    for name, spec in space.items():
        if spec["path"] != "trainer.max_epochs":
            continue
        if "randint" in spec:
            return int(spec["randint"][1]) - 1
        if "choice" in spec or "grid" in spec:
            return int(max(spec.get("choice") or spec["grid"]))
        raise SweepConfigError(f"sweep.search_space.{name}: search trainer.max_epochs with choice, grid or randint")
    return int(cfg.trainer.max_epochs or cfg.task.epochs)


class ReportToTune(Callback):
    """After each validation epoch: the logged metrics (and the trial's MLflow run id) to ``ray.tune.report``."""

    def __init__(self, package_dir: str):
        self.package_dir = package_dir

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        from ray import tune

        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        run_id = getattr(trainer.logger, "run_id", None) or ""
        tune.report({**metrics, "epoch": trainer.current_epoch + 1, "mlflow_run_id": run_id,
                     "package_dir": self.package_dir})


def _trial(params: dict, base: dict, sweep_dir: str, parent_run_id: str) -> None:
    """One trial, in a Ray worker: train with ``params`` written into the config."""
    from ray import tune

    from findial.data.pii import install_log_redaction

    from .train import train_task

    install_log_redaction()
    try:  # the same quiet console as the CLI
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    cfg = OmegaConf.create(base)
    for path, value in params.items():
        OmegaConf.update(cfg, path, value, merge=False)
    tracking.configure(cfg.logger.tracking_uri, cfg.logger.artifact_root)
    trial_id = tune.get_context().get_trial_id()
    out = Path(sweep_dir) / "trials" / trial_id
    tags = {"mlflow.parentRunId": parent_run_id, "findial.sweep": cfg.sweep.name, "findial.sweep.trial": trial_id}
    train_task(cfg, cfg.task, out, tags=tags, callbacks=[ReportToTune(str(out / cfg.task.name / "package"))])


@dataclass
class SweepResult:
    parent_run_id: str
    best_params: dict
    best_metrics: dict
    best_run_id: str
    best_package: str
    experiment_file: Path
    train_command: str
    trials: list[dict]


def _ray_init(cfg: DictConfig) -> bool:
    """Connect to ``sweep.ray_address`` or start a local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.sweep.ray_address
    if address:
        if str(cfg.logger.tracking_uri).startswith("sqlite:"):
            log.warning("sweep.ray_address=%s with a sqlite MLflow store: trials on other machines cannot reach "
                        "it; set logger.tracking_uri to an MLflow server (http://...)", address)
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    else:
        ray.init(num_cpus=int(cfg.sweep.num_cpus), include_dashboard=False, log_to_driver=True)
    return True


def _close_stopped_runs(trials: list[dict]) -> None:
    """ASHA ends a stopped trial's process mid-epoch: mark its MLflow run KILLED (early stop), not RUNNING."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for t in trials:
        if not t["mlflow_run_id"]:
            continue
        run = client.get_run(t["mlflow_run_id"])
        t["mlflow_status"] = run.info.status
        if run.info.status == "RUNNING":
            client.set_tag(t["mlflow_run_id"], "findial.sweep.stopped_early", "true")
            client.set_terminated(t["mlflow_run_id"], status="KILLED")
            t["mlflow_status"] = "KILLED"


def _quote(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def write_best(cfg: DictConfig, params: dict, out_dir: Path, overrides: list[str], note: str) -> tuple[Path, str]:
    """Write the best values as experiment ``sweep_best`` and return (file, train command)."""
    nested: dict = {}
    for path, value in params.items():
        node = nested
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    body = {"defaults": [{"override /model": cfg.model.name}], **nested}
    text = f"# @package _global_\n# {note}\n" + OmegaConf.to_yaml(OmegaConf.create(body))
    exp_dir = out_dir / "best"
    path = tracking.atomic_write_text(exp_dir / "experiment" / "sweep_best.yaml", text)
    keep = [o for o in overrides if not o.lstrip("~+").startswith(("sweep.", "hydra.")) and o.split("=")[0]
            not in params]
    explicit = [f"{k}={_quote(v)}" for k, v in params.items()]
    command = "findial train " + " ".join([*keep, *explicit])
    return path, command


def run_sweep(cfg: DictConfig, out_dir: str | Path, overrides: list[str] | None = None) -> SweepResult:
    """Run the sweep described by ``cfg.sweep`` (a composed ``configs/sweep.yaml``); MLflow must be configured."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    out_dir = Path(out_dir).resolve()
    space = search_space(cfg.sweep.search_space)
    if cfg.sweep.mode not in ("min", "max"):
        raise SweepConfigError(f"sweep.mode: expected 'min' or 'max', got {cfg.sweep.mode!r}")
    base = OmegaConf.to_container(cfg, resolve=True)
    max_t = max_epochs(cfg)
    if base["trainer"].get("max_epochs") is None:
        base["trainer"]["max_epochs"] = max_t
    name = cfg.sweep.name
    tags = {"findial.sweep": name, "findial.task": cfg.task.name, "findial.backbone": cfg.model.name}
    with tracking.run(cfg.logger.experiment_prefix + cfg.task.name, f"sweep-{name}", tags=tags) as parent:
        tracking.log_params({"sweep": {k: v for k, v in base["sweep"].items() if k != "search_space"},
                             "model_name": cfg.model.name, "seed": cfg.seed})
        tracking.log_json(base["sweep"]["search_space"], "sweep/search_space.json")
        started = _ray_init(cfg)
        try:
            trainable = tune.with_resources(
                tune.with_parameters(_trial, base=base, sweep_dir=str(out_dir), parent_run_id=parent.info.run_id),
                dict(cfg.sweep.resources_per_trial))
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                      grace_period=min(int(cfg.sweep.asha.grace_period), max_t),
                                      reduction_factor=float(cfg.sweep.asha.reduction_factor))
            tuner = tune.Tuner(
                trainable, param_space=space,
                tune_config=tune.TuneConfig(metric=cfg.sweep.metric, mode=cfg.sweep.mode, scheduler=scheduler,
                                            num_samples=int(cfg.sweep.num_samples),
                                            max_concurrent_trials=cfg.sweep.max_concurrent_trials,
                                            search_alg=BasicVariantGenerator(random_state=int(cfg.sweep.seed))),
                run_config=tune.RunConfig(name=f"sweep-{name}", storage_path=str(out_dir / "ray"), verbose=1))
            grid = tuner.fit()
        finally:
            if started:
                import ray

                ray.shutdown()
        trials = []
        for r in grid:
            m = r.metrics or {}
            trials.append({"trial_id": m.get("trial_id", ""), "params": {k: r.config[k] for k in space},
                           "epochs": m.get("training_iteration", 0), cfg.sweep.metric: m.get(cfg.sweep.metric),
                           "mlflow_run_id": m.get("mlflow_run_id", ""), "package_dir": m.get("package_dir", ""),
                           "error": str(r.error)[:500] if r.error else None})
        _close_stopped_runs(trials)
        scored = [t for t in trials if isinstance(t[cfg.sweep.metric], (int, float))
                  and not math.isnan(t[cfg.sweep.metric])]
        if not scored:
            errors = "; ".join(t["error"] for t in trials if t["error"]) or "no metrics reported"
            raise RuntimeError(f"sweep {name}: no trial reported {cfg.sweep.metric!r} ({errors})")
        pick = min if cfg.sweep.mode == "min" else max
        finished = [t for t in scored if t.get("mlflow_status") == "FINISHED"]  # ASHA judged the others worse
        best = pick(finished or scored, key=lambda t: t[cfg.sweep.metric])
        note = (f"best of sweep {name}: {cfg.sweep.metric}={best[cfg.sweep.metric]:.4f} "
                f"(trial {best['trial_id']}, MLflow run {best['mlflow_run_id']}, parent {parent.info.run_id})")
        exp_file, command = write_best(cfg, best["params"], out_dir, list(overrides or []), note)
        tracking.log_json(trials, "sweep/trials.json")
        tracking.log_text(exp_file.read_text(encoding="utf-8"), "sweep/sweep_best.yaml")
        tracking.log_metrics({f"best_{cfg.sweep.metric}": best[cfg.sweep.metric], "trials": len(trials),
                              "trials_stopped_early": sum(t.get("mlflow_status") == "KILLED" for t in trials)})
        import mlflow

        mlflow.set_tags({"findial.sweep.best_run_id": best["mlflow_run_id"],
                         **{f"findial.sweep.best.{k}": str(v) for k, v in best["params"].items()}})
        tracking.atomic_write_text(out_dir / "trials.json", json.dumps(trials, indent=2, default=str))
        return SweepResult(parent.info.run_id, best["params"], {cfg.sweep.metric: best[cfg.sweep.metric]},
                           best["mlflow_run_id"], best["package_dir"], exp_file, command, trials)
