"""Tail weight averaging (training/averaging.py): which steps enter the mean, and what the model keeps."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from findial.training.averaging import TailAveraging
from findial.training.tasks import WeightAveraging
from findial.training.train import weight_averaging


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.frozen = nn.Linear(3, 3).requires_grad_(False)  # stands for the backbone: never in a checkpoint
        self.strict_loading = False  # as findial's task modules: checkpoints carry trainable tensors only
        self.register_buffer("position_ids", torch.arange(4))  # an integer buffer, as the encoder has

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.seen_in_validation.append(self.layer.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


class Recorder(Callback):
    """The weights after every optimiser step, by global step."""

    def __init__(self):
        self.after_step = {}

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.after_step[trainer.global_step] = pl_module.layer.weight.detach().clone()


def fit(averaging: TailAveraging, steps: int = 20, val: bool = False, epochs: int = 1, root=None, resume=None):
    torch.manual_seed(0)
    x = torch.randn(steps, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3 * torch.randn(steps, 1)
    model, recorder = Regression(), Recorder()
    model.seen_in_validation = []
    checkpoints = [ModelCheckpoint(dirpath=root, save_last=True)] if root else []
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=bool(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder, averaging, *checkpoints],
        val_check_interval=5 if val else None,
        limit_val_batches=1 if val else 0,
        num_sanity_val_steps=0,
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=1)
    trainer.fit(model, loader, loader if val else None, ckpt_path=resume)
    return model, recorder


def test_the_model_keeps_the_mean_of_the_snapshots_from_start_every_n_steps():
    model, recorder = fit(TailAveraging(start=0.5, every_n_steps=3))
    # 20 steps: the mean starts at step index 10 (global step 11), then every third step
    expected = torch.stack([recorder.after_step[s] for s in (11, 14, 17, 20)]).mean(0)
    assert torch.allclose(model.layer.weight, expected, atol=1e-6)
    assert not torch.allclose(model.layer.weight, recorder.after_step[20])  # not the last weights
    assert torch.equal(model.position_ids, torch.arange(4))  # integer buffers untouched


def test_validation_sees_the_current_weights_until_the_mean_holds_a_snapshot_then_the_mean():
    model, recorder = fit(TailAveraging(start=0.5, every_n_steps=1), val=True)
    # validation after steps 5 and 10: no snapshot yet (the first is at step index 10, after that validation)
    assert torch.equal(model.seen_in_validation[0], recorder.after_step[5])
    assert torch.equal(model.seen_in_validation[1], recorder.after_step[10])
    # after step 15: the mean of global steps 11..15
    mean_15 = torch.stack([recorder.after_step[s] for s in range(11, 16)]).mean(0)
    assert torch.allclose(model.seen_in_validation[2], mean_15, atol=1e-6)
    final = torch.stack([recorder.after_step[s] for s in range(11, 21)]).mean(0)
    assert torch.allclose(model.layer.weight, final, atol=1e-6)


def test_checkpoints_hold_trainable_tensors_only_and_a_resumed_run_keeps_averaging(tmp_path):
    model, recorder = fit(TailAveraging(start=0.5, every_n_steps=1), epochs=2, root=tmp_path)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    for key in ("state_dict", "current_model_state"):
        assert set(ckpt[key]) == {"layer.weight", "layer.bias"}, key
    assert torch.allclose(ckpt["state_dict"]["layer.weight"], model.layer.weight)  # the mean
    assert torch.equal(ckpt["current_model_state"]["layer.weight"], recorder.after_step[40])  # the last step
    # 40 steps, the mean from step index 20 on. Resumed for a third epoch (60 steps in all, so the mean now
    # takes step indices 30 on): the 20 snapshots of the checkpoint carry over, the 20 new ones join them.
    again = TailAveraging(start=0.5, every_n_steps=1)
    resumed, rec2 = fit(again, epochs=3, resume=str(tmp_path / "last.ckpt"))
    assert sorted(rec2.after_step) == list(range(41, 61)) and int(again._average_model.n_averaged) == 40
    late = torch.stack([rec2.after_step[s] for s in range(41, 61)])
    expected = (ckpt["state_dict"]["layer.weight"] * 20 + late.sum(0)) / 40
    assert torch.allclose(resumed.layer.weight, expected, atol=1e-5)


@pytest.mark.parametrize("strategy", [SimpleNamespace(zero_stage_3=True), SimpleNamespace(zero_stage_3=False)])
def test_it_switches_itself_off_under_sharded_parameters_only(strategy):
    averaging, module = TailAveraging(start=0.5), Regression()
    trainer = SimpleNamespace(strategy=strategy, estimated_stepping_batches=100)
    if strategy.zero_stage_3:  # DeepSpeed ZeRO-3: no unsharded copy, a warning, the last weights
        with pytest.warns(UserWarning, match="weight_averaging is off"):
            averaging.setup(trainer, module, "fit")
        assert averaging.disabled and averaging._average_model is None
        assert not averaging.should_update(step_idx=60)
        averaging.on_train_end(trainer, module)  # nothing to copy, no error
    else:
        averaging.setup(trainer, module, "fit")
        averaging.on_train_start(trainer, module)
        assert not averaging.disabled and averaging._average_model is not None
        assert averaging.should_update(step_idx=60) and not averaging.should_update(step_idx=49)


def test_config_switches_it_on_and_rejects_bad_values():
    assert weight_averaging(WeightAveraging(None, 10)) == []
    assert weight_averaging(WeightAveraging()) == []
    (cb,) = weight_averaging(WeightAveraging(0.25, 4))
    assert isinstance(cb, TailAveraging) and (cb.start, cb.every_n_steps) == (0.25, 4)
    with pytest.raises(ValueError, match="start"):
        TailAveraging(start=1.0)
    with pytest.raises(ValueError, match="every_n_steps"):
        TailAveraging(start=0.5, every_n_steps=0)
