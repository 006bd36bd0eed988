"""Exact resume for the methods with state beyond one detector: a real ``minedet train`` process is
killed with SIGKILL mid-run, resumed in-process from its last checkpoint, and must end with every
tensor of an uninterrupted run's final checkpoint (student, teacher, optimiser, scheduler), bit for bit.

Same pattern as ``tests/test_trainer.py::test_sigkill_then_resume_reproduces_uninterrupted_run``
(which covers ``supervised``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from minedet.run import run_training
from minedet.engine.checkpoint import load_checkpoint
from tests.conftest import tiny_config
from tests.helpers import kill_mid_run

STEPS = 6


def _flatten(obj, prefix=""):
    """Every tensor (and plain value) of a nested checkpoint dict, keyed by its path."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}/{i}"))
    else:
        out[prefix] = obj
    return out


def _assert_same_final_state(a_path: Path, b_path: Path) -> None:
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    assert a["step"] == b["step"] == STEPS
    for part in ("method", "method_extra", "optimizer", "scheduler"):
        fa, fb = _flatten(a[part]), _flatten(b[part])
        assert fa.keys() == fb.keys(), part
        for k in fa:
            if isinstance(fa[k], torch.Tensor):
                assert torch.equal(fa[k], fb[k]), f"{part}{k}"
            else:
                assert fa[k] == fb[k], f"{part}{k}"


def _pseudo_boxes(out_dir: Path, key: str) -> list[float]:
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if r.get(key) is not None]


def _sigkill_resume(tiny_digits, tmp_path: Path, min_saves: int, pseudo_key: str, **over) -> int:
    over = {"data__val": None, **over}  # no evaluation: the weights are what is compared
    full = tiny_config(tiny_digits, tmp_path / "full", train__max_steps=STEPS, train__ckpt_every=2, **over)
    run_training(full, quiet=True)
    # pseudo-labels were really made and used (tau is far below the untrained detector's scores)
    assert sum(_pseudo_boxes(tmp_path / "full", pseudo_key)) > 0

    killed_cfg = tiny_config(tiny_digits, tmp_path / "killed", train__max_steps=STEPS, train__ckpt_every=2, **over)
    killed_at = kill_mid_run(killed_cfg, tmp_path, min_saves=min_saves)
    assert 0 < killed_at < STEPS, f"the kill must land mid-run (checkpoint at step {killed_at})"
    last = tmp_path / "killed" / "checkpoints" / "last.pt"
    resumed = tiny_config(tiny_digits, tmp_path / "killed", train__max_steps=STEPS, train__ckpt_every=2, **over)
    result = run_training(resumed, quiet=True, resume=str(last))
    assert result["steps"] == STEPS
    _assert_same_final_state(tmp_path / "full" / "checkpoints" / "last.pt", last)
    return killed_at


def test_co_mining_sigkill_then_resume_reproduces_uninterrupted_run(tiny_digits, tmp_path):
    """Both branches, co-generation on (a low tau so boxes are actually mined and cross-supervise)."""
    _sigkill_resume(tiny_digits, tmp_path, min_saves=1, pseudo_key="pseudo/a_boxes_per_image",
                    method__name="co_mining", method__tau=0.005, method__paper=True,
                    method__topk=50, method__max_dets=10)


def test_mean_teacher_sigkill_after_burn_in_then_resume_reproduces_uninterrupted_run(tiny_digits, semi_split, tmp_path):
    """burn_in=2: the kill waits for the second checkpoint (step >= 4), so the teacher exists and has
    followed the student by EMA; teacher, student, steps_done and optimiser must all come back."""
    killed_at = _sigkill_resume(
        tiny_digits, tmp_path, min_saves=2, pseudo_key="pseudo/boxes_per_image",
        data__train=str(semi_split["labelled"]), data__unlabelled=str(semi_split["unlabelled"]),
        data__unlabelled_images=str(tiny_digits.image_root), data__hidden=str(semi_split["hidden"]),
        method__name="mean_teacher", method__burn_in=2, method__tau=0.005, method__paper=True, method__max_dets=10,
    )
    assert killed_at > 2, "the kill landed after burn-in"
    ck = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert ck["method_extra"]["steps_done"] == STEPS
    teacher = {k: v for k, v in ck["method"].items() if k.startswith("source.ema.")}
    student = {k: v for k, v in ck["method"].items() if k.startswith("detector.")}
    assert teacher and student
    # the teacher is an EMA of the student, not a copy of it
    assert any(not torch.equal(teacher["source.ema.module." + k[len("detector."):]], v)
               for k, v in student.items() if v.is_floating_point() and "source.ema.module." + k[len("detector."):] in teacher)


def test_mixed_sigkill_after_burn_in_then_resume_reproduces_uninterrupted_run(tiny_digits, tmp_path):
    """All three streams from one flagged file (25 % complete, 50 % sparse, the rest unlabelled); the
    kill lands after burn-in, so teacher, student and the three loaders' positions must all come back."""
    killed_at = _sigkill_resume(
        tiny_digits, tmp_path, min_saves=2, pseudo_key="pseudo/boxes_per_image",
        data__mixed={"percent": 25, "sparse": 50, "mode": "hard", "seed": 0}, data__cache_dir=str(tmp_path / "cache"),
        method__name="mixed", method__burn_in=2, method__tau=0.005, method__ignore_below=0.001, method__max_dets=10,
    )
    assert killed_at > 2, "the kill landed after burn-in"
