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
from findial.typed_config import resolved

log = logging.getLogger(__name__)

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
TRAIN_GROUPS = ("task", "model", "data", "labels", "trainer", "strategy", "logger", "experiment", "paths")


class SweepConfigError(ValueError):
    pass


def search_space(space: DictConfig | dict) -> dict[str, Any]:
    """``sweep.search_space`` -> Ray Tune's param_space, keyed by config path (``model.lora.r``)."""
    from ray import tune

    specs = resolved(space) if isinstance(space, DictConfig) else space
    if not specs:
        raise SweepConfigError("sweep.search_space: empty; name at least one parameter to search")
    out: dict[str, Any] = {}
    for name, spec in specs.items():
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
    for name, spec in resolved(cfg.sweep.search_space).items():
        if spec["path"] != "trainer.max_epochs":
            continue
        if "randint" in spec:
            return int(spec["randint"][1]) - 1
        if "choice" in spec or "grid" in spec:
            return int(max(spec.get("choice") or spec["grid"]))
        raise SweepConfigError(f"sweep.search_space.{name}: search trainer.max_epochs with choice, grid or randint")
    return int(cfg.trainer.max_epochs or cfg.task.epochs)


class ReportToTune(Callback):
    """After each validation epoch but the last: the logged metrics (and the MLflow run id) to ``ray.tune.report``.

    When ASHA stops the trial, ``tune.report`` ends the training thread
    (``SystemExit``). The last epoch is reported by the trial once its package is
    saved and its MLflow run closed, so a trial that runs to the end always keeps
    both, whatever the scheduler decides then.
    """

    def __init__(self, package_dir: str):
        self.package_dir = package_dir
        self.last: dict = {}

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch + 1
        run_id = getattr(trainer.logger, "run_id", None) or ""
        self.last = {
            **{k: float(v) for k, v in trainer.callback_metrics.items()},
            "epoch": epoch,
            "mlflow_run_id": run_id,
            "package_dir": self.package_dir,
        }
        if trainer.max_epochs is None or epoch < trainer.max_epochs:
            from ray import tune

            tune.report(self.last)


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
    reporter = ReportToTune(str(out / cfg.task.name / "package"))
    result = train_task(cfg, cfg.task, out, tags=tags, callbacks=[reporter])
    tune.report(
        {**reporter.last, **result.metrics, "mlflow_run_id": result.run_id, "package_dir": str(result.package_dir)}
    )


@dataclass
class SweepResult:
    parent_run_id: str
    best_params: dict
    best_metrics: dict
    best_run_id: str
    best_package: str
    experiment_file: Path
    overrides: list[str]  # the sweep's command-line overrides a retrain needs (task, data, ...)
    best_overrides: list[str]  # the best values, e.g. model.lora.r=8
    trials: list[dict]

    def commands(self) -> dict[str, str]:
        """Shell commands that retrain the best configuration (and, with `findial run`, register it)."""
        import shlex

        search = [f"hydra.searchpath=[file://{self.experiment_file.parent.parent}]", "experiment=sweep_best"]
        quote = lambda args: " ".join(shlex.quote(a) for a in args)  # noqa: E731
        return {
            "train": "findial train " + quote([*self.overrides, *self.best_overrides]),
            "train_experiment": "findial train " + quote([*self.overrides, *search]),
            "run_experiment": "findial run "
            + quote([*[o for o in self.overrides if not o.startswith("task=")], *search]),
        }


def _ray_init(cfg: DictConfig) -> bool:
    """Connect to ``sweep.ray_address`` or start a local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.sweep.ray_address
    if address:
        if str(cfg.logger.tracking_uri).startswith("sqlite:"):
            log.warning(
                "sweep.ray_address=%s with a sqlite MLflow store: trials on other machines cannot reach "
                "it; set logger.tracking_uri to an MLflow server (http://...)",
                address,
            )
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=int(cfg.sweep.num_cpus), include_dashboard=False, log_to_driver=True)
    return True


def _close_stopped_runs(trials: list[dict]) -> None:
    """ASHA ends a stopped trial mid-training (its run is left RUNNING or FAILED): mark the run KILLED, early stop."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for t in trials:
        if not t["mlflow_run_id"]:
            continue
        run = client.get_run(t["mlflow_run_id"])
        t["mlflow_status"] = run.info.status
        t["stopped_early"] = run.info.status != "FINISHED" and t["error"] is None
        if t["stopped_early"]:
            client.set_tag(t["mlflow_run_id"], "findial.sweep.stopped_early", "true")
            client.set_terminated(t["mlflow_run_id"], status="KILLED")
            t["mlflow_status"] = "KILLED"


def _quote(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def write_best(
    cfg: DictConfig, params: dict, out_dir: Path, overrides: list[str], note: str
) -> tuple[Path, list[str], list[str]]:
    """Write the best values as experiment ``sweep_best``.

    Returns (the file, the sweep's own command-line overrides that a retrain needs
    (data, task, ...), the best values as explicit overrides).
    """
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
    keep = [
        o for o in overrides if not o.lstrip("~+").startswith(("sweep.", "hydra.")) and o.split("=")[0] not in params
    ]
    explicit = [f"{k}={_quote(v)}" for k, v in params.items()]
    return path, keep, explicit


def _tune(cfg: DictConfig, base: dict, space: dict, max_t: int, out_dir: Path, parent_run_id: str):
    """Run the trials on Ray Tune; returns Tune's ResultGrid. Starts (and stops) a local Ray unless connected."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    started = _ray_init(cfg)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(_trial, base=base, sweep_dir=str(out_dir), parent_run_id=parent_run_id),
            dict(cfg.sweep.resources_per_trial),
        )
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=max_t,
            grace_period=min(int(cfg.sweep.asha.grace_period), max_t),
            reduction_factor=float(cfg.sweep.asha.reduction_factor),
        )
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=cfg.sweep.metric,
                mode=cfg.sweep.mode,
                scheduler=scheduler,
                num_samples=int(cfg.sweep.num_samples),
                max_concurrent_trials=cfg.sweep.max_concurrent_trials,
                search_alg=BasicVariantGenerator(random_state=int(cfg.sweep.seed)),
            ),
            run_config=tune.RunConfig(
                name=f"sweep-{cfg.sweep.name}",
                verbose=1,
                storage_path=cfg.sweep.get("storage_path") or str(out_dir / "ray"),
            ),
        )
        return tuner.fit()
    finally:
        if started:
            import ray

            ray.shutdown()


def _trials(grid, space: dict, metric: str) -> list[dict]:
    trials = []
    for r in grid:
        m = r.metrics or {}
        trials.append(
            {
                "trial_id": m.get("trial_id", ""),
                "params": {k: r.config[k] for k in space},
                "epochs": m.get("training_iteration", 0),
                metric: m.get(metric),
                "mlflow_run_id": m.get("mlflow_run_id", ""),
                "package_dir": m.get("package_dir", ""),
                "error": str(r.error)[:500] if r.error else None,
            }
        )
    return trials


def _best(trials: list[dict], metric: str, mode: str, name: str) -> dict:
    """The best trial that ran to the end (ASHA judged the stopped ones worse), else the best scored one."""
    scored = [t for t in trials if isinstance(t[metric], (int, float)) and not math.isnan(t[metric])]
    if not scored:
        errors = "; ".join(t["error"] for t in trials if t["error"]) or "no metrics reported"
        raise RuntimeError(f"sweep {name}: no trial reported {metric!r} ({errors})")
    finished = [t for t in scored if t.get("mlflow_status") == "FINISHED"]
    return (min if mode == "min" else max)(finished or scored, key=lambda t: t[metric])


def run_sweep(cfg: DictConfig, out_dir: str | Path, overrides: list[str] | None = None) -> SweepResult:
    """Run the sweep described by ``cfg.sweep`` (a composed ``configs/sweep.yaml``); MLflow must be configured.

    ``overrides`` are the command line's, repeated in the printed retrain commands.
    """
    import mlflow

    out_dir = Path(out_dir).resolve()
    space = search_space(cfg.sweep.search_space)
    if cfg.sweep.mode not in ("min", "max"):
        raise SweepConfigError(f"sweep.mode: expected 'min' or 'max', got {cfg.sweep.mode!r}")
    base = resolved(cfg)
    max_t = max_epochs(cfg)
    if base["trainer"].get("max_epochs") is None:
        base["trainer"]["max_epochs"] = max_t
    name, metric = cfg.sweep.name, cfg.sweep.metric
    tags = {"findial.sweep": name, "findial.task": cfg.task.name, "findial.backbone": cfg.model.name}
    with tracking.run(cfg.logger.experiment_prefix + cfg.task.name, f"sweep-{name}", tags=tags) as parent:
        tracking.log_params(
            {
                "sweep": {k: v for k, v in base["sweep"].items() if k != "search_space"},
                "model_name": cfg.model.name,
                "seed": cfg.seed,
            }
        )
        tracking.log_json(base["sweep"]["search_space"], "sweep/search_space.json")
        trials = _trials(_tune(cfg, base, space, max_t, out_dir, parent.info.run_id), space, metric)
        _close_stopped_runs(trials)
        best = _best(trials, metric, cfg.sweep.mode, name)
        note = (
            f"best of sweep {name}: {metric}={best[metric]:.4f} "
            f"(trial {best['trial_id']}, MLflow run {best['mlflow_run_id']}, parent {parent.info.run_id})"
        )
        exp_file, keep, explicit = write_best(cfg, best["params"], out_dir, list(overrides or []), note)
        tracking.log_json(trials, "sweep/trials.json")
        tracking.log_text(exp_file.read_text(encoding="utf-8"), "sweep/sweep_best.yaml")
        tracking.log_metrics(
            {
                f"best_{metric}": best[metric],
                "trials": len(trials),
                "trials_stopped_early": sum(bool(t.get("stopped_early")) for t in trials),
            }
        )
        mlflow.set_tags(
            {
                "findial.sweep.best_run_id": best["mlflow_run_id"],
                **{f"findial.sweep.best.{k}": str(v) for k, v in best["params"].items()},
            }
        )
        tracking.atomic_write_text(out_dir / "trials.json", json.dumps(trials, indent=2, default=str))
        return SweepResult(
            parent.info.run_id,
            best["params"],
            {metric: best[metric]},
            best["mlflow_run_id"],
            best["package_dir"],
            exp_file,
            keep,
            explicit,
            trials,
        )
