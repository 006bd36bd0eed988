"""Background Recalibration Loss (BRL) for RetinaNet, in plain PyTorch.

Zhang, Chen, Shen, Hao, Zhu, Savvides, "Solving Missing-Annotation Object Detection with Background
Recalibration Loss", ICASSP 2020 (arXiv 2002.05274). The official code is an mmdetection-v1 fork
(``Dwrety/mmdetection-selective-iou``: ``SelectiveIoUAssigner``, ``BRLRetinaHead``, the CUDA op
``mirror_sigmoid_focal_loss``, config ``configs/BRL/brl_retinanet_r50_fpn_coco_50p.py``). This module
re-derives the same loss from that code; nothing is copied.

Anchor roles (per image; IoU = an anchor's best IoU with the image's *annotated* boxes: every box
whose ``weight`` flag is above 0, labelled or pseudo):

* positive: matched by torchvision's RetinaNet matcher (IoU >= 0.5, plus low-quality best matches) —
  exactly :meth:`RetinaNetAdapter.match`; the matched-index semantics are unchanged.
* ignored: IoU in [0.4, 0.5) (``BETWEEN_THRESHOLDS``), or matched to a box with flag ``weight == 0``.
* ordinary negative: unmatched and IoU in [``confusion_iou``, 0.4) — plain focal loss.
* confusion anchor: unmatched and IoU < ``confusion_iou`` (0.1), the IoU taken with the boxes a reviewer
  rejected too (known non-objects: beyond the paper, the anchors on them are ordinary negatives, so a confident
  detection there is taught as background, not spared as a likely missed object). An image with **no boxes** has IoU 0
  everywhere, so *every* anchor of it is a confusion anchor (the official assigner raises on empty
  images; we keep the definition and apply it). A box with ``weight == 0`` (an ignored region, or an
  uncertain pseudo box of the three-way semantics) ignores the anchors it matches and nothing more: it
  is not an annotation, so it does not turn the anchors around it into ordinary (full-weight)
  negatives. (The official RetinaNet config leaves ``gt_bboxes_ignore`` out of the assigner's IoU too,
  ``ignore_iof_thr=-1``. Counting them, as minedet did before, taught the surroundings of every
  uncertain detection — mostly missed objects — as background ten times harder than the rest.)

Loss, with ``x`` a logit, ``p = sigmoid(x)``, ``alpha = 0.25``, focal ``gamma_f = 2`` (torchvision's
``sigmoid_focal_loss`` defaults, as the parent):

* positives and ordinary negatives: the parent's focal loss, unchanged (per-box ``weight`` flag scales
  the positives of a box, 0 ignores them).
* confusion anchors, on **every class channel** (the anchor's target is background, so all K channels
  are negatives; official kernel: ``c2 = t >= 0 and t != d + 1`` for every class ``d``)::

      mirror(p) = (1 - alpha) *        p**gamma_f * -log(1 - p)    if p <= 1 - t   (the focal negative)
                  (1 - alpha) * beta * (1 - p)**gamma * -log(p)    if p >  1 - t   (mirrored positive)

  The mirrored branch is minimised at p -> 1: a confident prediction far from every annotated box
  (likely a missed object) is not pushed down any more, its gradient points *up*, and its value is
  smaller than the focal negative (at t = 0.5, beta = 1 the two branches meet at p = 0.5).
* per image: ``(focal_sum(pos + ordinary neg) + weight * mirror_sum(confusion)) / max(1, num_pos)``,
  then the mean over images (the parent's normalisation).

Defaults and where they come from:

=====================  =======  ===================================================================
option (model.extra)   default  source (checked by ``minedet.models.build.RetinaNetOptions``)
=====================  =======  ===================================================================
``cls_loss``           "focal"  "brl" selects this adapter in ``build_retinanet``
``brl_t``              0.5      official config ``thresh=0.50`` (kernel: hard iff ``1 - p < thresh``)
``brl_beta``           1.0      official config ``beta=1.0``
``brl_gamma``          2.0      official config ``gamma_2=2.0`` (exponent of the mirrored branch; the
                                easy branch uses ``gamma_1=2.0`` = torchvision's focal gamma)
``brl_weight``         0.1      official config ``loss_cls_confusion.loss_weight=0.1``
``brl_iou``            0.1      official assigner ``confuse_iou_thr=0.1``, ``neg_iou_thr=(0.1, 0.4)``
``brl_pseudo``         see      beyond the paper (BRL has no mined boxes): what a mined box (``pseudo``
                       below    flag) is to the loss
=====================  =======  ===================================================================

``brl_pseudo``: ``"annotation"`` (a mined box is a label: it is among the annotated boxes of the confusion
IoU, so the anchors near it are ordinary negatives, and its positives count in the image's normaliser);
``"no_norm"`` (the same, but its positives leave the normaliser alone: an image's labelled positives keep
their weight however many boxes are mined on it); ``"positive"`` (``no_norm``, and it is no annotation for
the confusion IoU: it adds the positives it matches and changes nothing else BRL does).

Deliberate reading of the official code (differs from a naive "add a term" reading):

* confusion anchors are **not** in the normal focal loss (the official assigner gives them index -2
  and label weight 0 there); they only get ``weight * mirror``. So ``brl_weight`` also scales their
  easy-negative part, and ``brl_weight = 0`` *ignores* confusion anchors — it is not plain RetinaNet.
  Plain RetinaNet is recovered exactly by ``brl_iou = 0`` (no confusion anchors), and, up to float
  summation order, by ``brl_weight = 1, brl_t = 0`` (the mirrored branch never fires).
* the mirrored branch keeps the negative class weight ``1 - alpha`` (the CUDA kernel's ``zn``).
* normalisation: per image by its number of positives, then the image mean (torchvision/parent);
  mmdetection divides the batch sum by ``sum_i max(1, num_pos_i)``. Equal for batch size 1.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import boxes as box_ops
from torchvision.ops import sigmoid_focal_loss

from minedet.models.detector import HeadOutputs, RetinaNetAdapter
from minedet.structures import Target

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def mirror_focal_loss(
    logits: Tensor,
    *,
    t: float = 0.5,
    beta: float = 1.0,
    gamma: float = 2.0,
    alpha: float = FOCAL_ALPHA,
    focal_gamma: float = FOCAL_GAMMA,
) -> Tensor:
    """Elementwise background-recalibrated loss of logits whose target is background (0).

    Args:
        logits: any shape (typically [A, K], the class logits of confusion anchors).
        t: the mirrored branch applies where ``sigmoid(logits) > 1 - t`` (t = 0 disables it).
        beta: scale of the mirrored branch.
        gamma: exponent of the mirrored branch ``(1 - p)**gamma * -log(p)``.
        alpha, focal_gamma: the focal loss parameters; the easy branch equals
            ``torchvision.ops.sigmoid_focal_loss(logits, 0, alpha, focal_gamma)``.

    Returns:
        Tensor of the same shape, >= 0. Gradients are finite for all finite logits.
    """
    easy = sigmoid_focal_loss(logits, torch.zeros_like(logits), alpha=alpha, gamma=focal_gamma, reduction="none")
    p = torch.sigmoid(logits)
    # -(1 - p)**gamma * log p with log p = logsigmoid(x), (1 - p)**gamma = exp(gamma * logsigmoid(-x)):
    # finite values and gradients for every finite logit and every gamma >= 0
    hard = (1.0 - alpha) * beta * torch.exp(gamma * F.logsigmoid(-logits)) * -F.logsigmoid(logits)
    return torch.where(p > 1.0 - t, hard, easy)


class BRLRetinaNetAdapter(RetinaNetAdapter):
    """RetinaNet adapter whose classification loss is the Background Recalibration Loss.

    Matching, box regression, decoding and the per-box flags are the parent's; only
    :meth:`classification_loss` changes (see the module docstring for the exact loss).

    Args:
        model: a torchvision ``RetinaNet``.
        num_classes: K foreground classes.
        t, beta, gamma, weight, confusion_iou: the BRL options (module docstring table).
    """

    #: co-mining's ignored band is off by default on this loss: BRL has its own rule for an uncertain detection
    #: far from every annotation (weight 0.1, and the mirrored branch above 1 - t), and the band would take those
    #: anchors out of it. Digits `hard`, RetinaNet: the guards without the band 74.2 ± 0.9 (3 seeds), with it 65.7
    #: (seed 0; 74.0 without it on that seed).
    mining_ignore_below = None

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        t: float = 0.5,
        beta: float = 1.0,
        gamma: float = 2.0,
        weight: float = 0.1,
        confusion_iou: float = 0.1,
        pseudo: str = "annotation",
    ) -> None:
        super().__init__(model, num_classes)
        self.pseudo = pseudo
        self.t = float(t)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.weight = float(weight)
        self.confusion_iou = float(confusion_iou)

    def confusion_anchors(self, anchors: Tensor, target: Target, matched: Tensor,
                          background: Target | None = None) -> Tensor:
        """Bool[A]: unmatched anchors (index -1) whose best IoU with the annotated boxes of ``target``
        (``weight`` > 0) and the boxes known as ``background`` (a reviewer rejected them: annotations of no
        object, so the anchors on them are ordinary negatives) is below ``confusion_iou``. ``anchors`` [A, 4] and
        the boxes xyxy in the same (resized) frame. With no such box every unmatched anchor qualifies (IoU 0) unless
        ``confusion_iou`` is 0."""
        below = matched == det_utils.Matcher.BELOW_LOW_THRESHOLD
        annotated = target.flag("weight") > 0
        if self.pseudo == "positive":  # a mined box is no annotation: the anchors near it stay confusion anchors
            annotated = annotated & ~target.flag("pseudo")
        boxes = target.boxes[annotated]
        if background is not None and len(background):
            boxes = torch.cat([boxes, background.boxes.to(boxes)])
        if len(boxes) == 0:
            max_iou = torch.zeros(anchors.shape[0], dtype=anchors.dtype, device=anchors.device)
        else:
            max_iou = box_ops.box_iou(boxes.to(anchors), anchors).max(dim=0).values
        return below & (max_iou < self.confusion_iou)

    def classification_loss(self, out: HeadOutputs, targets: Sequence[Target], matched: list[Tensor],
                            background: Sequence[Target] | None = None) -> Tensor:
        """BRL summed over anchors and classes / number of positive anchors, averaged over images.

        ``targets`` (and ``background``, boxes a reviewer rejected) are in the resized frame of ``out.anchors`` (as
        :meth:`loss` passes them); ``matched`` comes from :meth:`match`.
        """
        losses = []
        known = [None] * len(targets) if background is None else background
        for t, logits, anchors, m, bg in zip(targets, out.head["cls_logits"], out.anchors, matched, known):
            confusion = self.confusion_anchors(anchors, t, m, bg)
            total = self.focal_sum(t, logits, m, exclude=confusion)
            if bool(confusion.any()):
                mirror = mirror_focal_loss(logits[confusion], t=self.t, beta=self.beta, gamma=self.gamma)
                total = total + self.weight * mirror.sum()
            fg = m >= 0
            if self.pseudo != "annotation" and len(t):  # the positives of mined boxes leave the normaliser alone
                fg = fg & ~t.flag("pseudo")[m.clamp(min=0)]
            losses.append(total / max(1, int(fg.sum())))
        return sum(losses) / max(1, len(targets))
