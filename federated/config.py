"""The federation's configuration: the Hydra ``fed`` config, composed once and shipped as plain data.

``findial fed simulate`` composes it with Hydra and binds the resolved dict to the Flower apps (everything
runs on one machine under one operator, so the branches use that same config).

Under ``flwr run`` (deployment) the run config comes from whoever runs ``flwr run``, and a branch does not
trust it:

- The ServerApp composes ``configs/fed.yaml`` with the run config key ``overrides`` (Hydra overrides,
  space separated). Branches never read that key.
- A ClientApp (a branch) composes ``configs/fed.yaml`` with the run config key ``branch-overrides``, every
  one of which must be in ``BRANCH_KEYS`` / ``BRANCH_PREFIXES``: what server and branches must agree on
  for the same adapters to travel, and nothing else:

      branches, rounds, local_epochs, seed          the run's branches, schedule and local seeds
      model (a configs/model/ choice), model.lora.*, model.optim.*   the adapters' shape and optimiser
      task@tasks.intent, task@tasks.ner, tasks.*    the task settings (heads, lengths, batch sizes)
      federated, aggregation.*, sampling.*          the aggregation and sampling (FedProx's mu)

  Any other override is refused, and so is any whose key or value mentions ``_target_`` (what a branch
  instantiates is its own), any value with an interpolation ``${...}`` (it would resolve against the
  branch's environment), and anything under ``privacy``, ``data``, ``paths``, ``labels``, ``faults``
  (``BRANCH_OWNED``). A refusal is the ClientApp's reply: an error naming the key; nothing trains.
- A branch's privacy settings are its own: configs/fed.yaml's ``privacy`` defaults, then the YAML file named
  by its node config ``privacy-file`` (a mapping of ``privacy`` keys), then the node config keys
  ``privacy-mode``, ``privacy-clipping-norm``, ``privacy-local-epsilon``, ``privacy-local-delta``, e.g.
  ``flower-supernode ... --node-config "branch='beijing' privacy-mode='local' privacy-local-epsilon=2.0"``.
  Its data likewise: the node config's ``train-file`` / ``val-file`` (``partition.py``).

``deploy.write_app`` writes both keys: every override to ``overrides``, those a branch accepts also to
``branch-overrides``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from findial.typed_config import resolved

RUN_CONFIG_KEY = "overrides"  # the ServerApp's overrides
BRANCH_RUN_CONFIG_KEY = "branch-overrides"  # the overrides branches accept (checked against the lists below)
BRANCH_KEYS = (
    "branches",
    "rounds",
    "local_epochs",
    "seed",
    "model",
    "federated",
    "task@tasks.intent",
    "task@tasks.ner",
)
BRANCH_PREFIXES = ("model.lora", "model.optim", "tasks", "aggregation", "sampling")
BRANCH_OWNED = ("privacy", "data", "paths", "labels", "faults")
NODE_PRIVACY = {
    "privacy-mode": "mode",
    "privacy-clipping-norm": "clipping_norm",
    "privacy-local-epsilon": "local_epsilon",
    "privacy-local-delta": "local_delta",
}
NODE_PRIVACY_FILE = "privacy-file"
_COMPOSED: dict[str, DictConfig] = {}
_BRANCH: dict[tuple, DictConfig] = {}


class RefusedOverride(ValueError):
    """A run-config override a branch does not accept from the server."""


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

    from findial.runtime import setup as _setup

    _setup()
    with initialize_config_module("findial.configs", version_base="1.3"):
        cfg = hydra_compose("fed", overrides=normalize_overrides(overrides))
    return OmegaConf.create(resolved(cfg))


def plain(cfg: DictConfig) -> dict:
    """A resolved, picklable copy (what a Ray actor or a thread receives)."""
    out = resolved(cfg)
    out.pop("hydra", None)
    return out


def _under(key: str, prefix: str, package: bool = False) -> bool:
    """``key`` is ``prefix`` or below it (``package``: also ``prefix@...``, a group placed elsewhere)."""
    return key == prefix or key.startswith((prefix + ".", prefix + "@") if package else prefix + ".")


def branch_refusal(override: str) -> str | None:
    """Why a branch refuses ``override`` from the server, or None when it accepts it."""
    key, _, value = override.partition("=")
    key = key.lstrip("~+").strip()
    if "_target_" in key or "_target_" in value:
        return f"override {override!r} (key {key!r}): `_target_` is refused, a branch instantiates only its own code"
    if owned := next((p for p in BRANCH_OWNED if _under(key, p, package=True)), None):
        return (
            f"override {override!r} (key {key!r}): {owned} settings are the branch's own "
            f"(its node config, its own configs/), never the server's"
        )
    if "${" in value:
        return f"override {override!r} (key {key!r}): interpolations are refused, they resolve on the branch"
    if key not in BRANCH_KEYS and not any(_under(key, p) for p in BRANCH_PREFIXES):
        return (
            f"override {override!r} (key {key!r}) is not one a branch accepts from the server "
            f"(accepted: {', '.join(BRANCH_KEYS)}, {', '.join(p + '.*' for p in BRANCH_PREFIXES)})"
        )
    return None


def check_branch_overrides(overrides: list[str]) -> list[str]:
    """``overrides`` if a branch accepts every one of them; else RefusedOverride naming the first refused key."""
    for o in overrides:
        if reason := branch_refusal(o):
            raise RefusedOverride(f"branch refuses the server's run config: {reason}")
    return overrides


def branch_privacy(defaults: DictConfig, node_config) -> DictConfig:
    """The branch's ``privacy``: the defaults, then its ``privacy-file``, then its ``privacy-*`` node config keys."""
    privacy = OmegaConf.create(resolved(defaults))
    unknown = sorted(
        k for k in node_config if str(k).startswith("privacy-") and k not in NODE_PRIVACY and k != NODE_PRIVACY_FILE
    )
    if unknown:
        raise ValueError(
            f"node config {unknown}: unknown privacy keys (expected {NODE_PRIVACY_FILE}, {', '.join(NODE_PRIVACY)})"
        )
    if node_config.get(NODE_PRIVACY_FILE):
        path = Path(str(node_config[NODE_PRIVACY_FILE]))
        if not path.is_file():
            raise FileNotFoundError(f"node config {NODE_PRIVACY_FILE}={path}: no such file on this SuperNode")
        loaded = OmegaConf.load(path)
        own = loaded.get("privacy", loaded) if isinstance(loaded, DictConfig) else loaded
        if not isinstance(own, DictConfig) or set(own) - set(privacy):
            raise ValueError(f"{path}: expected a mapping of privacy keys ({', '.join(privacy)})")
        merged = OmegaConf.merge(privacy, resolved(own))
        assert isinstance(merged, DictConfig)  # a mapping merged into a mapping
        privacy = merged
    for node_key, key in NODE_PRIVACY.items():
        if node_key in node_config:
            privacy[key] = node_config[node_key]
    return privacy


def from_run_config(run_config) -> DictConfig:
    """Deployment, server side: compose from the run config's ``overrides`` string (cached per process)."""
    text = str(run_config.get(RUN_CONFIG_KEY, "") or "")
    if text not in _COMPOSED:
        _COMPOSED[text] = compose(shlex.split(text))
    return _COMPOSED[text]


def branch_config(run_config, node_config) -> DictConfig:
    """Deployment, branch side: the accepted ``branch-overrides``, with the branch's own privacy settings."""
    text = str(run_config.get(BRANCH_RUN_CONFIG_KEY, "") or "")
    overrides = check_branch_overrides(shlex.split(text))
    key = (text, tuple(sorted((str(k), str(v)) for k, v in node_config.items() if str(k).startswith("privacy-"))))
    if key not in _BRANCH:
        cfg = compose(overrides)
        cfg.privacy = branch_privacy(cfg.privacy, node_config)
        _BRANCH[key] = cfg
    return _BRANCH[key]


def resolver(bound: dict | None, branch: bool = False):
    """``context -> DictConfig``: the bound config (simulation), or, in deployment, the server's config
    composed from the run config (``branch=False``) or the branch's (``branch=True``, ``branch_config``)."""
    bound_cfg = OmegaConf.create(bound) if bound is not None else None

    def config_for(context) -> DictConfig:
        if bound_cfg is not None:
            return bound_cfg
        return branch_config(context.run_config, context.node_config) if branch else from_run_config(context.run_config)

    return config_for
