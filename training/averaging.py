"""Tail weight averaging: the package holds the mean of the weights over the last part of training.

Averaging the weights a run passes through (stochastic weight averaging) lands in a flatter region of
the loss than the last step does, which tends to carry better to phrasings the training set lacks.
Built on Lightning's ``WeightAveraging`` (torch ``AveragedModel``): a snapshot every ``every_n_steps``
optimiser steps from ``start`` x all steps to the end, an equal-weight running mean. Validation during
training and the saved package see the mean once it holds a snapshot; before that, the current weights.
Checkpoints stay lean: both the mean and the current weights are kept for the trainable tensors only.
Under strategies that shard parameters (DeepSpeed ZeRO-3, FSDP) ``AveragedModel``, an unsharded copy,
cannot follow them: there it switches itself off with a warning and the package holds the last weights.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_warn

from .strategies import is_sharded, trainable_names


class TailAveraging(WeightAveraging):
    def __init__(self, start: float = 0.5, every_n_steps: int = 10):
        if not 0.0 <= float(start) < 1.0:
            raise ValueError(f"weight_averaging.start={start!r}: a fraction of the training steps in [0, 1)")
        if int(every_n_steps) < 1:
            raise ValueError(f"weight_averaging.every_n_steps={every_n_steps!r}: expected >= 1")
        super().__init__(use_buffers=False)  # the encoder's buffers are integer position / type ids
        self.start, self.every_n_steps = float(start), int(every_n_steps)
        self._first_step = 0  # set when training starts, from the number of optimiser steps
        self.disabled = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and is_sharded(pl_module, trainer.strategy):
            rank_zero_warn(
                f"task.weight_averaging is off under {type(trainer.strategy).__name__} (sharded "
                "parameters): the package holds the last weights"
            )
            self.disabled = True
            return
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer, pl_module) -> None:
        self._first_step = int(self.start * trainer.estimated_stepping_batches)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None or self.disabled:
            return False
        return step_idx >= self._first_step and (step_idx - self._first_step) % self.every_n_steps == 0

    def _has_mean(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._has_mean():
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._has_mean():
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._has_mean():
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)  # the mean in state_dict, current_model_state
        names = trainable_names(pl_module)  # the frozen backbone is rebuilt from its config, never saved
        for key in ("state_dict", "current_model_state"):
            if key in checkpoint:
                checkpoint[key] = {k: v for k, v in checkpoint[key].items() if k in names}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._average_model is None or "current_model_state" not in checkpoint:
            return super().on_load_checkpoint(trainer, pl_module, checkpoint)
        mean = {"module." + k: v for k, v in checkpoint["state_dict"].items()} | checkpoint.get("averaging_state", {})
        self._average_model.load_state_dict(mean, strict=False)  # trainable tensors + n_averaged
        pl_module.load_state_dict(checkpoint["current_model_state"], strict=False)
