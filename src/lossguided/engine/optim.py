"""Ranger (RAdam + Lookahead, timm's `lookahead_radam`) and the per-batch cosine decay of the paper's eq. (2)."""

from __future__ import annotations

import math

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from lossguided.config import SCHEDULES


def create_optimizer(
    model: nn.Module, *, name: str = "lookahead_radam", lr: float = 1e-4, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Any optimizer timm knows by name (`timm.optim.list_optimizers()`); the paper's Ranger is the default."""
    from lossguided.config import ConfigError

    try:
        return create_optimizer_v2(model, opt=name, lr=lr, weight_decay=weight_decay)
    except (ValueError, AssertionError, KeyError) as e:  # timm's message for an unknown name varies by version
        raise ConfigError(f"optimizer {name!r}: {e}; see timm.optim.list_optimizers()") from None


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    lr_min_ratio: float = 0.1,
    warmup_steps: int = 0,
    sched: str = "cosine",
    steps_per_epoch: int = 1,
):
    """timm's schedule stepped per batch (`step_update(t)`). "cosine" is eq. (2), ending at lr * lr_min_ratio; the
    others come from timm's `create_scheduler_v2` with their timm defaults (step: x0.1 every third of the run)."""
    base_lr = optimizer.param_groups[0]["lr"]
    if sched not in SCHEDULES:
        raise ValueError(f"schedule {sched!r} is not one of {SCHEDULES}")
    if sched != "cosine":
        from timm.scheduler import create_scheduler_v2

        spe = max(steps_per_epoch, 1)
        epochs = max(total_steps // spe, 1)
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=sched,
            num_epochs=epochs,
            decay_epochs=max(epochs / 3, 1),
            decay_milestones=[max(round(epochs * f), 1) for f in (0.5, 0.75)],
            min_lr=base_lr * lr_min_ratio,
            warmup_lr=base_lr * lr_min_ratio,
            warmup_epochs=warmup_steps / spe,
            step_on_epochs=False,
            updates_per_epoch=spe,
        )
        return scheduler
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total_steps, 1),
        lr_min=base_lr * lr_min_ratio,
        warmup_t=warmup_steps,
        warmup_lr_init=base_lr * lr_min_ratio,
        t_in_epochs=False,
        cycle_limit=1,
    )


def cosine_lr(t: int, *, total: int, lr0: float, lr_min: float) -> float:
    """Equation (2), for reference and tests: 0.5 (1 + cos(t pi / T)) (lr0 - lr_min) + lr_min."""
    return 0.5 * (1 + math.cos(math.pi * min(t, total) / total)) * (lr0 - lr_min) + lr_min
