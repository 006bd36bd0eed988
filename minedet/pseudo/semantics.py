"""One pseudo-label mechanism for every method: detections -> targets, ignored boxes, background.

A teacher's (or a Co-mining branch's) detections on an image are split three ways
(DESIGN.md, "pseudo-label semantics"):

* **confident** (score > ``tau``, after class-wise NMS and an optional extra stage such as ACRST's
  multi-label veto): pseudo-labels, ``pseudo=True``, regression as configured;
* **uncertain** (score in ``[ignore_below, tau]``, when ``ignore_below`` is set): ignored boxes,
  ``weight=0`` and ``regress=False`` (the anchors / proposals they match are neither positive nor
  background);
* everything else: background (not in the targets).

With ``dispute``, a confident box that a detection of *another* class contests (overlapping it, scoring at least
``dispute`` x its score: in the same detections, or in a second view's passed as ``contest``) is ignored instead:
the detector found an object there and is not sure which.

Boxes are ``[x1, y1, x2, y2]`` in the pixels of the view the detections were made on; :func:`carry`
moves them into another view of the same file image. Every function is pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torchvision.ops import box_iou

from minedet.data.transforms import BoxMap
from minedet.pseudo import filters as pf
from minedet.pseudo.quality import QualityCounts
from minedet.structures import Target


@dataclass(frozen=True)
class PseudoLabels:
    """One step's pseudo-labels, one entry per image, boxes in the frame the detections were made in.

    Attributes:
        detections: everything the teacher reported (score >= :attr:`PseudoRule.floor`).
        confident: the pseudo-labels proper (``pseudo=True``); quality and banks see only these.
        ignored: the uncertain boxes (``weight=0``, ``regress=False``); None when the band is off.
        disputed: of the ignored boxes, those that were confident until another class contested them (None: no
            dispute rule).
    """

    detections: list[Target]
    confident: list[Target]
    ignored: list[Target] | None
    disputed: list[Target] | None = None

    def targets(self) -> list[Target]:
        """What the student is taught per image: confident ∪ ignored."""
        if self.ignored is None:
            return list(self.confident)
        return [Target.cat([c, u]) for c, u in zip(self.confident, self.ignored)]

    def demote(self, masks: Sequence[torch.Tensor]) -> "PseudoLabels":
        """The same labels with the confident boxes ``masks[i]`` marks (bool per box, one per image) moved to the
        ignored ones: neither taught as objects nor as background."""
        confident = [c.select(~m) for c, m in zip(self.confident, masks)]
        moved = [pf.as_ignored(c.select(m)) for c, m in zip(self.confident, masks)]
        ignored = moved if self.ignored is None else [Target.cat([u, v]) for u, v in zip(self.ignored, moved)]
        return PseudoLabels(self.detections, confident, ignored, moved)


Stage = Callable[[Target, int], Target]  # (confident boxes of one image, its image id) -> kept boxes


class ClassThresholds:
    """Per-class score thresholds that follow the scores the model gives *labelled* objects now.

    For every labelled box, the score of the best same-class detection overlapping it (IoU >= ``iou``;
    0 when none) is what the model currently makes of a known object of that class. Each class's
    threshold is the ``quantile`` of those scores in a step, followed by EMA (``momentum``), clamped to
    ``[lo, hi]``; a class with no labelled box seen yet keeps ``base``. (Beyond the papers; in the spirit
    of Consistent Teacher's adaptive thresholds, but from labelled boxes rather than pseudo-label statistics.)

    Args:
        num_classes: K. base: the threshold of an unseen class. quantile: which quantile of the scores.
        momentum: EMA keep rate per step. lo / hi: bounds. iou: overlap that counts as detecting a box.
    """

    def __init__(self, num_classes: int, base: float, quantile: float = 0.5, momentum: float = 0.9,
                 lo: float = 0.3, hi: float = 0.9, iou: float = 0.5) -> None:
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"thresholds need 0 < lo <= hi < 1, got {lo}, {hi}")
        self.base, self.quantile, self.momentum, self.lo, self.hi, self.iou = base, quantile, momentum, lo, hi, iou
        self.value = torch.full((num_classes,), float("nan"), dtype=torch.float64)

    def observe(self, detections: Sequence[Target], labelled: Sequence[Target]) -> None:
        """Detections (with scores) and the labelled boxes of the same images, in one frame per image."""
        per_class: dict[int, list[float]] = {}
        for d, gt in zip(detections, labelled):
            if len(gt) == 0:
                continue
            best = torch.zeros(len(gt))
            if len(d):
                m = box_iou(gt.boxes.float().cpu(), d.boxes.float().cpu())
                m = m * (gt.labels.cpu()[:, None] == d.labels.cpu()[None, :])
                hit = (m >= self.iou).float() * d.scores.detach().float().cpu()[None, :]
                best = hit.max(1).values
            for k, v in zip(gt.labels.tolist(), best.tolist()):
                per_class.setdefault(int(k), []).append(v)
        for k, vals in per_class.items():
            q = float(torch.quantile(torch.tensor(vals, dtype=torch.float64), self.quantile))
            old = float(self.value[k])
            self.value[k] = q if old != old else self.momentum * old + (1 - self.momentum) * q

    def values(self) -> torch.Tensor:
        """float[K]: each class's threshold now."""
        v = self.value.clamp(self.lo, self.hi)
        return torch.where(torch.isnan(self.value), torch.full_like(v, self.base), v).float()

    def state_dict(self) -> dict:
        return {"value": self.value.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"].clone().double()


@dataclass(frozen=True)
class PseudoRule:
    """The three-way split, built once from a method's options.

    Args:
        tau: score above which a detection is a pseudo-label.
        nms: class-wise NMS IoU applied to the confident boxes (None: the detections' own NMS).
        regress: whether pseudo-labels supervise box regression.
        ignore_below: lower end of the ignored band ``[ignore_below, tau]`` (None: no band).
        stages: extra steps on each image's confident boxes (e.g. ACRST's multi-label veto, a cap).
        thresholds: per-class thresholds instead of ``tau``.
        dispute: a confident box another class contests at >= ``dispute`` x its score is ignored (None: off).
    """

    tau: float
    nms: float | None = None
    regress: bool = False
    ignore_below: float | None = None
    stages: tuple[Stage, ...] = field(default=())
    thresholds: ClassThresholds | None = None
    dispute: float | None = None

    @property
    def floor(self) -> float:
        """The score down to which detections are needed (a contesting class may score below the threshold)."""
        floor = self.tau if self.thresholds is None else min(self.tau, self.thresholds.lo)
        floor = floor if self.ignore_below is None else min(floor, self.ignore_below)
        return floor if self.dispute is None else floor * self.dispute

    def tau_of(self, t: Target) -> torch.Tensor | float:
        """The threshold of each box (float[N] with per-class thresholds, else ``tau``)."""
        if self.thresholds is None:
            return self.tau
        return self.thresholds.values().to(t.boxes.device)[t.labels]

    def above(self, t: Target) -> torch.Tensor:
        """bool[N]: which boxes score above their threshold (``tau``, or their class's); boxes without
        scores (labels, not detections) all pass."""
        if t.scores is None:
            return torch.ones(len(t), dtype=torch.bool, device=t.boxes.device)
        return t.scores > self.tau_of(t) if len(t) else torch.zeros(0, dtype=torch.bool, device=t.boxes.device)

    def confident(self, t: Target, image_id: int) -> Target:
        keep = t.select(self.above(t)) if len(t) else t
        if self.nms is not None:
            keep = pf.nms(keep, self.nms)
        for stage in self.stages:
            keep = stage(keep, image_id)
        return pf.as_pseudo(keep, regress=self.regress)

    def uncertain(self, t: Target) -> Target:
        band = t.select((t.scores >= self.ignore_below) & (t.scores <= self.tau_of(t))) if len(t) else t
        return pf.as_ignored(band)

    def __call__(self, detections: Sequence[Target], image_ids: Sequence[int],
                 contest: Sequence[Target] | None = None) -> PseudoLabels:
        """The split of each image's detections; ``contest``: more detections per image (another view's, in
        this one's frame) that may contest a confident box (with ``dispute``)."""
        dets = [d.detach() for d in detections]
        confident = [self.confident(d, int(i)) for d, i in zip(dets, image_ids)]
        ignored = None if self.ignore_below is None else [self.uncertain(d) for d in dets]
        labels = PseudoLabels(dets, confident, ignored)
        if self.dispute is None:
            return labels
        rivals = dets if contest is None else [Target.cat([d, c.detach()]) for d, c in zip(dets, contest)]
        return labels.demote([pf.disputed(c, r, self.dispute) for c, r in zip(confident, rivals)])


def carry(t: Target, src: BoxMap, dst: BoxMap, min_size: float = 1.0) -> Target:
    """Move boxes from the frame of a view with map ``src`` into the frame of a view with map
    ``dst`` (both maps start from the same file image): ``dst ∘ src⁻¹``. Boxes are clipped to
    ``dst.size`` and those left thinner than ``min_size`` pixels (cropped away) are dropped."""
    if src == dst:
        return t
    m = src.inverse().then(dst)
    return pf.min_size(t.with_boxes(m.apply(t.boxes)), min_size)


def known_background(dataset, image_ids: Sequence[int], maps: Sequence[BoxMap]) -> list[Target]:
    """The boxes a reviewer rejected on each image (``dataset.rejected_target``), in the frame of the
    view with map ``maps[i]``: regions a pseudo-label must leave as background."""
    if not getattr(getattr(dataset, "data", None), "rejected_by_image", None):
        return [Target.empty(int(i)) for i in image_ids]
    out = []
    for i, m in zip(image_ids, maps):
        r = dataset.rejected_target(int(i))
        out.append(r.with_boxes(m.apply(r.boxes)) if len(r) else r)
    return out


def against_hidden(targets: Sequence[Target], hidden: Sequence[Target], maps: Sequence[BoxMap],
                   labelled: Sequence[Target] | None = None) -> QualityCounts:
    """Quality counts of ``targets`` (one per image, in the frame of the view with map ``maps[i]``)
    against the hidden truth of the same images (file-image frame); ``labelled``: each image's labelled boxes in
    the view's frame (they tell a false box on a labelled object from one on the background)."""
    q = QualityCounts()
    for i, (t, h, m) in enumerate(zip(targets, hidden, maps)):
        q.add(t.to("cpu"), h.with_boxes(m.apply(h.boxes)), labelled=None if labelled is None else labelled[i].to("cpu"))
    return q
