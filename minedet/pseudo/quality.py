"""Pseudo-label quality against the hidden truth (the annotations erased by the split tools).

A pseudo box is a true positive when it matches an unmatched hidden box of the same class with
IoU >= ``iou`` (greedy, by descending score, like COCO matching). Precision = TP / pseudo boxes,
recall = matched hidden boxes / hidden boxes, mIoU = mean IoU of the matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torchvision.ops import box_iou

from minedet.structures import Target


@dataclass
class QualityCounts:
    """Running counts; add per image, read ``precision``/``recall``/``miou``."""

    n_pseudo: int = 0
    n_hidden: int = 0
    tp: int = 0
    iou_sum: float = 0.0
    per_class_pseudo: dict[int, int] = field(default_factory=dict)

    def add(self, pseudo: Target, hidden: Target, iou: float = 0.5) -> None:
        tp, ious = match(pseudo, hidden, iou)
        self.n_pseudo += len(pseudo)
        self.n_hidden += len(hidden)
        self.tp += tp
        self.iou_sum += float(sum(ious))
        for k in pseudo.labels.tolist():
            self.per_class_pseudo[k] = self.per_class_pseudo.get(k, 0) + 1

    def merge(self, other: "QualityCounts") -> None:
        """Add another set of counts to these (a step's counts into the run's totals)."""
        self.n_pseudo += other.n_pseudo
        self.n_hidden += other.n_hidden
        self.tp += other.tp
        self.iou_sum += other.iou_sum
        for k, v in other.per_class_pseudo.items():
            self.per_class_pseudo[k] = self.per_class_pseudo.get(k, 0) + v

    @property
    def precision(self) -> float:
        return self.tp / self.n_pseudo if self.n_pseudo else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / self.n_hidden if self.n_hidden else float("nan")

    @property
    def miou(self) -> float:
        return self.iou_sum / self.tp if self.tp else float("nan")

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}precision": self.precision,
            f"{prefix}recall": self.recall,
            f"{prefix}miou": self.miou,
            f"{prefix}n_pseudo": float(self.n_pseudo),
            f"{prefix}n_hidden": float(self.n_hidden),
        }


def match(pseudo: Target, hidden: Target, iou: float = 0.5) -> tuple[int, list[float]]:
    """(number of true positives, their IoUs) of ``pseudo`` against ``hidden`` (same class, greedy)."""
    if len(pseudo) == 0 or len(hidden) == 0:
        return 0, []
    order = torch.argsort(pseudo.scores, descending=True) if pseudo.scores is not None else torch.arange(len(pseudo))
    m = box_iou(pseudo.boxes.float().cpu(), hidden.boxes.float().cpu())
    m = m * (pseudo.labels.cpu()[:, None] == hidden.labels.cpu()[None, :])
    used = torch.zeros(len(hidden), dtype=torch.bool)
    ious = []
    for i in order.tolist():
        row = m[i].clone()
        row[used] = -1
        j = int(row.argmax())
        if row[j] >= iou:
            used[j] = True
            ious.append(float(row[j]))
    return len(ious), ious
