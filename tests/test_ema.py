"""ModelEMA: one convention, t = d * t + (1 - d) * s, for parameters and floating buffers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from minedet.models.ema import ModelEMA


def _toy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))


class _Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the real model is ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def _perturb(m: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    m.train()
    m(torch.randn(8, 4, generator=g))  # moves BatchNorm running stats and num_batches_tracked


def test_update_is_the_exact_formula_for_parameters_and_buffers():
    student = _toy()
    ema = ModelEMA(student, decay=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    _perturb(student)
    ema.update(student)
    s = student.state_dict()
    for k, t in ema.module.state_dict().items():
        if t.is_floating_point():
            expect = 0.9 * before[k] + 0.1 * s[k]
            assert torch.allclose(t, expect, atol=1e-6), k
            if not torch.equal(before[k], s[k]):
                assert not torch.allclose(t, s[k]), f"{k} must not jump to the student"
        else:  # num_batches_tracked is copied
            assert torch.equal(t, s[k]), k
    assert int(ema.module[1].num_batches_tracked) == 1
    assert not torch.equal(ema.module[1].running_mean, before["1.running_mean"]), "buffers follow the student"


def test_decay_override_and_extremes():
    student = _toy()
    ema = ModelEMA(student, decay=1.0)
    t0 = [p.clone() for p in ema.module.parameters()]
    _perturb(student)
    ema.update(student)
    assert all(torch.equal(a, b) for a, b in zip(t0, ema.module.parameters())), "decay 1 keeps the teacher"
    ema.update(student, decay=0.0)
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), ema.module.parameters()))


def test_copy_from_is_exact_and_teacher_is_frozen_and_in_eval():
    student = _toy()
    ema = ModelEMA(student, decay=0.9996)
    _perturb(student)
    ema.copy_from(student)
    for (k, a), b in zip(ema.module.state_dict().items(), student.state_dict().values()):
        assert torch.equal(a, b), k
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in student.parameters()), "the student is not touched"
    owner = nn.ModuleDict({"student": student, "ema": ema})
    owner.train()
    assert not ema.training and not ema.module.training and not ema.module[1].training
    assert any(k.startswith("ema.module.") for k in owner.state_dict()), "the teacher is saved with its owner"


def test_ddp_like_wrapper_is_unwrapped():
    student = _toy()
    ema = ModelEMA(_Wrapper(student), decay=0.5)
    assert set(ema.module.state_dict()) == set(student.state_dict()), "no 'module.' prefix in the teacher"
    before = [p.clone() for p in ema.module.parameters()]
    _perturb(student)
    ema.update(_Wrapper(student))
    for t0, t, s in zip(before, ema.module.parameters(), student.parameters()):
        assert torch.allclose(t, 0.5 * t0 + 0.5 * s, atol=1e-6)
    ema.copy_from(_Wrapper(student))
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), student.parameters()))


def test_mismatched_structure_and_bad_decay_are_errors():
    ema = ModelEMA(_toy())
    with pytest.raises(ValueError, match="structure"):
        ema.update(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(_toy(), decay=1.5)


def test_the_student_is_never_modified_by_an_update():
    student = _toy()
    ema = ModelEMA(student, decay=0.9)
    _perturb(ema.module, seed=3)
    snapshot = {k: v.clone() for k, v in student.state_dict().items()}
    ema.update(student)
    for k, v in student.state_dict().items():
        assert torch.equal(v, snapshot[k]), k


def test_burn_in_teacher_copies_at_burn_in_then_follows_and_resumes():
    """The one Mean Teacher schedule (detector and classifier): unused and unchanged during burn-in, an exact copy
    at step burn_in, an EMA step after; its step count comes back through extra_state."""
    from minedet.models.ema import BurnInTeacher

    student = torch.nn.Linear(2, 1)
    t = BurnInTeacher(student, decay=0.5, burn_in=2)
    start = t.module.weight.detach().clone()
    with torch.no_grad():
        student.weight.fill_(1.0)
    t.follow(1, student)
    assert not t.ready and torch.equal(t.module.weight, start)
    t.follow(2, student)
    assert t.ready and torch.equal(t.module.weight, student.weight)
    with torch.no_grad():
        student.weight.fill_(3.0)
    t.follow(3, student)
    assert torch.allclose(t.module.weight, torch.full_like(start, 2.0))
    fresh = BurnInTeacher(student, decay=0.5, burn_in=2)
    fresh.load_extra_state(t.extra_state())
    assert fresh.ready and fresh.steps_done == 3
    with pytest.raises(ValueError, match="burn-in"):
        BurnInTeacher(student, decay=0.5, burn_in=-1)
