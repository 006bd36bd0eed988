"""Adding a self-training method is one file and one registry line.

``FrozenTeacher`` below is the whole of a new method: a source (the initial student, frozen, labels the unlabelled
weak views) and the groups. The template supplies the known filter, the pseudo-label rule (with the ignored band),
the box transport into the strong views, the losses, the measurement against hidden truth and the run's wiring;
the registry line is the ``monkeypatch.setitem`` below.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from minedet.data.datasets import StreamBatch
from minedet.data.transforms import BoxMap, Compose
from minedet.methods.self_training import (Group, Mined, SelfTraining, SelfTrainingOptions, StepInput, TeacherSource,
                                           split_labels)
from minedet.pseudo.semantics import PseudoRule
from minedet.structures import Target


class Frozen(TeacherSource):
    """The initial weights, frozen, label the unlabelled weak views."""

    def __init__(self, detector) -> None:
        super().__init__()
        self.frozen = (copy.deepcopy(detector).eval(),)  # a tuple: not part of the method's state

    @torch.no_grad()
    def mine(self, inp: StepInput) -> list[Mined]:
        weak = inp.batch["unlabelled"].views["weak"]
        raw = self.frozen[0].predict([v.image for v in weak], score_thresh=inp.floor)
        ids = [v.target.image_id for v in weak]
        known = [v.target for v in weak]
        _, labels = split_labels(inp, raw, known, inp.rejected("unlabelled", weak), ids)
        return [Mined("teacher", "unlabelled", tuple(ids), [v.map for v in weak], known, raw, labels)]


class FrozenTeacher(SelfTraining):
    """Self-training with a teacher that never changes."""

    name = "frozen_teacher"

    def __init__(self, detector, options: SelfTrainingOptions | None = None) -> None:
        super().__init__(detector, options or SelfTrainingOptions(), Frozen(detector))

    def streams(self) -> dict:
        return {"labelled": {"strong": self.strong_view()},
                "unlabelled": {"weak": Compose([]), "strong": self.strong_view()}}

    def groups(self, batch: dict) -> tuple[Group, ...]:
        return (Group("labelled", ("strong",), "sup"),
                Group("unlabelled", ("strong",), "unsup", self.options.lambda_unsup, source="teacher"))


def test_a_new_method_is_one_class_and_one_registry_line(tiny_digits, semi_split, tmp_path, monkeypatch):
    from minedet import registry
    from minedet.run import run_training
    from tests.conftest import tiny_config

    monkeypatch.setitem(registry.METHODS, "frozen_teacher", (FrozenTeacher, SelfTrainingOptions))
    out = tmp_path / "ft"
    cfg = tiny_config(tiny_digits, out, data__train=str(semi_split["labelled"]),
                      data__unlabelled=str(semi_split["unlabelled"]), data__unlabelled_images=str(tiny_digits.image_root),
                      data__hidden=str(semi_split["hidden"]), method__name="frozen_teacher", method__tau=0.01,
                      method__ignore_below=0.005, train__max_steps=2, train__ckpt_every=0)
    result = run_training(cfg, quiet=True)
    assert result["steps"] == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert all("unsup/classification" in r and "sup/classification" in r for r in train)
    assert all("quality/n_hidden" in r for r in train), "measured against the hidden truth by the template"
    assert json.loads((out / "eval.json").read_text())["method"] == "frozen_teacher"


def test_the_rule_splits_detections_three_ways_and_never_mutates_them():
    det = Target(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]), torch.tensor([0, 1, 1]),
                 torch.tensor([0.9, 0.5, 0.1]), image_id=7)
    labels = PseudoRule(tau=0.7, ignore_below=0.3)([det], [7])
    (conf,), (ign,) = labels.confident, labels.ignored
    assert conf.labels.tolist() == [0] and conf.flag("pseudo").all() and not conf.flag("regress").any()
    assert ign.scores.tolist() == [0.5] and ign.flag("weight").tolist() == [0.0] and not ign.flag("regress").any()
    (both,) = labels.targets()
    assert len(both) == 2, "the box at 0.1 is background: not in the targets"
    assert len(det) == 3 and not det.flags, "input untouched"
    off = PseudoRule(tau=0.7)([det], [7])
    assert off.ignored is None and [len(t) for t in off.targets()] == [1]
    vetoed = PseudoRule(tau=0.0, stages=(lambda t, i: t.select(t.labels != 1),))([det], [7])
    assert vetoed.confident[0].labels.tolist() == [0], "an extra stage (ACRST's veto) sees the image id and the boxes"


def test_a_confident_box_another_class_contests_is_ignored_by_the_rule():
    """dispute: the 0.9 box of class 0 is contested by a class-1 box on it at 0.5 (>= 0.5 x 0.9): ignored, not
    taught, and not background; a contest from another view's detections counts the same; the floor goes down so
    that the contesting class is decoded."""
    det = Target(torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([0, 1, 1]),
                 torch.tensor([0.9, 0.5, 0.8]), image_id=7)
    rule = PseudoRule(tau=0.7, dispute=0.5)
    assert rule.floor == pytest.approx(0.35) and PseudoRule(tau=0.7, ignore_below=0.3, dispute=0.5).floor == 0.15
    labels = rule([det], [7])
    assert labels.confident[0].labels.tolist() == [1] and labels.confident[0].scores.tolist() == [pytest.approx(0.8)]
    assert labels.ignored[0].labels.tolist() == [0] and labels.ignored[0].flag("weight").tolist() == [0.0]
    assert [t.labels.tolist() for t in labels.disputed] == [[0]]
    assert [len(t) for t in PseudoRule(tau=0.7)([det], [7]).confident] == [2] and PseudoRule(tau=0.7)([det], [7]).disputed is None
    alone = det.select(torch.tensor([True, False, True]))
    other_view = Target(torch.tensor([[21.0, 20, 31, 30]]), torch.tensor([2]), torch.tensor([0.6]), image_id=7)
    contested = rule([alone], [7], contest=[other_view])
    assert contested.confident[0].labels.tolist() == [0], "the class-2 box of the other view contests the 0.8 one"


def test_class_thresholds_follow_the_scores_of_labelled_boxes():
    from minedet.pseudo.semantics import ClassThresholds

    gt = Target(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([0, 1]))
    th = ClassThresholds(num_classes=3, base=0.7, momentum=0.5)
    assert th.values().tolist() == pytest.approx([0.7, 0.7, 0.7]), "nothing seen yet: the base threshold"
    seen = Target(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([0, 1]), torch.tensor([0.8, 0.5]))
    th.observe([seen], [gt])
    assert th.values().tolist() == pytest.approx([0.8, 0.5, 0.7])
    lower = Target(seen.boxes, seen.labels, torch.tensor([0.4, 0.5]))
    th.observe([lower], [gt])  # the model's scores on known class-0 objects drop: its threshold follows
    assert th.values().tolist() == pytest.approx([0.6, 0.5, 0.7])
    only1 = gt.select(gt.labels == 1)
    th.observe([Target.empty()], [only1])  # labelled objects not found at all: clamped at the lower bound
    th.observe([Target.empty()], [only1])
    assert th.values().tolist() == pytest.approx([0.6, 0.3, 0.7])
    rule = PseudoRule(tau=0.7, thresholds=th)
    det = Target(torch.tensor([[0.0, 0, 5, 5], [9, 9, 14, 14]]), torch.tensor([0, 1]), torch.tensor([0.55, 0.35]))
    assert rule.floor == pytest.approx(0.3)
    assert rule([det], [0]).confident[0].labels.tolist() == [1], "class 1 (threshold 0.3) passes at 0.35, class 0 not"


def test_adaptive_co_mining_logs_its_class_thresholds_and_resumes_them():
    from minedet.methods.co_mining import CoMining, CoMiningOptions
    from tests.helpers import random_targets, tiny_detector
    from minedet.data.datasets import View

    det = tiny_detector("retinanet").train()
    size = 64
    targets = random_targets(2, size)
    views = [View(torch.rand(3, size, size), t, BoxMap(size=(size, size))) for t in targets]
    batch = {"labelled": StreamBatch([0, 1], [(0, 0)] * 2, {"o": views, "a": views})}
    m = CoMining(det, CoMiningOptions(adaptive=True))
    m(batch)
    logged = m.log_metrics()
    assert {f"pseudo/tau_{k}" for k in range(3)} <= set(logged)
    state = m.extra_state()
    fresh = CoMining(tiny_detector("retinanet"), CoMiningOptions(adaptive=True))
    fresh.load_extra_state(state)
    assert torch.equal(fresh.rule.thresholds.values(), m.rule.thresholds.values())
