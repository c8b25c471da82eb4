"""The DeepSpeed engine on CPU (gloo, world size 1) with findial's real LoRA intent model.

Lightning's DeepSpeedStrategy needs CUDA, so these tests drive the engine
directly: ZeRO-3 shards even the LoRA adapters (persistence threshold 0), a
plain ``state_dict()`` then holds empty tensors, and the gathered adapters must
reload to the same predictions. DeepSpeed compiles its CPU ops on first use
(about a minute; cached in ~/.cache/torch_extensions); the offload presets also
compile DeepSpeedCPUAdam and are marked slow.
"""

import socket
from functools import partial
from pathlib import Path

import pytest
import torch

deepspeed = pytest.importorskip("deepspeed")

from omegaconf import OmegaConf  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from findial.data.labelbook import Glossary, LabelBook  # noqa: E402
from findial.training.datamodule import TurnDataModule  # noqa: E402
from findial.training.features import IGNORE, encode_intent  # noqa: E402
from findial.training.package import build_module, load_package, resolve_backbone, save_package  # noqa: E402
from findial.training.strategies import (  # noqa: E402
    consolidated_trainable_state,
    is_sharded,
    load_deepspeed_config,
    rebuilt_module,
)
from findial.training.train import task_meta  # noqa: E402

MINI = str(Path(__file__).parent / "fixtures" / "mini.jsonl")


@pytest.fixture(scope="module")
def single_process_group():
    """World size 1 on 127.0.0.1 and a free port, for this module (DeepSpeed caches its groups); torn down after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
        }.items():
            mp.setenv(k, v)
        yield
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.fixture()
def intent_setup(compose):
    cfg = compose("train", ["model=tiny", "data=custom", f"data.train_file={MINI}", f"data.val_file={MINI}"])
    OmegaConf.resolve(cfg)
    labelbook, glossary = LabelBook.load(cfg.labels.ontology), Glossary.load(cfg.labels.glossary)
    meta = task_meta(cfg.task, cfg.model, labelbook, cfg.data.context_turns)
    backbone = resolve_backbone(meta["backbone"])
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    encode = partial(
        encode_intent, tokenizer, max_length=cfg.task.max_length, intents=meta["intents"], emotions=meta["emotions"]
    )
    dm = TurnDataModule(
        MINI,
        MINI,
        encode,
        tokenizer,
        labelbook,
        glossary,
        batch_size=8,
        context_turns=cfg.data.context_turns,
        seed=cfg.seed,
    )
    dm.setup()
    return cfg, meta, backbone, dm


def _loss(out, batch):
    loss = torch.nn.functional.cross_entropy(out["intent_logits"], batch["intent_label"])
    if (batch["emotion_label"] != IGNORE).any():
        loss = loss + 0.5 * torch.nn.functional.cross_entropy(
            out["emotion_logits"], batch["emotion_label"], ignore_index=IGNORE
        )
    return loss


def _engine(module, config: dict, lr: float = 2e-2):
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    # What Lightning fills in from the Trainer for the "auto" keys.
    config = {**config, "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0}
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
    return engine


@torch.no_grad()
def _logits(model, batches):
    model.eval()
    return torch.cat([model(b)["intent_logits"] for b in batches])


def test_zero3_lora_training_saves_gathered_adapters_that_reload(single_process_group, intent_setup, tmp_path):
    cfg, meta, backbone, dm = intent_setup
    torch.manual_seed(0)
    module = build_module(meta, backbone)
    untrained = _logits(build_module(meta, backbone).eval(), list(dm.val_dataloader()))
    config = load_deepspeed_config("zero3")
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # shard even the small LoRA tensors
    engine = _engine(module, config)
    engine.train()
    losses = []
    for _ in range(3):
        for batch in dm.train_dataloader():
            loss = _loss(engine(batch), batch)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0]
    # The pitfall: under ZeRO-3 each rank's parameters are empty placeholders.
    assert is_sharded(module)
    naive = module.trainable_state_dict()
    lora = [k for k in naive if "lora_" in k]
    assert lora and all(naive[k].numel() == 0 for k in lora)
    with pytest.raises(RuntimeError, match="still sharded"):
        rebuilt_module(naive, lambda: build_module(meta, backbone))

    state = consolidated_trainable_state(module)  # gathered (a collective on every rank)
    assert all(state[k].numel() > 0 for k in lora)
    plain = rebuilt_module(state, lambda: build_module(meta, backbone))
    package = save_package(plain, meta, tmp_path / "package")

    trained = _logits(engine, list(dm.val_dataloader()))
    loaded, _, _ = load_package(package)
    reloaded = _logits(loaded, list(dm.val_dataloader()))
    assert torch.allclose(trained, reloaded, atol=1e-5), (trained - reloaded).abs().max()
    assert not torch.allclose(untrained, reloaded, atol=1e-3)  # training moved the predictions
    adapter = load_file(str(package / "adapter" / "adapter_model.safetensors"))
    assert len(adapter) == len(lora) and all(t.numel() > 0 for t in adapter.values())
    by_shape = sorted(tuple(t.shape) for t in adapter.values())
    assert by_shape == sorted(tuple(state[k].shape) for k in lora)


@pytest.mark.parametrize(
    "name",
    [
        "zero2",
        pytest.param("zero2_offload", marks=pytest.mark.slow),  # offload: compiles
        "zero3",
        pytest.param("zero3_offload", marks=pytest.mark.slow),
    ],
)  # DeepSpeedCPUAdam
def test_shipped_deepspeed_configs_train_the_real_model(single_process_group, intent_setup, name):
    """Each JSON under configs/deepspeed is accepted by DeepSpeed and trains (fp32 on CPU)."""
    cfg, meta, backbone, dm = intent_setup
    torch.manual_seed(0)
    engine = _engine(build_module(meta, backbone), load_deepspeed_config(name))
    assert engine.zero_optimization_stage() == int(name[4])
    batch = next(iter(dm.train_dataloader()))
    before = float(_loss(engine(batch), batch))
    for _ in range(4):
        loss = _loss(engine(batch), batch)
        engine.backward(loss)
        engine.step()
    assert float(_loss(engine(batch), batch)) < before
