"""Scale-out: Lightning strategies from the `strategy` config group, launch ranks, complete adapters.

The presets in ``configs/strategy`` name the factories below with ``_target_``:

    strategy=ddp                       DDPStrategy
    strategy=fsdp                      FSDPStrategy, each encoder layer its own shard unit
    strategy=deepspeed_zero2[_offload] DeepSpeedStrategy with configs/deepspeed/zero2[_offload].json
    strategy=deepspeed_zero3[_offload] DeepSpeedStrategy with configs/deepspeed/zero3[_offload].json

Under ZeRO-3 and FSDP every rank holds a shard of each parameter, so a model's
``state_dict()`` (and peft's ``save_pretrained``) returns empty or partial
tensors: :func:`consolidated_trainable_state` gathers the trainable tensors
(LoRA adapters and heads) on every rank, and rank 0 loads them into a plain
module (:func:`rebuilt_module`) for ``save_package``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

DEEPSPEED_DIR = Path(__file__).resolve().parent.parent / "configs" / "deepspeed"

# "auto" in a DeepSpeed JSON: Lightning fills these keys in from the Trainer when they are absent.
LIGHTNING_FILLS = {
    "train_micro_batch_size_per_gpu": "the data loader's batch size (task.batch_size)",
    "gradient_accumulation_steps": "trainer.accumulate_grad_batches",
    "gradient_clipping": "trainer.gradient_clip_val",
}
PRECISION_SECTIONS = ("fp16", "bf16")  # {"enabled": "auto"}: set from trainer.precision


def deepspeed_config_path(config: str | Path) -> Path:
    """A path, or the name of a file in configs/deepspeed (``zero3`` -> configs/deepspeed/zero3.json)."""
    path = Path(config).expanduser()
    if path.is_file():
        return path
    shipped = DEEPSPEED_DIR / (path.name if path.suffix == ".json" else f"{path.name}.json")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = sorted(p.stem for p in DEEPSPEED_DIR.glob("*.json"))
    raise FileNotFoundError(f"DeepSpeed config {config!r}: no such file, and not one of {names} in {DEEPSPEED_DIR}")


def load_deepspeed_config(config: str | Path) -> dict[str, Any]:
    """Read a DeepSpeed JSON config and drop the ``"auto"`` values Lightning fills in from the Trainer.

    Lightning's DeepSpeedStrategy sets the micro batch size, gradient accumulation
    and clipping from the Trainer only when the keys are absent, and fp16/bf16 from
    ``trainer.precision``; DeepSpeed itself accepts no ``"auto"``. Any other
    ``"auto"`` is an error naming the file and key.
    """
    path = deepspeed_config_path(config)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a DeepSpeed config is a JSON object, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if value == "auto" and key in LIGHTNING_FILLS:
            continue
        if key in PRECISION_SECTIONS and isinstance(value, dict) and value.get("enabled") == "auto":
            continue
        if key == "gradient_accumulation_steps":
            raise ValueError(
                f"{path}: gradient_accumulation_steps: set trainer.accumulate_grad_batches instead "
                '(Lightning owns gradient accumulation), or write "auto"'
            )
        out[key] = value
    leftover = _auto_keys(out)
    if leftover:
        raise ValueError(
            f'{path}: {", ".join(leftover)}: "auto" is only understood for '
            f"{sorted(LIGHTNING_FILLS)} and fp16/bf16.enabled; give a number"
        )
    return out


def _auto_keys(obj: Any, prefix: str = "") -> list[str]:
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in _auto_keys(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if obj == "auto" else []


def deepspeed(config: str | Path, **kwargs):
    """Lightning's DeepSpeedStrategy with a findial DeepSpeed JSON (name or path). Fitting needs CUDA."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(config=load_deepspeed_config(config), **kwargs)


def fsdp(wrap_layers: list[str] | None = None, **kwargs):
    """Lightning's FSDPStrategy; ``wrap_layers`` are dotted class names, each instance its own FSDP unit."""
    from hydra.utils import get_class
    from lightning.pytorch.strategies import FSDPStrategy

    policy = {get_class(name) for name in wrap_layers} if wrap_layers else None
    return FSDPStrategy(auto_wrap_policy=policy, **kwargs)


def is_launch_rank_zero() -> bool:
    """True in the process that owns tracking: global rank 0 as the launcher (torchrun, SLURM, Lightning) set it.

    Known before the Trainer exists, so the MLflow run is started only once per job.
    """
    for var in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(var) not in (None, ""):
            if var == "SLURM_PROCID" and int(os.environ.get("SLURM_NTASKS", "1") or 1) <= 1:
                continue  # an interactive SLURM shell: one task, not a distributed launch
            return int(os.environ[var]) == 0
    return int(os.environ.get("LOCAL_RANK", 0) or 0) == 0 and int(os.environ.get("NODE_RANK", 0) or 0) == 0


def _clean(name: str) -> str:
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(wrapper, "")
    return name


def trainable_names(module: torch.nn.Module) -> set[str]:
    """State-dict names of the trainable parameters, without FSDP / checkpoint / compile wrapper prefixes."""
    return {_clean(n) for n, p in module.named_parameters() if p.requires_grad}


def is_sharded(module: torch.nn.Module, strategy=None) -> bool:
    """Parameters partitioned across ranks (DeepSpeed ZeRO-3 or FSDP), or to be once ``strategy`` sets up."""
    if any(hasattr(p, "ds_id") for p in module.parameters()):
        return True
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy) or bool(getattr(strategy, "zero_stage_3", False))


def consolidated_trainable_state(module: torch.nn.Module, strategy=None) -> dict[str, torch.Tensor]:
    """The complete trainable tensors (adapters + heads) as CPU copies.

    A collective under ZeRO-3 and FSDP: every rank must call it. Under FSDP only
    global rank 0 receives the tensors (other ranks get an empty dict).
    """
    names = trainable_names(module)
    partitioned = [p for p in module.parameters() if p.requires_grad and hasattr(p, "ds_id")]
    if partitioned:
        import deepspeed

        with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
            return {_clean(n): p.detach().cpu().clone() for n, p in module.named_parameters() if _clean(n) in names}
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, FSDPStrategy):
        full = strategy.lightning_module_state_dict()  # full state dict on rank 0 (collective)
        return {k: v.detach().cpu().clone() for k, v in full.items() if k in names}
    return {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}


def rebuilt_module(state: dict[str, torch.Tensor], rebuild) -> torch.nn.Module:
    """``rebuild()`` (a plain, unsharded module) loaded with the consolidated trainable ``state``.

    Checks that ``state`` holds every trainable tensor at its full shape, so an
    incomplete (still sharded) adapter is an error, never a silent empty file.
    """
    fresh = rebuild()
    expected = {n: p.shape for n, p in fresh.named_parameters() if p.requires_grad}
    missing = sorted(set(expected) - set(state))
    wrong = sorted(n for n in set(expected) & set(state) if state[n].shape != expected[n])
    if missing or wrong:
        detail = [f"missing {missing[:5]}"] if missing else []
        detail += [f"{n}: {tuple(state[n].shape)} != {tuple(expected[n])}" for n in wrong[:5]]
        raise RuntimeError("incomplete trainable state (parameters still sharded?): " + "; ".join(detail))
    fresh.load_state_dict(state, strict=False)
    return fresh
