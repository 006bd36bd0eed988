"""Pseudo-label filters: pure ``Target -> Target`` steps.

Shared by Co-mining's co-generation, the teacher-student methods (Mean Teacher, ACRST) and
``minedet mine`` (whose order of them is one :class:`~minedet.pseudo.semantics.PseudoRule`,
:func:`minedet.mining.mine_rule`). Boxes are ``[x1, y1, x2, y2]`` in one image's pixels; every step
returns a new Target and never mutates its input.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, box_iou

from minedet.structures import Target


def by_score(t: Target, thresh: float) -> Target:
    """Keep boxes with score > ``thresh`` (Co-mining Alg. 1 line 8: remove if score < tau)."""
    if t.scores is None or len(t) == 0:
        return t
    return t.select(t.scores > thresh)


def nms(t: Target, iou: float) -> Target:
    """Class-wise NMS at IoU ``iou``, result sorted by descending score."""
    if len(t) == 0:
        return t
    scores = t.scores if t.scores is not None else torch.ones(len(t), device=t.boxes.device)
    return t.select(batched_nms(t.boxes.float(), scores.float(), t.labels, iou))


def top_k(t: Target, k: int) -> Target:
    """The ``k`` highest-scoring boxes."""
    if len(t) <= k:
        return t
    scores = t.scores if t.scores is not None else torch.ones(len(t), device=t.boxes.device)
    return t.select(scores.topk(k).indices)


def drop_overlapping(t: Target, gt: Target, iou: float, *, same_class: bool = True) -> Target:
    """Drop boxes whose IoU with a ground-truth box (of the same class when ``same_class``) is
    > ``iou`` (Co-mining Alg. 1 line 13, theta2 = 0.4; the release compares same-class boxes)."""
    if len(t) == 0 or len(gt) == 0:
        return t
    m = box_iou(t.boxes.float(), gt.boxes.to(t.boxes.device).float())
    if same_class:
        m = m * (t.labels[:, None] == gt.labels.to(t.labels.device)[None, :])
    return t.select(~(m > iou).any(1))


def drop_containing(t: Target, gt: Target, share: float) -> Target:
    """Drop boxes that hold at least ``share`` of the area of a ground-truth box of any class (a mined
    box enclosing labelled objects: its IoU with each of them can stay under theta2, so
    :func:`drop_overlapping` keeps it)."""
    if len(t) == 0 or len(gt) == 0:
        return t
    inter, g = _intersections(t, gt)
    area = ((g[:, 2:] - g[:, :2]).clamp(min=0).prod(-1)).clamp(min=1e-6)
    return t.select(~(inter / area[None, :] >= share).any(1))


def _intersections(t: Target, gt: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersection areas float[N, M] of ``t``'s and ``gt``'s boxes, and ``gt``'s boxes on ``t``'s device."""
    g = gt.boxes.to(t.boxes.device).float()
    b = t.boxes.float()
    lt = torch.maximum(b[:, None, :2], g[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], g[None, :, 2:])
    return (rb - lt).clamp(min=0).prod(-1), g


def drop_parts(t: Target, gt: Target, share: float) -> Target:
    """Drop boxes with at least ``share`` of their own area on ground-truth boxes of any class (the sum
    of their intersections): a shifted or partial box on a labelled object, whose IoU with it can stay
    under theta2 (seen on small, crowded nuclei, where such boxes were most of the mined ones)."""
    if len(t) == 0 or len(gt) == 0:
        return t
    inter = _intersections(t, gt)[0].sum(1)
    area = (t.boxes[:, 2:] - t.boxes[:, :2]).float().clamp(min=0).prod(-1).clamp(min=1e-6)
    return t.select(~(inter / area >= share))


def drop_known(t: Target, gt: Target, iou: float, *, same_class: bool = True, contain: float | None = None,
               part: float | None = None, rejected: Target | None = None, rejected_iou: float | None = None) -> Target:
    """The boxes of ``t`` no labelled box accounts for (:func:`drop_overlapping` at ``iou``, then
    :func:`drop_containing` at ``contain`` and :func:`drop_parts` at ``part`` when given) and no rejected
    box forbids (IoU > ``rejected_iou``, any class, when both are given): what may still become a pseudo-label."""
    t = drop_overlapping(t, gt, iou, same_class=same_class)
    if contain is not None:
        t = drop_containing(t, gt, contain)
    if part is not None:
        t = drop_parts(t, gt, part)
    if rejected is not None and rejected_iou is not None and len(rejected):
        t = drop_overlapping(t, rejected, rejected_iou, same_class=False)
    return t


def disputed(t: Target, others: Target, ratio: float, iou: float = 0.5) -> torch.Tensor:
    """bool[N]: which boxes of ``t`` a detection of *another* class in ``others`` contests: it overlaps the box by
    IoU >= ``iou`` and scores at least ``ratio`` x the box's score (the detector is not sure which class the object
    is; ``others`` may hold the same view's detections and another view's, in ``t``'s frame)."""
    if len(t) == 0 or len(others) == 0 or t.scores is None or others.scores is None:
        return torch.zeros(len(t), dtype=torch.bool, device=t.boxes.device)
    o = others.to(t.boxes.device)
    m = box_iou(t.boxes.float(), o.boxes.float()) >= iou
    m &= t.labels[:, None] != o.labels[None, :]
    m &= o.scores[None, :] >= ratio * t.scores[:, None]
    return m.any(1)


def min_size(t: Target, size: float) -> Target:
    """Drop boxes whose width or height is below ``size`` pixels."""
    if len(t) == 0:
        return t
    wh = t.boxes[:, 2:] - t.boxes[:, :2]
    return t.select((wh >= size).all(1))


def multilabel_veto(t: Target, probs: torch.Tensor, thresh: float) -> Target:
    """ACRST's second stage: drop boxes whose class has image-level probability < ``thresh``.

    ``probs``: float[K], the multi-label classifier's probability per class for this image.
    """
    if len(t) == 0:
        return t
    return t.select(probs.to(t.labels.device)[t.labels] >= thresh)


def as_pseudo(t: Target, *, regress: bool = True) -> Target:
    """Mark boxes as pseudo-labels (``pseudo=True``; ``regress`` as given)."""
    return t.with_flags(pseudo=True, regress=regress)


def as_ignored(t: Target) -> Target:
    """Mark boxes as ignored pseudo boxes (``weight=0``, no regression): neither object nor background."""
    return as_pseudo(t, regress=False).with_flags(weight=0.0)
