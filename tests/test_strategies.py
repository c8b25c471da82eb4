"""Scale-out presets: every `strategy=` option composes and instantiates; ranks, sharded batches, complete adapters.

Lightning runs DeepSpeed and FSDP on CUDA only: on CPU these tests build the
strategy objects (and, for DeepSpeed, the Trainer) without fitting; the `gpu`
tests fit them. DDP runs for real on CPU (2 processes, gloo).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from findial.training.datamodule import LengthBucketSampler
from findial.training.strategies import (
    DEEPSPEED_DIR,
    consolidated_trainable_state,
    is_launch_rank_zero,
    load_deepspeed_config,
    rebuilt_module,
)

MINI = Path(__file__).parent / "fixtures" / "mini.jsonl"
PRESETS = ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero2_offload", "deepspeed_zero3", "deepspeed_zero3_offload"]
ZERO = {
    "deepspeed_zero2": (2, None),
    "deepspeed_zero2_offload": (2, "cpu"),
    "deepspeed_zero3": (3, None),
    "deepspeed_zero3_offload": (3, "cpu"),
}


def _trainer_cfg(compose, preset, extra=()):
    cfg = compose("train", [f"strategy={preset}", "trainer.accelerator=cpu", "trainer.max_epochs=1", *extra])
    return OmegaConf.to_container(cfg.trainer, resolve=True)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_instantiates(compose, preset):
    if preset.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy

    tc = _trainer_cfg(compose, preset, ["trainer.num_nodes=2", "trainer.devices=4"])
    assert tc["num_nodes"] == 2 and tc["devices"] == 4
    strategy = instantiate(tc["strategy"])
    if preset == "ddp":
        assert isinstance(strategy, DDPStrategy)
        assert strategy._ddp_kwargs["find_unused_parameters"] is False
    elif preset == "fsdp":
        from transformers.models.bert.modeling_bert import BertLayer

        assert isinstance(strategy, FSDPStrategy)
        assert strategy.kwargs["use_orig_params"] is True  # LoRA: frozen + trainable tensors in one unit
        assert strategy._state_dict_type == "full"
        assert BertLayer in strategy.kwargs["auto_wrap_policy"]._module_classes
    else:
        stage, offload = ZERO[preset]
        assert isinstance(strategy, DeepSpeedStrategy)
        zero = strategy.config["zero_optimization"]
        assert zero["stage"] == stage and strategy.zero_stage_3 == (stage == 3)
        assert (zero.get("offload_optimizer") or {}).get("device") == offload
        assert "auto" not in json.dumps(strategy.config)  # Lightning fills these from the Trainer
        assert "train_micro_batch_size_per_gpu" not in strategy.config


@pytest.mark.parametrize("preset", ["ddp", *ZERO])
def test_trainer_builds_on_cpu(compose, preset):
    if preset.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    tc = _trainer_cfg(compose, preset)
    trainer = instantiate(tc, logger=False)
    assert type(trainer.strategy).__name__ == type(instantiate(tc["strategy"])).__name__


def test_fsdp_trainer_needs_cuda(compose):
    """Marked limitation: Lightning refuses FSDP on CPU; the `gpu` test below fits it."""
    tc = _trainer_cfg(compose, "fsdp")
    with pytest.raises(Exception, match="requires a GPU accelerator"):
        instantiate(tc, logger=False)


def test_shipped_deepspeed_configs_drop_only_lightning_autos():
    pytest.importorskip("deepspeed")
    raw = {p.stem: json.loads(p.read_text()) for p in DEEPSPEED_DIR.glob("*.json")}
    assert set(raw) == {"zero2", "zero2_offload", "zero3", "zero3_offload"}
    for name, data in raw.items():
        cfg = load_deepspeed_config(name)
        assert set(data) - set(cfg) == {
            "train_micro_batch_size_per_gpu",
            "gradient_accumulation_steps",
            "gradient_clipping",
        }
        assert cfg["zero_optimization"] == data["zero_optimization"]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}}, "zero_optimization.reduce_bucket_size"),
        ({"gradient_accumulation_steps": 4}, "trainer.accumulate_grad_batches"),
        ([1, 2], "a JSON object"),
    ],
)
def test_deepspeed_config_errors_name_file_and_key(tmp_path, body, message):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(body))
    with pytest.raises(ValueError, match=message) as err:
        load_deepspeed_config(path)
    assert str(path) in str(err.value)


def test_deepspeed_config_invalid_json_and_unknown_name(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "zero_optimization": {"stage": 3,}\n}')
    with pytest.raises(ValueError, match=rf"{path}:2:\d+: invalid JSON"):
        load_deepspeed_config(path)
    with pytest.raises(FileNotFoundError, match="zero3_offload"):
        load_deepspeed_config("zero4")


@pytest.mark.parametrize(
    "env, lead",
    [
        ({}, True),
        ({"RANK": "0"}, True),
        ({"RANK": "3"}, False),
        ({"LOCAL_RANK": "1"}, False),
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
        ({"SLURM_PROCID": "2", "SLURM_NTASKS": "8"}, False),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "LOCAL_RANK": "0"}, True),
    ],
)
def test_launch_rank_zero_from_launcher_env(monkeypatch, env, lead):
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert is_launch_rank_zero() is lead


@pytest.mark.parametrize("n, replicas", [(100, 2), (101, 3), (7, 4)])
def test_bucket_sampler_shards_batches_across_ranks(n, replicas):
    lengths = [(i * 37) % 50 + 1 for i in range(n)]
    shards = [list(LengthBucketSampler(lengths, 8, seed=5, num_replicas=replicas, rank=r)) for r in range(replicas)]
    single = list(LengthBucketSampler(lengths, 8, seed=5))
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(
        LengthBucketSampler(lengths, 8, num_replicas=replicas)
    )
    seen = [i for s in shards for b in s for i in b]
    assert set(seen) == set(range(n))  # every example on some rank
    assert sorted(map(tuple, single)) == sorted(set(tuple(b) for s in shards for b in s))  # same batches
    padding = len(shards[0]) * replicas - len(single)
    assert len(seen) - n <= padding * 8  # only the padding batches repeat


def test_rebuilt_module_refuses_incomplete_adapters(tmp_path):
    from findial.data.labelbook import LabelBook
    from findial.training.backbones import tiny
    from findial.training.modules import IntentModule

    lb = LabelBook.load()
    path = tiny(cache_dir=tmp_path)
    make = lambda: IntentModule(str(path), lb.intents, lb.emotions, {"r": 4, "alpha": 8}, {})  # noqa: E731
    module = make()
    state = consolidated_trainable_state(module)
    assert any("lora_A" in k for k in state) and any("intent_head" in k for k in state)
    rebuilt = rebuilt_module(state, make)
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in state.items())
    lora = next(k for k in state if "lora_A" in k)
    with pytest.raises(RuntimeError, match="still sharded"):  # what a ZeRO-3 shard looks like before gathering
        rebuilt_module({**state, lora: torch.empty(0)}, make)
    with pytest.raises(RuntimeError, match="missing"):
        rebuilt_module({k: v for k, v in state.items() if k != lora}, make)


def _findial(args, home, timeout=900):
    env = {**os.environ, "FINDIAL_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "findial.cli", *args], capture_output=True, text=True, cwd=home, env=env, timeout=timeout
    )


def test_ddp_two_cpu_processes_one_run_one_package(tmp_path):
    """`findial train strategy=ddp trainer.devices=2`: Lightning re-launches the command; only rank 0 tracks."""
    import mlflow

    out = _findial(
        [
            "train",
            "strategy=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "model=tiny",
            "data=custom",
            f"data.train_file={MINI}",
            f"data.val_file={MINI}",
            "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Starting with 2 processes" in out.stdout + out.stderr
    packages = list((tmp_path / "runs").rglob("findial_model.json"))
    assert len(packages) == 1 and len(list((tmp_path / "runs").iterdir())) == 1
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    assert runs.iloc[0]["tags.findial.task"] == "intent" and "metrics.val_loss" in runs.columns


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["deepspeed_zero3", "deepspeed_zero2_offload", "fsdp"])
def test_sharded_training_on_gpu_saves_complete_adapters(tmp_path, preset):
    from safetensors.torch import load_file

    from findial.training.package import load_package

    out = _findial(
        [
            "train",
            f"strategy={preset}",
            "trainer.accelerator=cuda",
            "trainer.devices=1",
            "model=tiny",
            "data=custom",
            f"data.train_file={MINI}",
            f"data.val_file={MINI}",
            "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    package = next((tmp_path / "runs").rglob("findial_model.json")).parent
    module, _, _ = load_package(package)
    weights = load_file(str(package / "weights.safetensors"))
    trainable = {n: p.shape for n, p in module.named_parameters() if p.requires_grad}
    assert set(weights) == set(trainable) and all(weights[n].shape == s for n, s in trainable.items())
    adapter = load_file(str(package / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(t.numel() > 0 for t in adapter.values())
