"""`findial fed`: federated training across branches.

    findial fed simulate [overrides]     all branches on this machine (Flower simulation runtime, Ray)
        findial fed simulate branches=shanghai,beijing,shenzhen rounds=2
        findial fed simulate model=tiny federated=fedprox privacy.mode=central privacy.noise_multiplier=1.1
    scripts/fed_deploy.sh                real processes: SuperLink + one SuperNode per branch, TLS, node auth

Overrides are those of `findial train` (model=, data=, task@tasks.intent.*, trainer.*, ...) plus the
federation's (configs/fed.yaml): branches, rounds, local_epochs, federated=fedavg|fedprox|fedadam,
sampling.*, timeouts.*, privacy.*, registry.*.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from .config import normalize_overrides


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def render(summary: dict) -> str:
    lines = [
        f"federation: {summary['strategy']} over {', '.join(summary['branches'])}; "
        f"{summary['rounds_applied']}/{summary['rounds']} rounds applied; model {summary['model']}"
    ]
    head = (
        f"{'round':>5} {'branches':<34} {'failed':<16} {'sent':>10} {'received':>10} {'s':>6} "
        f"{'intent_acc':>10} {'term_f1':>8} {'multi_turn':>10}"
    )
    lines.append(head)
    for r in summary.get("rounds_report", []):
        g = r["global_eval"]
        lines.append(
            f"{r['round']:>5} {','.join(r['participants']):<34} {','.join(r['failed']) or '-':<16} "
            f"{r['bytes_sent']:>10} {r['bytes_received']:>10} {r['seconds']:>6.1f} "
            f"{_fmt(g.get('intent_accuracy')):>10} {_fmt(g.get('terminology_f1')):>8} "
            f"{_fmt(g.get('multi_turn_accuracy')):>10}"
        )
    ex = summary["exchange"]
    lines.append(
        f"exchanged per copy: adapters+heads {ex['adapter_bytes']} B vs full model {ex['full_model_bytes']} B "
        f"({ex['full_model_bytes'] / max(1, ex['adapter_bytes']):.0f}x)"
    )
    p = summary["privacy"]
    lines.append(
        "privacy: none"
        if p["mode"] == "none"
        else f"privacy: {p['mode']} DP, epsilon={p['epsilon']:.3f} at delta={p['delta']:g} "
        f"after {p['releases']} releases (noise multiplier {p['noise_multiplier']:.3f}, clip {p['clipping_norm']})"
    )
    lines.append(f"bundle: {summary['bundle']}")
    if summary.get("registered_version"):
        lines.append(f"registered findial-nlu v{summary['registered_version']} (MLflow run {summary['mlflow_run_id']})")
    if summary.get("evaluation"):
        ev = summary["evaluation"]
        gates = ", ".join(f"{k} {'pass' if ok else 'FAIL'}" for k, ok in ev["gates"].items())
        lines.append(f"evaluated on {ev['eval_set']}: {gates}; report {ev['report']}")
        lines.append(f"next: findial promote version={summary['registered_version']} eval_set={ev['eval_set']}")
    return "\n".join(lines)


def _simulate(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from findial.runtime import setup as _setup

    from .simulation import simulate

    _setup()
    logging.getLogger("flwr").propagate = False  # Flower prints its own log lines; no second copy via Hydra's
    if cfg.out_dir is None:
        cfg.out_dir = str(Path(HydraConfig.get().runtime.output_dir))
    print(render(simulate(cfg)))


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    action, rest = argv[0], argv[1:]
    if action != "simulate":
        print(f"findial fed: unknown action {action!r} (expected: simulate)\n{__doc__}", file=sys.stderr)
        return 2
    import hydra

    sys.argv = ["findial fed simulate", *normalize_overrides(rest)]
    hydra.main(config_path="pkg://findial.configs", config_name="fed", version_base="1.3")(_simulate)()
    return 0
