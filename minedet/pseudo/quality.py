"""Pseudo-label quality against the hidden truth (the annotations erased by the split tools).

A pseudo box is a true positive when it matches an unmatched hidden box of the same class with
IoU >= ``iou`` (greedy, by descending score, like COCO matching). Precision = TP / pseudo boxes,
recall = matched hidden boxes / hidden boxes, mIoU = mean IoU of the matches.

Each false pseudo box is also told apart by what it lies on (the first that applies): ``duplicate`` (IoU >= ``iou``
with a hidden box of its class that a better-scored pseudo box already matched), ``class`` (with a hidden box of
another class), ``misplaced`` (IoU in [0.1, ``iou``) with a hidden box: a piece of a missing object, or a box across
several), ``labelled`` (IoU >= 0.1 with a labelled box, when the labelled boxes are given: a piece of a labelled object)
or ``background``. ``false_KIND`` is each one's share of all pseudo boxes: with the precision they sum to 1.
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
    false: dict[str, int] = field(default_factory=dict)  # false pseudo boxes by FALSE_KINDS

    def add(self, pseudo: Target, hidden: Target, iou: float = 0.5, labelled: Target | None = None) -> None:
        """Count one image's ``pseudo`` boxes against its ``hidden`` ones (same frame); ``labelled``: its labelled
        boxes, which tell a piece of a labelled object from the background."""
        on, same = _overlaps(pseudo, hidden)
        matched, ious = _greedy(pseudo, on, same, iou)
        self.n_pseudo += len(pseudo)
        self.n_hidden += len(hidden)
        self.tp += len(ious)
        self.iou_sum += float(sum(ious))
        for k in pseudo.labels.tolist():
            self.per_class_pseudo[k] = self.per_class_pseudo.get(k, 0) + 1
        for kind in false_kinds(pseudo, on, same, matched, iou, labelled):
            self.false[kind] = self.false.get(kind, 0) + 1

    def merge(self, other: "QualityCounts") -> None:
        """Add another set of counts to these (a step's counts into the run's totals)."""
        self.n_pseudo += other.n_pseudo
        self.n_hidden += other.n_hidden
        self.tp += other.tp
        self.iou_sum += other.iou_sum
        for k, v in other.per_class_pseudo.items():
            self.per_class_pseudo[k] = self.per_class_pseudo.get(k, 0) + v
        for k, v in other.false.items():
            self.false[k] = self.false.get(k, 0) + v

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
            **{f"{prefix}false_{k}": self.false.get(k, 0) / self.n_pseudo if self.n_pseudo else float("nan")
               for k in FALSE_KINDS},
        }


#: what a false pseudo box lies on (module docstring), in the order they are tested
FALSE_KINDS = ("duplicate", "class", "misplaced", "labelled", "background")
#: the least IoU with a box for a false pseudo box to count as lying on it
TOUCH = 0.1


def match(pseudo: Target, hidden: Target, iou: float = 0.5) -> tuple[int, list[float]]:
    """(number of true positives, their IoUs) of ``pseudo`` against ``hidden`` (same class, greedy)."""
    _, ious = _greedy(pseudo, *_overlaps(pseudo, hidden), iou)
    return len(ious), ious


def _overlaps(pseudo: Target, hidden: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """(IoU float[P, H], same class bool[P, H]) of each pseudo box with each hidden box."""
    if len(pseudo) == 0 or len(hidden) == 0:
        return torch.zeros(len(pseudo), len(hidden)), torch.zeros(len(pseudo), len(hidden), dtype=torch.bool)
    on = box_iou(pseudo.boxes.float().cpu(), hidden.boxes.float().cpu())
    return on, pseudo.labels.cpu()[:, None] == hidden.labels.cpu()[None, :]


def _greedy(pseudo: Target, on: torch.Tensor, same: torch.Tensor, iou: float) -> tuple[torch.Tensor, list[float]]:
    """(which pseudo boxes matched, the matches' IoUs): by descending score, each to the best unmatched hidden box of
    its class with IoU >= ``iou`` (``on``, ``same``: :func:`_overlaps`)."""
    matched = torch.zeros(len(pseudo), dtype=torch.bool)
    if on.numel() == 0:
        return matched, []
    order = torch.argsort(pseudo.scores, descending=True) if pseudo.scores is not None else torch.arange(len(pseudo))
    m = on * same
    used = torch.zeros(on.shape[1], dtype=torch.bool)
    ious = []
    for i in order.tolist():
        row = m[i].clone()
        row[used] = -1
        j = int(row.argmax())
        if row[j] >= iou:
            used[j] = matched[i] = True
            ious.append(float(row[j]))
    return matched, ious


def false_kinds(pseudo: Target, on: torch.Tensor, same: torch.Tensor, matched: torch.Tensor, iou: float,
                labelled: Target | None = None) -> list[str]:
    """The kind (:data:`FALSE_KINDS`) of each pseudo box ``matched`` marks false (``on``, ``same``: :func:`_overlaps`
    with the hidden boxes)."""
    false = ~matched
    if not bool(false.any()):
        return []
    on, same = on[false], same[false]
    on_l = (box_iou(pseudo.boxes.float().cpu()[false], labelled.boxes.float().cpu()).amax(1)
            if labelled is not None and len(labelled) else torch.zeros(len(on)))
    tests = [((on >= iou) & same).any(1), (on >= iou).any(1), (on >= TOUCH).any(1), on_l >= TOUCH]
    return [next((kind for kind, t in zip(FALSE_KINDS, tests) if bool(t[k])), "background") for k in range(len(on))]
