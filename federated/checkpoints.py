"""Per-round global checkpoints of a federation, and resuming one (``findial fed simulate ... resume=PATH``).

After every round the server writes ``<out_dir>/checkpoints/round-NNN/`` atomically (a directory that exists is
complete) and then points ``<out_dir>/checkpoints/latest`` at it:

- ``global.safetensors``: the global adapters and heads after the round (what the branches receive next);
- ``strategy.safetensors``: the aggregator's own state where it has one (FedAdam's moments ``m_t``, ``v_t``);
- ``state.json``: the round, the round reports so far, the privacy accountant's composition, the MLflow run id,
  and the federation's settings (branches, model, tasks, aggregation, privacy, sampling, local epochs, seed).

``resume=PATH`` (a ``round-NNN`` directory, a ``checkpoints`` directory or the federation's output directory:
the latest checkpoint in it) starts at the next round with that state: the same global model, the aggregator's
moments, the epsilon spent so far (composed on, never reset), the same MLflow run, and ``rounds`` as the total.
A resumed federation must have the settings the checkpoint records; a difference is refused naming the keys.
Only adapter and head tensors are written, as they travel: no dialogue, no personal data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord
from omegaconf import OmegaConf
from safetensors.numpy import load_file, save_file

from findial import tracking

from .rounds import FederationError, RoundReport

STATE, ARRAYS, STRATEGY = "state.json", "global.safetensors", "strategy.safetensors"
FORMAT_VERSION = 1
SETTINGS = ("branches", "model", "tasks", "aggregation", "privacy", "sampling", "local_epochs", "seed")
_MOMENTS = ("m_t", "v_t")  # flwr FedOpt (FedAdam, FedYogi, FedAdagrad) state


@dataclass
class Checkpoint:
    path: Path
    round: int
    arrays: ArrayRecord
    reports: list[RoundReport]
    accountant: dict | None
    strategy: dict[str, dict[str, np.ndarray]]
    settings: dict
    mlflow_run_id: str | None


def settings_of(cfg) -> dict:
    """What a resumed federation must share with the one that wrote the checkpoint."""
    return {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in SETTINGS
    }


def _inner(strategy):
    """The strategy and those it wraps (Flower's DP wrappers keep the wrapped one as ``.strategy``)."""
    while strategy is not None:
        yield strategy
        strategy = getattr(strategy, "strategy", None)


def strategy_state(strategy) -> dict[str, dict[str, np.ndarray]]:
    return {
        name: dict(value)
        for s in _inner(strategy)
        for name in _MOMENTS
        if isinstance(value := getattr(s, name, None), dict) and value
    }


def restore_strategy(strategy, state: dict[str, dict[str, np.ndarray]]) -> None:
    targets = [s for s in _inner(strategy) if any(hasattr(s, n) for n in _MOMENTS)]
    if state and not targets:
        raise FederationError(
            f"the checkpoint holds aggregator state ({', '.join(state)}) this aggregation has no use for"
        )
    for s in targets:
        for name in _MOMENTS:
            setattr(s, name, state.get(name))


def save(root: Path, rnd: int, arrays: ArrayRecord, reports: list[RoundReport], accountant, strategy, settings: dict,
         mlflow_run_id: str | None) -> Path:  # fmt: skip
    """Write ``root/round-NNN`` atomically, then ``root/latest``; returns the checkpoint directory."""
    target = Path(root) / f"round-{rnd:03d}"
    with tracking.atomic_directory(target) as tmp:
        save_file({k: np.ascontiguousarray(a.numpy()) for k, a in arrays.items()}, str(Path(tmp) / ARRAYS))
        moments = {
            f"{name}/{k}": np.ascontiguousarray(v) for name, d in strategy_state(strategy).items() for k, v in d.items()
        }
        if moments:
            save_file(moments, str(Path(tmp) / STRATEGY))
        state = {
            "format_version": FORMAT_VERSION,
            "round": rnd,
            "reports": [r.as_dict() for r in reports],
            "accountant": None
            if accountant is None
            else {
                "mu_squared": accountant.mu_squared,
                "num_releases": accountant.num_releases,
                "noise_multipliers": list(accountant.noise_multipliers),
            },
            "settings": settings,
            "mlflow_run_id": mlflow_run_id,
        }
        (Path(tmp) / STATE).write_text(json.dumps(state, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tracking.atomic_write_text(Path(root) / "latest", target.name + "\n")
    return target


def locate(path: str | Path) -> Path:
    """The checkpoint directory ``path`` names: itself, or the latest one in it or in its ``checkpoints``."""
    path = Path(path)
    for root in (path, path / "checkpoints"):
        if (root / STATE).is_file():
            return root
        if (root / "latest").is_file():
            return root / (root / "latest").read_text(encoding="utf-8").strip()
    raise FederationError(f"resume={path}: no federation checkpoint there (no {STATE}, no checkpoints/latest)")


def load(path: str | Path) -> Checkpoint:
    where = locate(path)
    try:
        state = json.loads((where / STATE).read_text(encoding="utf-8"))
        tensors = load_file(str(where / ARRAYS))
    except (OSError, ValueError) as exc:
        raise FederationError(f"resume={path}: {where} is not a readable checkpoint: {exc}") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise FederationError(
            f"{where / STATE}: format_version {state.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    moments: dict[str, dict[str, np.ndarray]] = {}
    if (where / STRATEGY).is_file():
        for key, value in load_file(str(where / STRATEGY)).items():
            name, _, k = key.partition("/")
            moments.setdefault(name, {})[k] = value
    return Checkpoint(
        path=where,
        round=int(state["round"]),
        arrays=ArrayRecord({k: Array(v) for k, v in tensors.items()}),
        reports=[RoundReport(**r) for r in state["reports"]],
        accountant=state.get("accountant"),
        strategy=moments,
        settings=state["settings"],
        mlflow_run_id=state.get("mlflow_run_id"),
    )


def check_compatible(ckpt: Checkpoint, settings: dict) -> None:
    differ = sorted(k for k in SETTINGS if ckpt.settings.get(k) != settings.get(k))
    if differ:
        raise FederationError(
            f"resume={ckpt.path}: the checkpoint was written with other settings for {', '.join(differ)}; "
            "a resumed federation keeps the settings it started with"
        )


def restore_accountant(accountant, state: dict | None) -> None:
    if (accountant is None) != (state is None):
        raise FederationError("resume: the checkpoint's privacy accounting does not match privacy.mode")
    if accountant is not None and state is not None:
        accountant.mu_squared = float(state["mu_squared"])
        accountant.num_releases = int(state["num_releases"])
        accountant.noise_multipliers = [float(z) for z in state["noise_multipliers"]]
