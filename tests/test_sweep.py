"""`findial sweep`: the search space from configs/sweep.yaml, the best-config file, and a real Ray Tune sweep."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

tune = pytest.importorskip("ray.tune")

from findial.training.sweep import SweepConfigError, max_epochs, search_space, write_best  # noqa: E402

MINI = Path(__file__).parent / "fixtures" / "mini.jsonl"


def test_default_search_space_composes(compose):
    from ray.tune.search.sample import Categorical, Float

    cfg = compose("sweep", ["model=tiny"])
    space = search_space(cfg.sweep.search_space)
    assert set(space) == {"model.optim.lr", "model.lora.r", "model.lora.alpha", "trainer.max_epochs"}
    lr = space["model.optim.lr"]
    assert isinstance(lr, Float) and 0 < lr.lower < lr.upper and type(lr.sampler).__name__ == "_LogUniform"
    assert isinstance(space["model.lora.r"], Categorical) and space["model.lora.r"].categories == [4, 8, 16]
    assert max_epochs(cfg) == 4
    for path in space:  # every searched key exists in the train config the trials run
        assert OmegaConf.select(cfg, path, throw_on_missing=False) is not None or path == "trainer.max_epochs"
    assert cfg.sweep.max_concurrent_trials == 1 and cfg.sweep.ray_address is None
    assert cfg.model.name == "tiny" and cfg.trainer.enable_progress_bar is False


def test_search_space_overrides(compose):
    cfg = compose(
        "sweep",
        [
            "sweep.search_space.lora_r.choice=[8,32]",
            "~sweep.search_space.epochs",
            "~sweep.search_space.lr",
            "+sweep.search_space.lr={path: model.optim.lr, grid: [0.1, 0.01]}",
            "trainer.max_epochs=6",
        ],
    )
    space = search_space(cfg.sweep.search_space)
    assert space["model.lora.r"].categories == [8, 32]
    assert space["model.optim.lr"] == {"grid_search": [0.1, 0.01]}
    assert "trainer.max_epochs" not in space and max_epochs(cfg) == 6


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"x": {"path": "model.lora.r"}}, r"sweep.search_space.x: give exactly one of"),
        ({"x": {"path": "model.lora.r", "choice": []}}, r"sweep.search_space.x.choice: expected a non-empty list"),
        ({"x": {"path": "model.optim.lr", "loguniform": [0, 1]}}, r"sweep.search_space.x.loguniform: low must be > 0"),
        ({"x": {"path": "model.optim.lr", "uniform": [2, 1]}}, r"sweep.search_space.x.uniform: expected \[low, high\]"),
        ({"x": {"path": "optimizer.lr", "choice": [1]}}, r"sweep.search_space.x.path: 'optimizer.lr'"),
        ({"x": {"choice": [1]}}, r"sweep.search_space.x: expected \{path"),
        ({}, "empty"),
    ],
)
def test_bad_search_space_names_the_key(spec, message):
    with pytest.raises(SweepConfigError, match=message):
        search_space(spec)


def test_best_config_retrains_through_the_experiment_group(compose, tmp_path):
    cfg = compose("sweep", ["model=tiny"])
    best = {"model.optim.lr": 0.0123, "model.lora.r": 8, "model.lora.alpha": 16, "trainer.max_epochs": 3}
    path, keep, explicit = write_best(
        cfg, best, tmp_path, ["model=tiny", "sweep.num_samples=2", "data=custom"], "best of a test"
    )
    assert path == tmp_path / "best" / "experiment" / "sweep_best.yaml"
    assert keep == ["model=tiny", "data=custom"]
    assert explicit == ["model.optim.lr=0.0123", "model.lora.r=8", "model.lora.alpha=16", "trainer.max_epochs=3"]
    for config in ("train", "pipeline"):  # findial train ... / findial run ... (registers the pair)
        again = compose(config, [f"hydra.searchpath=[file://{tmp_path / 'best'}]", "experiment=sweep_best"])
        assert again.model.name == "tiny" and again.model.optim.lr == 0.0123
        assert again.model.lora.r == 8 and again.model.lora.alpha == 16 and again.trainer.max_epochs == 3


def test_two_trial_sweep_stops_the_bad_trial_and_nests_child_runs(tmp_path):
    """A real local Ray sweep: lr 0.05 vs 1e-7 on the tiny model; ASHA stops the second after one epoch."""
    import mlflow

    args = [
        "sweep",
        "model=tiny",
        "data=custom",
        f"data.train_file={MINI}",
        f"data.val_file={MINI}",
        "sweep.num_samples=1",
        "~sweep.search_space.lr",
        "~sweep.search_space.lora_alpha",
        "+sweep.search_space.lr={path: model.optim.lr, grid: [0.05, 1.0e-7]}",
        "sweep.search_space.lora_r.choice=[4]",
        "sweep.search_space.epochs.choice=[3]",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "findial.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "FINDIAL_HOME": str(tmp_path)},
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "findial train model=tiny data=custom" in out.stdout and "model.optim.lr=0.05" in out.stdout
    sweep_dir = next((tmp_path / "sweeps").iterdir())
    trials = {t["params"]["model.optim.lr"]: t for t in json.loads((sweep_dir / "trials.json").read_text())}
    assert set(trials) == {0.05, 1e-7}
    good, bad = trials[0.05], trials[1e-7]
    assert good["epochs"] == 3 and good["mlflow_status"] == "FINISHED" and not good["stopped_early"]
    assert Path(good["package_dir"], "findial_model.json").is_file()
    assert bad["epochs"] == 1 and bad["stopped_early"] and bad["mlflow_status"] == "KILLED"

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["findial-intent"])
    parent = runs[runs["tags.mlflow.runName"] == "sweep-intent-tiny"]
    assert len(parent) == 1 and parent.iloc[0]["status"] == "FINISHED"
    parent_id = parent.iloc[0]["run_id"]
    children = runs[runs["tags.mlflow.parentRunId"] == parent_id]
    assert set(children["run_id"]) == {good["mlflow_run_id"], bad["mlflow_run_id"]}
    assert parent.iloc[0]["tags.findial.sweep.best_run_id"] == good["mlflow_run_id"]
    assert parent.iloc[0]["metrics.best_val_loss"] == pytest.approx(good["val_loss"])
    assert children.set_index("run_id").loc[bad["mlflow_run_id"], "tags.findial.sweep.stopped_early"] == "true"
    best_yaml = (sweep_dir / "best" / "experiment" / "sweep_best.yaml").read_text()
    assert "lr: 0.05" in best_yaml and good["mlflow_run_id"] in best_yaml
