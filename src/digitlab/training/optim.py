"""Optimizers and learning-rate schedules from the config.

Usage::

    opt = build_optimizer(cfg.optim, model.parameters())
    sched = build_scheduler(opt, cfg.schedule, steps_per_epoch=len(loader), n_epochs=cfg.train.epochs)
    ...; opt.step(); sched.step()            # the schedule advances once per batch

Every schedule is a pure function of the step (a ``LambdaLR``), so a resumed run lands on
exactly the learning rate an uninterrupted one would have.
"""

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from digitlab.core.config import OptimSection, ScheduleSection

ONECYCLE_START_RATIO = 1 / 25  # OneCycle's customary initial lr = max_lr / 25


def build_optimizer(cfg: OptimSection, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam, AdamW or Adadelta with the config's lr and weight decay."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.Adadelta(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: ScheduleSection, step: int, steps_per_epoch: int, n_epochs: int) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based)."""
    total = max(1, steps_per_epoch * n_epochs)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.name == "onecycle":
        rise = max(1, int(cfg.pct_start * total))
        if step < rise:
            return ONECYCLE_START_RATIO + (1 - ONECYCLE_START_RATIO) * step / rise
        t = min(1.0, (step - rise) / max(1, total - rise))
        return cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.name == "cosine":
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.name == "step":
        return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
    return 1.0


def build_scheduler(opt: torch.optim.Optimizer, cfg: ScheduleSection, *, steps_per_epoch: int,
                    n_epochs: int) -> LambdaLR:
    """A per-step ``LambdaLR`` for OneCycle, cosine or step decay, with optional linear warmup."""
    return LambdaLR(opt, lambda step: lr_factor(cfg, step, steps_per_epoch, n_epochs))
