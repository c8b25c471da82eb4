"""Every option of every config group composes and resolves (a typo in a rarely used option fails here,
not in a user's run). Only composition: nothing is instantiated or downloaded."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# group -> the top-level config that composes it
HOST = {
    "task": "train",
    "model": "train",
    "data": "train",
    "trainer": "train",
    "strategy": "train",
    "logger": "train",
    "labels": "train",
    "paths": "train",
    "experiment": "pipeline",
    "members": "pipeline",
    "federated": "fed",
}
EXTRA = {("data", "custom"): ["data.train_file=t.jsonl", "data.val_file=v.jsonl"]}  # its mandatory keys
CASES = sorted((group, option.stem) for group in HOST for option in (CONFIGS / group).glob("*.yaml"))


def test_every_group_is_covered():
    groups = {p.name for p in CONFIGS.iterdir() if p.is_dir() and any(p.glob("*.yaml"))}
    not_groups = {"benchmark", "generation_rules"}  # read by benchmarks/ and the responder, not Hydra groups
    assert groups - not_groups == set(HOST), "a new config group: add it to HOST"


def _package(group: str, option: str) -> str:
    """Where the option lands: its ``# @package`` line, else the group's name."""
    first = (CONFIGS / group / f"{option}.yaml").read_text(encoding="utf-8").splitlines()[0]
    return first.split("@package", 1)[1].strip() if "@package" in first else group


@pytest.mark.parametrize("group, option", CASES)
def test_each_option_composes_and_resolves(compose, group, option):
    cfg = compose(HOST[group], [f"{group}={option}", *EXTRA.get((group, option), [])])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    package = _package(group, option)
    if package != "_global_":
        node = resolved
        for key in package.split("."):
            node = node[key]
        assert node or (group, option) == ("members", "none"), f"{group}={option} composed nothing under {package}"
    if group == "model":
        assert resolved["model"]["backbone"]["_target_"].startswith("findial.")
    if group == "task":
        assert resolved["task"]["name"] == option.split("_")[0]
