"""The model, data and trainer groups become typed settings before any data or model is loaded; a bad key is
named (training/settings.py, on findial/typed_config.py)."""

from pathlib import Path

import pytest

from findial.training.settings import (
    CorpusFile,
    LoraSettings,
    ModelSettings,
    RunConfigError,
    TrainerSettings,
    run_settings,
)
from findial.typed_config import ConfigError, build

MINI = str(Path(__file__).parent / "fixtures" / "mini.jsonl")


def test_the_shipped_defaults_are_typed(compose):
    s = run_settings(compose("pipeline", []))
    assert isinstance(s.model, ModelSettings) and s.model.name == "e5_small" and s.model.kind == "encoder"
    assert s.model.lora_for("intent").target_modules == ("query", "key", "value", "dense")
    assert s.model.lora_for("ner") == s.model.lora and s.model.lora.top_layers == 6
    assert s.data.train_file[0].path.endswith("corpus/train.jsonl") and s.data.context_turns == 3
    assert set(s.data.eval_sets) == {"generated-test"}
    assert isinstance(s.trainer, TrainerSettings) and s.trainer.strategy == "auto" and s.trainer.extra == {}
    assert s.members["gemma3_ner"].task_encoder == {"ner": {"use_bidirectional_attention": True}}


def test_corpus_file_lists_and_extra_trainer_arguments(compose):
    s = run_settings(
        compose(
            "train",
            [
                "data=custom",
                f"data.train_file=[{MINI},{{path: {MINI}, repeat: 3}}]",
                f"data.val_file={MINI}",
                "+trainer.limit_train_batches=2",
                "strategy=ddp",
            ],
        )
    )
    assert s.data.train_file == (CorpusFile(MINI), CorpusFile(MINI, 3)) and s.data.test_file == (CorpusFile(MINI),)
    assert s.trainer.extra == {"limit_train_batches": 2}
    assert s.trainer.strategy["_target_"] == "lightning.pytorch.strategies.DDPStrategy"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.lora.r=0"], "model.lora.r: must be >= 1, got 0"),
        (["model.lora.dropout=1.0"], "model.lora.dropout: must be in [0.0, 1.0), got 1.0"),
        (["model.lora.target_modules=[]"], "model.lora.target_modules: name at least one module"),
        (["model.optim.lr=fast"], "model.optim.lr: expected float, got 'fast'"),
        (["model.optim.warmup_ratio=2"], "model.optim.warmup_ratio: must be in [0.0, 1.0]"),
        (["+model.optim.momentum=0.9"], "model.optim: unknown key(s) momentum"),
        (["~model.name"], "model: missing key(s) name"),
        (["+model.kind=decoder"], "model.kind: 'decoder' is not one of encoder, causal_lm"),
        (["+model.task_lora.intent.r=-1"], "model.task_lora.intent.r: must be >= 1, got -1"),
        (["+model.task_lora.response.r=2"], "model.task_lora: 'response' is not one of intent, ner"),
        (["+model.task_optim.ner.head_lr=x"], "model.task_optim.ner.head_lr: expected float, got 'x'"),
        (["+model.backbone.cache_dirr=/tmp"], "model.backbone.cache_dirr: not an argument of"),
        (["model.backbone._target_=findial.training.backbones.e5_smal"], "model.backbone._target_: cannot import"),
        (["model=local"], "model.backbone.path: missing mandatory value (???)"),
        (["data.context_turns=-1"], "data.context_turns: must be >= 0, got -1"),
        (["data.length_bucketing=maybe"], "data.length_bucketing: expected bool, got 'maybe'"),
        (["data.train_file=[{path: x.jsonl, repeat: 0}]"], "data.train_file[0].repeat: must be >= 1, got 0"),
        (["data.val_file=[{file: x.jsonl}]"], "data.val_file[0]: unknown key(s) file"),
        (["data.train_file=[]"], "data.train_file: name at least one corpus file"),
        (["+data.trian_file=x.jsonl"], "data: unknown key(s) trian_file"),
        (["trainer.max_epochs=0"], "trainer.max_epochs: must be >= 1, got 0"),
        (["trainer.enable_progress_bar=sometimes"], "trainer.enable_progress_bar: expected bool"),
        (["trainer.devices=[a]"], "trainer.devices: expected int | str | tuple[int, ...], got ['a']"),
        (["trainer.deterministic=always"], "trainer.deterministic: 'always' is not one of warn"),
        (
            ["+trainer.max_epoch=3"],
            "trainer.max_epoch: not an argument of lightning.Trainer (did you mean max_epochs?)",
        ),
        (
            ["strategy=deepspeed_zero2", "~trainer.strategy.config"],
            "trainer.strategy: missing argument(s) config of findial.training.strategies.deepspeed",
        ),
    ],
)
def test_a_bad_setting_names_the_key(compose, overrides, message):
    with pytest.raises(RunConfigError) as info:
        run_settings(compose("train", overrides))
    assert message in str(info.value)


def test_a_member_model_is_checked_under_its_own_key(compose):
    with pytest.raises(RunConfigError, match=r"members\.gemma3\.model\.lora\.r: must be >= 1"):
        run_settings(compose("pipeline", ["members.gemma3.model.lora.r=0"]))


def test_train_checks_them_before_any_data_or_model_is_loaded(compose, tmp_path):
    """The corpus files do not exist and no backbone is built: the bad setting is what is reported."""
    from findial.training.train import train_task

    nowhere = ["data=custom", "data.train_file=nowhere.jsonl", "data.val_file=nowhere.jsonl", "model=tiny"]
    cfg = compose("train", [*nowhere, "model.optim.head_dropout=1"])
    with pytest.raises(RunConfigError, match=r"model.optim.head_dropout: must be in \[0.0, 1.0\), got 1.0"):
        train_task(cfg, cfg.task, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_builder_names_nested_and_indexed_keys():
    with pytest.raises(ConfigError, match=r"lora\.target_modules\[1\]: expected str, got 3"):
        build(LoraSettings, {"r": 1, "alpha": 2, "dropout": 0.0, "target_modules": ["q", 3]}, "lora")
    with pytest.raises(ConfigError, match="lora.r: required, got null"):
        build(LoraSettings, {"r": None, "alpha": 2, "dropout": 0.0, "target_modules": ["q"]}, "lora")
    with pytest.raises(ConfigError, match="lora: expected a mapping, got 5"):
        build(LoraSettings, 5, "lora")


def test_findial_run_stops_on_a_bad_model_setting_before_training(tmp_path, monkeypatch, capsys):
    from findial.cli import main

    monkeypatch.setenv("FINDIAL_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        main(["run", "experiment=smoke", "model.lora.target_modules=[]"])
    assert info.value.code == 1 and "model.lora.target_modules: name at least one module" in capsys.readouterr().err
    assert not list(tmp_path.glob("runs/*/intent/package"))  # nothing trained
