"""The federation's configuration: the Hydra ``fed`` config, composed once and shipped as plain data.

``findial fed simulate`` composes it with Hydra and binds the resolved dict to the Flower apps.
Under ``flwr run`` (deployment) the ServerApp and every ClientApp compose it themselves from the run
config key ``overrides`` (Hydra overrides, space separated), so server and branches read one config.
"""
from __future__ import annotations

import re
import shlex

from omegaconf import DictConfig, OmegaConf

RUN_CONFIG_KEY = "overrides"
_COMPOSED: dict[str, DictConfig] = {}


def normalize_overrides(args: list[str]) -> list[str]:
    """``branches=a,b,c`` -> ``branches=[a,b,c]`` (Hydra reads a bare comma list as a sweep)."""
    out = []
    for a in args:
        m = re.fullmatch(r"(\+{0,2}branches)=([^\[\]'\"]+,[^\[\]'\"]*)", a)
        out.append(f"{m.group(1)}=[{m.group(2)}]" if m else a)
    return out


def compose(overrides: list[str]) -> DictConfig:
    """Compose ``configs/fed.yaml`` with ``overrides``, resolved, outside any running Hydra app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from findial.cli import _setup

    _setup()
    with initialize_config_module("findial.configs", version_base="1.3"):
        cfg = hydra_compose("fed", overrides=normalize_overrides(overrides))
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def plain(cfg: DictConfig) -> dict:
    """A resolved, picklable copy (what a Ray actor or a thread receives)."""
    out = OmegaConf.to_container(cfg, resolve=True)
    out.pop("hydra", None)
    return out


def from_run_config(run_config) -> DictConfig:
    """Deployment: compose from the run config's ``overrides`` string (cached per process)."""
    text = str(run_config.get(RUN_CONFIG_KEY, "") or "")
    if text not in _COMPOSED:
        _COMPOSED[text] = compose(shlex.split(text))
    return _COMPOSED[text]


def resolver(bound: dict | None):
    """``context -> DictConfig``: the bound config (simulation) or one composed from the run config."""
    bound_cfg = OmegaConf.create(bound) if bound is not None else None

    def config_for(context) -> DictConfig:
        return bound_cfg if bound_cfg is not None else from_run_config(context.run_config)

    return config_for
