"""One adapter over torchvision's RetinaNet, FCOS and Faster R-CNN.

torchvision's detectors return losses (train mode) *or* detections (eval mode). Co-mining and the
teacher-student methods need both from one forward pass, and per-box control over the losses
(no regression for a pseudo box, an ignored box). The adapter splits a detector's forward into
three named steps built on torchvision's public pieces (``transform``, ``backbone``, ``head``,
``anchor_generator``, ``proposal_matcher``, ``box_coder``, ``rpn``, ``roi_heads``):

* :meth:`DetectorAdapter.forward_heads` ``(images) -> HeadOutputs``
* :meth:`DetectorAdapter.loss` ``(HeadOutputs, targets) -> dict[str, Tensor]``
* :meth:`DetectorAdapter.decode` ``(HeadOutputs, ...) -> list[Target]``

With default flags the losses equal torchvision's own train-mode losses and ``decode`` equals its
eval-mode detections (``tests/test_detector.py`` pins both). The wrapped torchvision model is
``adapter.model``; its ``state_dict`` is what a checkpoint stores, so a saved model is the plain
torchvision detector.

Coordinate frames: targets given to :meth:`loss` and detections returned by :meth:`decode` are
``[x1, y1, x2, y2]`` in *input-image pixels* (the frame of the tensors given to
:meth:`forward_heads`); the internal resize of ``GeneralizedRCNNTransform`` is undone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from minedet.errors import MinedetError
from minedet.structures import Target


@dataclass
class HeadOutputs:
    """Everything one forward pass produced, for a batch of B images.

    Attributes:
        images: the normalised, resized, padded batch (torchvision ``ImageList``).
        input_sizes: (H, W) of each input image before the internal resize.
        features: FPN feature maps, one Tensor[B, C, h, w] per level.
        head: dense head outputs, each Tensor[B, sum(HWA), *] (one-stage detectors:
            ``cls_logits`` [B, HWA, K], ``bbox_regression`` [B, HWA, 4], FCOS ``bbox_ctrness`` [B, HWA, 1];
            Faster R-CNN: ``objectness`` [B, HWA], ``rpn_deltas`` [B, HWA, 4]).
        anchors: per image Tensor[HWA, 4], xyxy in the resized frame.
        num_anchors_per_level: HWA of each level.
        proposals: Faster R-CNN only: per image Tensor[P, 4] RPN proposals (resized frame), detached.
    """

    images: ImageList
    input_sizes: list[tuple[int, int]]
    features: list[Tensor]
    head: dict[str, Tensor]
    anchors: list[Tensor]
    num_anchors_per_level: list[int]
    proposals: list[Tensor] | None = None
    feature_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_sizes)

    def take(self, index: slice) -> "HeadOutputs":
        """The outputs of the images ``index`` (a slice), e.g. one branch of a Siamese batch."""
        ids = range(len(self))[index]
        tensors = self.images.tensors[index]
        return replace(
            self,
            images=ImageList(tensors, [self.images.image_sizes[i] for i in ids]),
            input_sizes=[self.input_sizes[i] for i in ids],
            features=[f[index] for f in self.features],
            head={k: v[index] for k, v in self.head.items()},
            anchors=[self.anchors[i] for i in ids],
            proposals=None if self.proposals is None else [self.proposals[i] for i in ids],
        )


@contextlib.contextmanager
def _overridden(obj: object, **values) -> Iterator[None]:
    """Temporarily set attributes (None values are left alone)."""
    old = {k: getattr(obj, k) for k, v in values.items() if v is not None}
    try:
        for k in old:
            setattr(obj, k, values[k])
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


class DetectorAdapter(nn.Module):
    """Base class: the three steps over a wrapped torchvision detector ``self.model``.

    Args:
        model: a torchvision ``RetinaNet``, ``FCOS`` or ``FasterRCNN``.
        num_classes: K foreground classes; targets carry labels ``0..K-1``.
    """

    kind: str = ""
    #: the loss terms that supervise box geometry (boxes with ``regress=False`` add nothing to them)
    regression_terms: tuple[str, ...] = ()
    #: class-wise NMS IoU for mining pseudo-labels from this detector (Co-mining's theta1, the release's value)
    mining_nms: float = 0.5
    #: the score a mining threshold applies to (``decode(score_rule=...)``): ``"score"``, the detection score
    mining_score_rule: str = "score"
    #: whether mined boxes also supervise box regression unless the method says otherwise (Co-mining's
    #: ``pseudo_regress=None``): Eq. 2 of the paper says yes; off where measured better (FCOS)
    mining_regress: bool = True
    #: the lower end of co-mining's ignored band unless the method says otherwise (``ignore_below="auto"``):
    #: detections scoring in [0.3, tau] that miss the labels are ignored, where this detector's loss would
    #: teach them as background (None: no band, where the loss has its own rule for them)
    mining_ignore_below: float | None = 0.3
    #: co-mining's ``part`` unless the method says otherwise (``part="auto"``): drop a mined box with at least this
    #: share of its own area on labelled boxes, a piece of a labelled object (None: off)
    mining_part: float | None = None

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes

    # -------------------------------------------------------------- shared pieces
    def _transform(self, images: Sequence[Tensor]) -> tuple[ImageList, list[tuple[int, int]]]:
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        image_list, _ = self.model.transform([self._thin_side_kept(im) for im in images], None)
        return image_list, sizes

    def _thin_side_kept(self, image: Tensor) -> Tensor:
        """``image`` as is, or, when torchvision's resize would floor its short side to 0 px (e.g. a 1 x 3000
        image: scale = max_size / 3000), resized first to that size with each side at least 1 px, which the
        transform then leaves as it is. Boxes map back through the sizes as for any image."""
        t = self.model.transform
        h, w = int(image.shape[-2]), int(image.shape[-1])
        scale = min(float(t.min_size[-1]) / min(h, w), float(t.max_size) / max(h, w))
        if min(h, w) * scale >= 1.0:
            return image
        size = [max(1, int(h * scale)), max(1, int(w * scale))]
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]

    def _features(self, image_list: ImageList) -> tuple[list[Tensor], list[str]]:
        feats = self.model.backbone(image_list.tensors)
        if isinstance(feats, Tensor):
            return [feats], ["0"]
        return list(feats.values()), list(feats.keys())

    @staticmethod
    def _to_resized(targets: Sequence[Target], out: HeadOutputs) -> list[Target]:
        res = []
        for t, src, dst in zip(targets, out.input_sizes, out.images.image_sizes):
            boxes = t.boxes.to(out.images.tensors.device, torch.float32)
            if tuple(src) != tuple(dst):
                boxes = resize_boxes(boxes, src, dst)
            res.append(replace(t.to(out.images.tensors.device), boxes=boxes))
        return res

    @staticmethod
    def _to_input(boxes: Tensor, resized: tuple[int, int], original: tuple[int, int]) -> Tensor:
        if tuple(resized) == tuple(original):
            return boxes
        return resize_boxes(boxes, resized, original)

    # -------------------------------------------------------------- the public steps
    def forward_heads(self, images: Sequence[Tensor]) -> HeadOutputs:
        """Backbone + heads for a list of images float[3, H, W] in [0, 1] (any sizes)."""
        raise NotImplementedError  # abstract: every adapter defines it

    def loss(self, out: HeadOutputs, targets: Sequence[Target],
             background: Sequence[Target] | None = None) -> dict[str, Tensor]:
        """Losses (unweighted, torchvision's normalisation) for targets in input-image pixels. ``background``: per
        image, boxes known to hold no object (a reviewer rejected them), in the same frame: a loss that spares
        confident detections far from every label (BRL) teaches them as background like any labelled image's
        surroundings; every other loss already does (an unmatched anchor is a negative)."""
        raise NotImplementedError  # abstract

    def decode(
        self,
        out: HeadOutputs,
        *,
        score_thresh: float | None = None,
        nms_thresh: float | None = None,
        topk_candidates: int | None = None,
        detections_per_img: int | None = None,
        score_rule: str | None = None,
    ) -> list[Target]:
        """Detections per image (scores, labels 0..K-1, boxes xyxy in input-image pixels).

        ``None`` parameters take the wrapped model's own values (torchvision's defaults unless
        configured), which makes the result identical to torchvision's eval forward.
        ``score_rule`` names the score ``score_thresh`` applies to, for this call only (FCOS:
        ``"class_prob"`` gates on the class probability before centerness; None: the detector's rule);
        given, the detections' ``scores`` are that score (ranking and NMS keep the detector's own).
        """
        raise NotImplementedError  # abstract

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor], **decode_kw) -> list[Target]:
        """Inference: ``decode(forward_heads(images))`` with gradients off."""
        return self.decode(self.forward_heads(images), **decode_kw)

    def forward(self, images: Sequence[Tensor]) -> list[Target]:
        return self.predict(images)


# =====================================================================================
# One-stage detectors: RetinaNet and FCOS share forward_heads and the dense decoder.
# =====================================================================================
class _DenseAdapter(DetectorAdapter):
    def forward_heads(self, images: Sequence[Tensor]) -> HeadOutputs:
        image_list, sizes = self._transform(images)
        features, names = self._features(image_list)
        head = self.model.head(features)
        anchors = self.model.anchor_generator(image_list, features)
        napl = [f.shape[-2] * f.shape[-1] for f in features]
        a = head["cls_logits"].shape[1] // max(1, sum(napl))
        napl = [n * a for n in napl]
        return HeadOutputs(image_list, sizes, features, head, anchors, napl, feature_names=names)

    def _level_scores(self, level: dict[str, Tensor], rule: str | None = None) -> tuple[Tensor, Tensor]:
        """(ranking score, thresholded score), each [HWA * K] flattened, for one image and level."""
        p = torch.sigmoid(level["cls_logits"]).flatten()
        return p, p

    def _decode_boxes(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        return self.model.box_coder.decode_single(deltas, anchors)

    def decode(self, out, *, score_thresh=None, nms_thresh=None, topk_candidates=None, detections_per_img=None,
               score_rule=None):
        m = self.model
        score_thresh = m.score_thresh if score_thresh is None else score_thresh
        nms_thresh = m.nms_thresh if nms_thresh is None else nms_thresh
        topk = m.topk_candidates if topk_candidates is None else topk_candidates
        max_det = m.detections_per_img if detections_per_img is None else detections_per_img
        split = {k: v.split(out.num_anchors_per_level, dim=1) for k, v in out.head.items()}
        results = []
        for i in range(len(out)):
            anchors_i = out.anchors[i].split(out.num_anchors_per_level)
            boxes_all, scores_all, labels_all, gates_all = [], [], [], []
            for lvl, anchors_l in enumerate(anchors_i):
                level = {k: v[lvl][i] for k, v in split.items()}
                num_classes = level["cls_logits"].shape[-1]
                rank, gate = self._level_scores(level, score_rule)
                keep = gate > score_thresh
                scores = rank[keep]
                idx = torch.where(keep)[0]
                n = det_utils._topk_min(idx, topk, 0)
                scores, order = scores.topk(n)
                idx = idx[order]
                if score_rule is not None:  # only a per-call rule reports its own score
                    gates_all.append(gate[idx])
                anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
                labels = idx % num_classes
                boxes = self._decode_boxes(level["bbox_regression"][anchor_idx], anchors_l[anchor_idx])
                boxes = box_ops.clip_boxes_to_image(boxes, out.images.image_sizes[i])
                boxes_all.append(boxes)
                scores_all.append(scores)
                labels_all.append(labels)
            boxes = torch.cat(boxes_all)
            scores = torch.cat(scores_all)
            labels = torch.cat(labels_all)
            keep = box_ops.batched_nms(boxes, scores, labels, nms_thresh)[:max_det]
            boxes = self._to_input(boxes[keep], out.images.image_sizes[i], out.input_sizes[i])
            # a per-call rule reports the score it thresholded (ranking and NMS still use the detector's score)
            reported = torch.cat(gates_all)[keep] if score_rule is not None else scores[keep]
            results.append(Target(boxes, labels[keep], reported))
        return results


class RetinaNetAdapter(_DenseAdapter):
    """RetinaNet: sigmoid focal classification loss and L1 box regression.

    Per-box flags: ``weight`` scales the focal loss of the anchors matched to the box (0 ignores
    them: neither positive nor negative); ``regress=False`` removes them from the box loss.

    ``loss_norm``: ``"image"`` (torchvision: each image's sums over its own foreground anchors, at
    least 1, then the mean over images) or ``"batch"`` (detectron2's RetinaNet: the batch's sums
    over the batch's foreground anchors). Under ``"image"`` an image with no box divides its whole
    background loss by 1, so it outweighs an image with boxes many times over; self-training sees
    many such images (no pseudo-label passes the threshold) and learns to find nothing in them.
    """

    kind = "retinanet"
    regression_terms = ("bbox_regression",)

    def __init__(self, model: nn.Module, num_classes: int, loss_norm: str = "image") -> None:
        super().__init__(model, num_classes)
        if loss_norm not in ("image", "batch"):
            raise MinedetError(f"model.extra.loss_norm must be image or batch, got {loss_norm!r}")
        self.loss_norm = loss_norm

    def normalise(self, sums: Sequence[Tensor], counts: Sequence[int]) -> Tensor:
        """Per-image loss sums and foreground counts -> one loss (see ``loss_norm``)."""
        if self.loss_norm == "batch":
            return sum(sums) / max(1, sum(counts))
        return sum(s / max(1, n) for s, n in zip(sums, counts)) / max(1, len(sums))

    def match(self, out: HeadOutputs, targets: Sequence[Target]) -> list[Tensor]:
        """Per image: matched box index per anchor (>=0), or Matcher.BELOW_LOW_THRESHOLD (-1) /
        BETWEEN_THRESHOLDS (-2), exactly as torchvision's ``RetinaNet.compute_loss``."""
        matched = []
        for anchors, t in zip(out.anchors, targets):
            if len(t) == 0:
                matched.append(torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device))
            else:
                matched.append(self.model.proposal_matcher(box_ops.box_iou(t.boxes, anchors)))
        return matched

    def classification_loss(self, out: HeadOutputs, targets: Sequence[Target], matched: list[Tensor],
                            background: Sequence[Target] | None = None) -> Tensor:
        """Focal loss summed over valid anchors / number of foreground anchors, averaged over images (every unmatched
        anchor a negative: ``background`` changes nothing)."""
        sums = [self.focal_sum(t, logits, m) for t, logits, m in zip(targets, out.head["cls_logits"], matched)]
        return self.normalise(sums, [int((m >= 0).sum()) for m in matched])

    @staticmethod
    def focal_sum(t: Target, logits: Tensor, m: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Summed sigmoid focal loss of one image's anchors (logits [A, K], matches [A]): anchors
        between thresholds, with box weight 0, or in ``exclude`` are left out; box weights scale
        the rest."""
        fg = m >= 0
        gt = torch.zeros_like(logits)
        gt[fg, t.labels[m[fg]]] = 1.0
        valid = m != det_utils.Matcher.BETWEEN_THRESHOLDS
        if exclude is not None:
            valid = valid & ~exclude
        per_anchor = torch.ones(m.shape[0], dtype=logits.dtype, device=logits.device)
        if "weight" in t.flags:
            per_anchor[fg] = t.flags["weight"][m[fg]].to(logits.dtype)
            valid = valid & (per_anchor > 0)
        loss = sigmoid_focal_loss(logits[valid], gt[valid], reduction="none")
        if "weight" in t.flags:
            loss = loss * per_anchor[valid, None]
        return loss.sum()

    def regression_loss(self, out: HeadOutputs, targets: Sequence[Target], matched: list[Tensor]) -> Tensor:
        """L1 loss on encoded deltas of foreground anchors whose box has ``regress``, / num foreground."""
        sums, counts = [], []
        for t, deltas, anchors, m in zip(targets, out.head["bbox_regression"], out.anchors, matched):
            fg_idx = torch.where(m >= 0)[0]
            counts.append(fg_idx.numel())
            if "regress" in t.flags:
                fg_idx = fg_idx[t.flags["regress"][m[fg_idx]]]
            target_deltas = self.model.box_coder.encode_single(t.boxes[m[fg_idx]], anchors[fg_idx])
            sums.append(F.l1_loss(deltas[fg_idx], target_deltas, reduction="sum"))
        return self.normalise(sums, counts)

    def loss(self, out: HeadOutputs, targets: Sequence[Target],
             background: Sequence[Target] | None = None) -> dict[str, Tensor]:
        targets = self._to_resized(targets, out)
        background = None if background is None else self._to_resized(background, out)
        matched = self.match(out, targets)
        return {
            "classification": self.classification_loss(out, targets, matched, background),
            "bbox_regression": self.regression_loss(out, targets, matched),
        }


class FCOSAdapter(_DenseAdapter):
    """FCOS: focal classification, GIoU box and centerness BCE losses, normalised over the batch.

    ``threshold_on``: ``"score"`` (torchvision: sqrt(class prob * centerness) > score_thresh) or
    ``"class_prob"`` (the Co-mining release: the threshold applies to the class probability before
    centerness rescoring; ranking still uses the rescored score).
    Per-box flags: ``weight`` scales the focal loss of the locations assigned to the box (0 ignores
    them); ``regress=False`` removes them from the GIoU and centerness losses.
    """

    kind = "fcos"
    regression_terms = ("bbox_regression", "bbox_ctrness")  # centerness is trained only where boxes regress
    mining_nms = 0.6
    mining_score_rule = "class_prob"  # the Co-mining release gates FCOS pseudo-labels by class probability
    # digits `hard`, 3 seeds: the guards with mined boxes teaching classification only 83.3 +- 0.2, with
    # regression 82.8 +- 0.2 (the original 82.8 +- 0.1): a mined box's extent is the model's own guess
    mining_regress = False

    def __init__(self, model: nn.Module, num_classes: int, threshold_on: str = "score") -> None:
        super().__init__(model, num_classes)
        if threshold_on not in ("score", "class_prob"):
            raise MinedetError(f"model.extra.threshold_on must be 'score' or 'class_prob', got {threshold_on!r}")
        self.threshold_on = threshold_on

    def _level_scores(self, level, rule=None):
        p = torch.sigmoid(level["cls_logits"])
        rank = torch.sqrt(p * torch.sigmoid(level["bbox_ctrness"])).flatten()
        return rank, (p.flatten() if (rule or self.threshold_on) == "class_prob" else rank)

    def _decode_boxes(self, deltas, anchors):
        return self.model.box_coder.decode(deltas, anchors)

    def match(self, out: HeadOutputs, targets: Sequence[Target]) -> list[Tensor]:
        """torchvision's FCOS assignment (centre sampling + per-level size ranges); -1 = background.

        The assignment is the body of ``FCOS.compute_loss``; it runs unbound on a stand-in ``self``
        whose head only records the matches, so the rule stays torchvision's and nothing is mutated.
        """
        recorder = _MatchRecorder()
        stand_in = SimpleNamespace(center_sampling_radius=self.model.center_sampling_radius, head=recorder)
        dicts = [{"boxes": t.boxes, "labels": t.labels} for t in targets]
        FCOS.compute_loss(stand_in, dicts, out.head, out.anchors, out.num_anchors_per_level)
        return recorder.matched

    def loss(self, out: HeadOutputs, targets: Sequence[Target],
             background: Sequence[Target] | None = None) -> dict[str, Tensor]:
        targets = self._to_resized(targets, out)
        matched = self.match(out, targets)
        cls_logits = out.head["cls_logits"]
        gt_classes, gt_boxes, weights, regress = [], [], [], []
        for t, m in zip(targets, matched):
            n = m.shape[0]
            if len(t) == 0:
                gt_classes.append(t.labels.new_full((n,), -1))
                gt_boxes.append(t.boxes.new_zeros((n, 4)))
                weights.append(cls_logits.new_ones(n))
                regress.append(torch.zeros(n, dtype=torch.bool, device=m.device))
                continue
            mc = m.clip(min=0)
            cls = t.labels[mc].clone()
            cls[m < 0] = -1
            gt_classes.append(cls)
            gt_boxes.append(t.boxes[mc])
            w = t.flag("weight")[mc].to(cls_logits.dtype)
            w[m < 0] = 1.0
            weights.append(w)
            regress.append(t.flag("regress")[mc] & (m >= 0))
        gt_classes = torch.stack(gt_classes)
        gt_boxes = torch.stack(gt_boxes)
        weights = torch.stack(weights)
        regress = torch.stack(regress)
        anchors = torch.stack(out.anchors)
        fg = gt_classes >= 0
        num_fg = int(fg.sum())
        target = torch.zeros_like(cls_logits)
        target[fg, gt_classes[fg]] = 1.0
        if any("weight" in t.flags for t in targets):
            valid = weights > 0
            loss_cls = (sigmoid_focal_loss(cls_logits[valid], target[valid], reduction="none") * weights[valid, None]).sum()
        else:
            loss_cls = sigmoid_focal_loss(cls_logits, target, reduction="sum")
        pred_boxes = self.model.box_coder.decode(out.head["bbox_regression"], anchors)
        loss_box = generalized_box_iou_loss(pred_boxes[regress], gt_boxes[regress], reduction="sum")
        reg_targets = self.model.box_coder.encode(anchors, gt_boxes)
        if len(reg_targets) == 0:
            ctr_targets = reg_targets.new_zeros(reg_targets.shape[:-1])
        else:
            lr = reg_targets[:, :, [0, 2]]
            tb = reg_targets[:, :, [1, 3]]
            ctr_targets = torch.sqrt(
                (lr.min(dim=-1)[0] / lr.max(dim=-1)[0]) * (tb.min(dim=-1)[0] / tb.max(dim=-1)[0])
            )
        pred_ctr = out.head["bbox_ctrness"].squeeze(dim=2)
        loss_ctr = F.binary_cross_entropy_with_logits(pred_ctr[regress], ctr_targets[regress], reduction="sum")
        d = max(1, num_fg)
        return {"classification": loss_cls / d, "bbox_regression": loss_box / d, "bbox_ctrness": loss_ctr / d}


class _MatchRecorder(nn.Module):
    """Stands in for ``FCOS.head`` during assignment: records ``matched_idxs`` and computes nothing."""

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        self.matched = matched_idxs
        return {}


# =====================================================================================
# Faster R-CNN
# =====================================================================================
class FasterRCNNAdapter(DetectorAdapter):
    """Faster R-CNN (FPN): RPN objectness/box losses and RoI-head classification/box losses.

    ``forward_heads`` runs the backbone, the RPN head and the proposal filter; the RoI head runs in
    :meth:`loss` (on proposals sampled against the targets, as torchvision does) and in
    :meth:`decode` (on all proposals). Labels are 0..K-1 outside; torchvision's background-at-0
    convention is handled inside.

    Per-box flags: ``weight`` scales the RoI classification loss of proposals matched to the box
    (0 also makes its anchors/proposals ignored in RPN and RoI sampling); ``regress=False`` removes
    the box from the RPN and RoI box losses.
    ``roi_cls_loss``: ``"ce"`` (torchvision) or ``"focal"`` (Unbiased Teacher's focal-loss RoI
    classifier, gamma 1.5).
    """

    kind = "faster_rcnn"
    regression_terms = ("loss_box_reg", "loss_rpn_box_reg")
    # a two-stage detector trained on its own mined boxes learns pieces of objects: without this rule, most of
    # what co-mining mined on digits `hard` were boxes on a piece of a labelled (or an erased) digit
    mining_part = 0.5

    def __init__(self, model: nn.Module, num_classes: int, roi_cls_loss: str = "ce", focal_gamma: float = 1.5) -> None:
        super().__init__(model, num_classes)
        if roi_cls_loss not in ("ce", "focal"):
            raise MinedetError(f"model.extra.roi_cls_loss must be 'ce' or 'focal', got {roi_cls_loss!r}")
        self.roi_cls_loss = roi_cls_loss
        self.focal_gamma = focal_gamma

    def forward_heads(self, images: Sequence[Tensor]) -> HeadOutputs:
        image_list, sizes = self._transform(images)
        features, names = self._features(image_list)
        rpn = self.model.rpn
        objectness, deltas = rpn.head(features)
        anchors = rpn.anchor_generator(image_list, features)
        napl = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        b = len(anchors)
        proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(b, -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, objectness, image_list.image_sizes, napl)
        head = {"objectness": objectness.view(b, -1), "rpn_deltas": deltas.view(b, -1, 4)}
        return HeadOutputs(image_list, sizes, features, head, anchors, napl, [p.detach() for p in boxes], names)

    def _feature_dict(self, out: HeadOutputs) -> dict[str, Tensor]:
        return dict(zip(out.feature_names, out.features))

    def rpn_loss(self, out: HeadOutputs, targets: Sequence[Target]) -> dict[str, Tensor]:
        rpn = self.model.rpn
        labels, reg_targets, reg_mask = [], [], []
        for anchors, t in zip(out.anchors, targets):
            if len(t) == 0:
                labels.append(torch.zeros(anchors.shape[0], dtype=torch.float32, device=anchors.device))
                reg_targets.append(torch.zeros_like(anchors))
                reg_mask.append(torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device))
                continue
            m = rpn.proposal_matcher(rpn.box_similarity(t.boxes, anchors))
            mc = m.clamp(min=0)
            lab = (m >= 0).to(torch.float32)
            lab[m == rpn.proposal_matcher.BELOW_LOW_THRESHOLD] = 0.0
            lab[m == rpn.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
            if "weight" in t.flags:
                lab[(m >= 0) & (t.flags["weight"][mc] <= 0)] = -1.0
            labels.append(lab)
            reg_targets.append(rpn.box_coder.encode_single(t.boxes[mc], anchors))
            reg_mask.append(t.flag("regress")[mc] | (m < 0))
        pos, neg = rpn.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos))[0]
        neg = torch.where(torch.cat(neg))[0]
        sampled = torch.cat([pos, neg])
        objectness = out.head["objectness"].flatten()
        deltas = out.head["rpn_deltas"].reshape(-1, 4)
        labels = torch.cat(labels)
        reg_targets = torch.cat(reg_targets)
        pos_reg = pos[torch.cat(reg_mask)[pos]]
        box_loss = F.smooth_l1_loss(deltas[pos_reg], reg_targets[pos_reg], beta=1 / 9, reduction="sum") / max(1, sampled.numel())
        obj_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
        return {"loss_objectness": obj_loss, "loss_rpn_box_reg": box_loss}

    def roi_loss(self, out: HeadOutputs, targets: Sequence[Target]) -> dict[str, Tensor]:
        roi = self.model.roi_heads
        proposals = [torch.cat([p, t.boxes]) for p, t in zip(out.proposals, targets)]
        labels, matched, flags_w, flags_r = [], [], [], []
        for props, t in zip(proposals, targets):
            if len(t) == 0:
                labels.append(torch.zeros(props.shape[0], dtype=torch.int64, device=props.device))
                matched.append(torch.zeros(props.shape[0], dtype=torch.int64, device=props.device))
                flags_w.append(torch.ones(props.shape[0], device=props.device))
                flags_r.append(torch.zeros(props.shape[0], dtype=torch.bool, device=props.device))
                continue
            m = roi.proposal_matcher(box_ops.box_iou(t.boxes, props))
            mc = m.clamp(min=0)
            lab = (t.labels[mc] + 1).to(torch.int64)
            lab[m == roi.proposal_matcher.BELOW_LOW_THRESHOLD] = 0
            lab[m == roi.proposal_matcher.BETWEEN_THRESHOLDS] = -1
            w = t.flag("weight")[mc].to(torch.float32)
            if "weight" in t.flags:
                lab[(m >= 0) & (w <= 0)] = -1
            w[m < 0] = 1.0
            labels.append(lab)
            matched.append(mc)
            flags_w.append(w)
            flags_r.append(t.flag("regress")[mc])
        sampled = roi.subsample(labels)
        gt_boxes, props_s = [], []
        for i, t in enumerate(targets):
            s = sampled[i]
            props_s.append(proposals[i][s])
            labels[i], matched[i], flags_w[i], flags_r[i] = labels[i][s], matched[i][s], flags_w[i][s], flags_r[i][s]
            boxes = t.boxes if len(t) else torch.zeros((1, 4), dtype=torch.float32, device=t.boxes.device)
            gt_boxes.append(boxes[matched[i]])
        reg_targets = roi.box_coder.encode(gt_boxes, props_s)
        feats = roi.box_roi_pool(self._feature_dict(out), props_s, out.images.image_sizes)
        class_logits, box_regression = roi.box_predictor(roi.box_head(feats))
        labels = torch.cat(labels)
        weights = torch.cat(flags_w)
        regress = torch.cat(flags_r)
        reg_targets = torch.cat(reg_targets)
        if self.roi_cls_loss == "focal":
            ce = F.cross_entropy(class_logits, labels, reduction="none")
            p = torch.exp(-ce)
            cls = ((1 - p) ** self.focal_gamma * ce * weights).sum() / max(1, labels.numel())
        elif torch.all(weights == 1):
            cls = F.cross_entropy(class_logits, labels)
        else:
            cls = (F.cross_entropy(class_logits, labels, reduction="none") * weights).sum() / max(1, labels.numel())
        pos = torch.where((labels > 0) & regress)[0]
        n, k = class_logits.shape
        box_regression = box_regression.reshape(n, box_regression.size(-1) // 4, 4)
        box = F.smooth_l1_loss(box_regression[pos, labels[pos]], reg_targets[pos], beta=1 / 9, reduction="sum")
        return {"loss_classifier": cls, "loss_box_reg": box / max(1, labels.numel())}

    def loss(self, out: HeadOutputs, targets: Sequence[Target],
             background: Sequence[Target] | None = None) -> dict[str, Tensor]:
        targets = self._to_resized(targets, out)
        rpn = self.rpn_loss(out, targets)
        roi = self.roi_loss(out, targets)
        return {**roi, **rpn}

    def decode(self, out, *, score_thresh=None, nms_thresh=None, topk_candidates=None, detections_per_img=None,
               score_rule=None):
        """RoI-head detections on the best proposals: at most ``topk_candidates`` per image, and never
        more than the RPN keeps at test time, so a training-mode forward (2000 proposals by default)
        is decoded as the detector would decode it at inference, at half the RoI-head cost."""
        roi = self.model.roi_heads
        cap = self.model.rpn._post_nms_top_n["testing"]
        if topk_candidates is not None:
            cap = min(cap, topk_candidates)
        proposals = [p[:cap] for p in out.proposals]  # filter_proposals returns them best first
        feats = roi.box_roi_pool(self._feature_dict(out), proposals, out.images.image_sizes)
        class_logits, box_regression = roi.box_predictor(roi.box_head(feats))
        with _overridden(roi, score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img):
            boxes, scores, labels = roi.postprocess_detections(
                class_logits, box_regression, proposals, out.images.image_sizes
            )
        return [
            Target(self._to_input(b, rs, os), lab - 1, s)
            for b, s, lab, rs, os in zip(boxes, scores, labels, out.images.image_sizes, out.input_sizes)
        ]


ADAPTERS: dict[type, type[DetectorAdapter]] = {
    RetinaNet: RetinaNetAdapter,
    FCOS: FCOSAdapter,
    FasterRCNN: FasterRCNNAdapter,
}
