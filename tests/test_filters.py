"""Pseudo-label filters and quality measurement."""

from __future__ import annotations

import torch

from minedet.pseudo import filters as pf
from minedet.pseudo.quality import QualityCounts, match
from minedet.structures import Target


def T(boxes, labels, scores=None):
    return Target(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64),
                  None if scores is None else torch.tensor(scores, dtype=torch.float32))


def test_score_filter_is_strict_and_pure():
    t = T([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 3, 3]], [0, 1, 1], [0.6, 0.7, 0.2])
    out = pf.by_score(t, 0.6)
    assert out.scores.tolist() == [0.699999988079071]
    assert len(t) == 3  # input untouched


def test_nms_is_classwise():
    t = T([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]], [0, 0, 1], [0.9, 0.8, 0.7])
    out = pf.nms(t, 0.5)
    assert sorted(out.labels.tolist()) == [0, 1] and len(out) == 2


def test_drop_overlapping_same_class_only():
    gt = T([[0, 0, 10, 10]], [0])
    t = T([[0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40]], [0, 1, 0], [0.9, 0.9, 0.9])
    out = pf.drop_overlapping(t, gt, 0.4, same_class=True)
    assert out.labels.tolist() == [1, 0]  # same-class duplicate removed; other class kept
    any_class = pf.drop_overlapping(t, gt, 0.4, same_class=False)
    assert len(any_class) == 1


def test_drop_overlapping_threshold_is_strict():
    gt = T([[0, 0, 10, 10]], [0])
    t = T([[0, 0, 10, 4]], [0], [0.9])  # IoU exactly 0.4 -> kept (rule: drop if > theta2)
    assert len(pf.drop_overlapping(t, gt, 0.4)) == 1


def test_filters_on_empty_inputs():
    e = Target.empty()
    gt = T([[0, 0, 10, 10]], [0])
    for f in (lambda t: pf.by_score(t, 0.5), lambda t: pf.nms(t, 0.5), lambda t: pf.top_k(t, 3),
              lambda t: pf.drop_overlapping(t, gt, 0.4), lambda t: pf.min_size(t, 2)):
        assert len(f(e)) == 0
    t = T([[0, 0, 10, 10]], [0], [0.9])
    assert len(pf.drop_overlapping(t, Target.empty(), 0.4)) == 1


def test_score_then_nms_then_top_k():
    t = T([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0, 0, 0, 1], [0.9, 0.8, 0.3, 0.7])
    out = pf.top_k(pf.nms(pf.by_score(t, 0.6), 0.5), 1)
    assert len(out) == 1 and float(out.scores[0]) == 0.8999999761581421


def test_multilabel_veto_and_min_size():
    t = T([[0, 0, 10, 10], [0, 0, 1, 10]], [0, 1], [0.9, 0.9])
    assert pf.multilabel_veto(t, torch.tensor([0.5, 0.1]), 0.2).labels.tolist() == [0]
    assert pf.min_size(t, 2).labels.tolist() == [0]


def test_as_pseudo_sets_flags():
    t = pf.as_pseudo(T([[0, 0, 10, 10]], [0], [0.9]), regress=False)
    assert t.flag("pseudo").tolist() == [True] and t.flag("regress").tolist() == [False]


def test_quality_counts_precision_recall_miou():
    hidden = T([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])
    pseudo = T([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0, 0, 1], [0.9, 0.8, 0.7])
    tp, ious = match(pseudo, hidden)
    assert tp == 1 and ious == [1.0]  # the second pseudo box has the wrong class
    q = QualityCounts()
    q.add(pseudo, hidden)
    q.add(Target.empty(), T([[0, 0, 5, 5]], [0]))  # an image where nothing was mined
    assert q.precision == 1 / 3 and q.recall == 1 / 3 and q.miou == 1.0
    assert q.per_class_pseudo == {0: 2, 1: 1}


def test_false_pseudo_boxes_are_told_apart_by_what_they_lie_on():
    """duplicate, wrong class, misplaced on a missing object, on a labelled object, background; with the precision the
    shares sum to 1, and an image with no hidden box counts its boxes too."""
    hidden = T([[0, 0, 10, 10], [20, 0, 30, 10]], [0, 1])
    labelled = T([[0, 40, 20, 60]], [0])
    pseudo = T([[0, 0, 10, 10],     # true
                [0, 0, 10, 9],      # a second box on the same missing object: duplicate
                [20, 0, 30, 10],    # the other missing object, named class 0: class
                [5, 0, 15, 10],     # half on the first missing object (IoU 1/3): misplaced
                [10, 40, 30, 60],   # half on the labelled box: labelled
                [70, 70, 80, 80]],  # background
               [0, 0, 0, 0, 0, 2], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    q = QualityCounts()
    q.add(pseudo, hidden, labelled=labelled)
    assert q.false == {"duplicate": 1, "class": 1, "misplaced": 1, "labelled": 1, "background": 1}
    q.add(T([[10, 40, 30, 60]], [0], [0.9]), Target.empty())  # no hidden box; without the labels: background
    assert q.false["background"] == 2 and q.n_pseudo == 7
    d = q.as_dict()
    assert abs(d["precision"] + sum(v for k, v in d.items() if k.startswith("false_")) - 1) < 1e-9
    assert d["false_background"] == 2 / 7
    assert all(v != v for k, v in QualityCounts().as_dict().items() if k.startswith("false_"))  # nothing mined: nan


def test_against_hidden_reads_the_labelled_boxes_in_the_views_frame():
    """The hidden truth is mapped into the view's frame (a horizontal flip of a 100-px image); the labelled boxes
    come in that frame already."""
    from minedet.data.transforms import BoxMap
    from minedet.pseudo.semantics import against_hidden

    flip = BoxMap(sx=-1.0, tx=100.0, size=(100, 100))
    hidden = T([[0, 0, 10, 10]], [0])  # file frame: at x 90-100 in the view
    labelled = T([[0, 40, 20, 60]], [0])  # view frame
    pseudo = T([[90, 0, 100, 10], [10, 40, 30, 60], [95, 0, 105, 10]], [0, 0, 0], [0.9, 0.8, 0.7])
    q = against_hidden([pseudo], [hidden], [flip], [labelled])
    assert q.tp == 1 and q.false == {"labelled": 1, "misplaced": 1}
    assert against_hidden([pseudo], [hidden], [flip]).false == {"background": 1, "misplaced": 1}


def test_match_is_one_to_one():
    hidden = T([[0, 0, 10, 10]], [0])
    pseudo = T([[0, 0, 10, 10], [0, 0, 10, 9]], [0, 0], [0.9, 0.95])
    tp, ious = match(pseudo, hidden)
    assert tp == 1 and ious[0] == 0.8999999761581421  # the higher score claims the box first
