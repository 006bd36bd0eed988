"""Exponential moving average of a model: the Mean Teacher's teacher.

One convention (timm ``ModelEmaV2``; Unbiased Teacher's ``_update_teacher_model``; ACRST Eq. 2)::

    teacher = decay * teacher + (1 - decay) * student

for every parameter **and** every floating-point buffer (BatchNorm running statistics); buffers
that are not floating point (``num_batches_tracked``) are copied. A student wrapped in DDP /
DataParallel is unwrapped through ``.module``. The teacher never trains: its parameters do not
require gradients and it stays in eval mode whatever ``train()`` is asked of it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / DataParallel wrapper (anything exposing ``.module``), else itself."""
    return model.module if hasattr(model, "module") else model


def _pairs(teacher: nn.Module, student: nn.Module) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]]:
    """(parameter pairs, buffer pairs) matched by name; a structural mismatch is a ValueError."""
    tp, sp = dict(teacher.named_parameters()), dict(student.named_parameters())
    tb, sb = dict(teacher.named_buffers()), dict(student.named_buffers())
    if tp.keys() != sp.keys() or tb.keys() != sb.keys():
        missing = sorted((tp.keys() ^ sp.keys()) | (tb.keys() ^ sb.keys()))
        raise ValueError(f"teacher and student differ in structure (e.g. {missing[:3]})")
    return [(tp[k], sp[k]) for k in tp], [(tb[k], sb[k]) for k in tb]


class ModelEMA(nn.Module):
    """A frozen copy of ``model`` that follows it by EMA.

    Args:
        model: the student (possibly DDP-wrapped); its deep copy becomes the teacher ``self.module``.
        decay: the keep rate in ``[0, 1]`` (0.9996: Unbiased Teacher / ACRST ``lambda_ema``).

    Being an ``nn.Module``, the teacher is part of its owner's ``state_dict`` (exact resume).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9996) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(unwrap(model))
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> "ModelEMA":
        """The teacher stays in eval mode (BatchNorm uses its EMA statistics, no dropout)."""
        return super().train(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """One EMA step towards ``model``: ``t = d * t + (1 - d) * s`` (``d`` = ``decay`` or self.decay)."""
        d = self.decay if decay is None else float(decay)
        params, buffers = _pairs(self.module, unwrap(model))
        floats = params + [(t, s) for t, s in buffers if t.is_floating_point()]
        if floats:
            ts = [t for t, _ in floats]
            ss = [s.detach().to(t.dtype) for t, s in floats]
            torch._foreach_mul_(ts, d)
            torch._foreach_add_(ts, ss, alpha=1.0 - d)
        for t, s in buffers:
            if not t.is_floating_point():
                t.copy_(s)

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Make the teacher an exact copy of ``model`` (the end of burn-in)."""
        params, buffers = _pairs(self.module, unwrap(model))
        for t, s in params + buffers:
            t.copy_(s)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class BurnInTeacher(ModelEMA):
    """The Mean Teacher schedule, one for the detector and the classifier: a frozen copy of the student that is
    not used during burn-in, becomes its exact copy at step ``burn_in`` and follows it by EMA after every later
    step (Unbiased Teacher; ACRST Eq. 2 for the detector, its SSMLL for the classifier).

    Args:
        model: the student; decay: the EMA keep rate; burn_in: supervised-only steps (>= 0).

    The steps seen are counted here (``steps_done``); the owner saves and restores them through
    :meth:`extra_state` / :meth:`load_extra_state`, the weights through its ``state_dict`` (keys ``module.*``)."""

    def __init__(self, model: nn.Module, decay: float, burn_in: int) -> None:
        super().__init__(model, decay)
        if burn_in < 0:
            raise ValueError(f"burn-in must be >= 0 steps, got {burn_in}")
        self.burn_in = int(burn_in)
        self.steps_done = 0

    @property
    def ready(self) -> bool:
        """True once burn-in is over: the teacher has been copied from the student."""
        return self.steps_done >= self.burn_in

    def follow(self, step: int, model: nn.Module) -> None:
        """After optimiser step ``step``: copy ``model`` at the end of burn-in, move towards it by EMA after."""
        self.steps_done = int(step)
        if step == self.burn_in:
            self.copy_from(model)
        elif step > self.burn_in:
            self.update(model)

    def extra_state(self) -> dict:
        return {"steps_done": self.steps_done}

    def load_extra_state(self, state: dict) -> None:
        self.steps_done = int(state.get("steps_done", 0))
