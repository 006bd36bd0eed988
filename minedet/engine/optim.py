"""A run's optimiser and learning-rate schedule, from the ``train`` config section.

Built where a run is assembled (:mod:`minedet.run`: the training run and each pre-stage) and handed to the
:class:`~minedet.engine.trainer.Trainer`, which steps them and saves and restores their state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from minedet.config import TrainConfig
from minedet.errors import MinedetError


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` ("sgd" with ``cfg.momentum``, or "adamw") at ``cfg.lr`` over ``params``: weight decay
    ``cfg.weight_decay`` on weights, none on biases and norm parameters (1-d)."""
    decay, no_decay = [], []
    for p in params:
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise MinedetError(f"train.optimizer must be sgd or adamw, got {cfg.optimizer!r}")


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """The optimiser's kind as ``train.optimizer`` names it ("sgd", "adamw"): what a checkpoint records, so that a
    run resumes only with the kind it was trained with."""
    return type(optimizer).__name__.lower()


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup from ``warmup_factor`` to 1, then cosine to 0 or step decay at ``milestones``."""
    if step < cfg.warmup_steps:
        a = step / max(1, cfg.warmup_steps)
        warm = cfg.warmup_factor * (1 - a) + a
    else:
        warm = 1.0
    if cfg.schedule == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * min(step, cfg.max_steps) / max(1, cfg.max_steps)))
    elif cfg.schedule == "step":
        decay = cfg.gamma ** sum(step >= m for m in cfg.milestones)
    elif cfg.schedule == "constant":
        decay = 1.0
    else:
        raise MinedetError(f"train.schedule must be cosine, step or constant, got {cfg.schedule!r}")
    return warm * decay


def optimizer_and_schedule(module: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer,
                                                                         torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser (:func:`build_optimizer`) over ``module``'s trainable parameters and its schedule, the
    learning rate ``cfg.lr`` x :func:`lr_factor` of the step (read from ``cfg`` at every step)."""
    optimizer = build_optimizer([p for p in module.parameters() if p.requires_grad], cfg)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
