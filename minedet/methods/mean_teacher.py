"""Mean Teacher for semi-supervised detection, as in Unbiased Teacher (Liu et al., ICLR 2021) and
the base of ACRST (Zhang et al., AAAI 2022, Eq. 1-5).

Each step sees a labelled and an unlabelled batch (1:1 by default):

1. **Burn-in** (the first ``burn_in`` steps): supervised loss only; the teacher is not used.
   After step ``burn_in`` (``after_step(burn_in)``) the teacher becomes an exact copy of the
   student, then follows it by EMA after every step (``minedet.engine.ema.ModelEMA``:
   ``teacher = decay * teacher + (1 - decay) * student``).
2. **Mutual learning**: the teacher (eval mode, no gradients) predicts on the unlabelled *weak*
   view; detections with score > ``tau`` after class-wise NMS are the pseudo-labels. They are
   carried into the student's *strong* view with the views' recorded ``BoxMap`` s
   (``weak.map.inverse().then(strong.map)``: exact under flip / scale / crop) and supervise the
   student there. ``L = L_sup + lambda_unsup * L_unsup`` (Eq. 3).

Choices (documented, tested):

* Supervised loss on **both** labelled views (weak and strong, one loss over the 2B images), as
  Unbiased Teacher's trainer does in burn-in and after; ``sup_views`` = ``weak`` / ``strong`` picks one.
* ``unsup_regression=False`` (Unbiased Teacher, ACRST Eq. 5): pseudo boxes carry ``regress=False``
  (no regression gradient from them) *and* the regression terms are left out of the ``unsup/``
  dict, so only the classification terms remain: RetinaNet ``classification``; FCOS
  ``classification``; Faster R-CNN RPN ``loss_objectness`` + RoI ``loss_classifier``.
* The teacher exists from construction (a frozen copy of the initial student) so that a checkpoint
  has the same keys before and after burn-in (exact resume). Until burn-in ends it is not used and
  :meth:`eval_models` returns only the student; afterwards ``{"teacher", "student"}`` with the
  teacher first: the exported model is the teacher, as in Unbiased Teacher's evaluation.
* ``geometric=True`` puts a ``RandomScaleCrop`` before the photometric strong view (boxes follow).
* ``roi_focal=True`` (Faster R-CNN only) uses Unbiased Teacher's focal RoI classification loss.
* ``ignore_below`` (off by default; not in the papers): the teacher's detections scoring in
  ``[ignore_below, tau]`` join the student's targets with ``weight=0``, so the anchors / proposals
  they match are neither positives nor background. Without it every object the teacher is unsure
  of is taught as background with ``lambda_unsup``, and the teacher's pseudo-labels per image
  shrink as training goes on (measured on long-tailed digits: 2.3 -> 0.8 per image at 2 % labelled).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from minedet.data.transforms import BoxMap, Compose, RandomScaleCrop, view_transform
from minedet.engine.ema import ModelEMA
from minedet.errors import MinedetError
from minedet.methods.base import Method, prefixed
from minedet.models.detector import DetectorAdapter
from minedet.pseudo import filters as pf
from minedet.pseudo.quality import QualityCounts
from minedet.structures import Target

# The loss terms that supervise box geometry, per detector kind (left out of unsup/ when pseudo
# boxes do not regress). FCOS centerness is trained only for regressed boxes, so it goes too.
REGRESSION_KEYS: dict[str, tuple[str, ...]] = {
    "retinanet": ("bbox_regression",),
    "fcos": ("bbox_regression", "bbox_ctrness"),
    "faster_rcnn": ("loss_box_reg", "loss_rpn_box_reg"),
}


def drop_regression(losses: dict[str, Tensor], kind: str) -> dict[str, Tensor]:
    """``losses`` without the box-regression terms of detector ``kind``."""
    drop = REGRESSION_KEYS.get(kind, ())
    return {k: v for k, v in losses.items() if k not in drop}


def carry(t: Target, src: BoxMap, dst: BoxMap, min_size: float = 1.0) -> Target:
    """Move boxes from the frame of a view with map ``src`` into the frame of a view with map
    ``dst`` (both maps start from the same file image): ``dst ∘ src⁻¹``. Boxes are clipped to
    ``dst.size`` and those left thinner than ``min_size`` pixels (cropped away) are dropped."""
    if src == dst:
        return t
    m = src.inverse().then(dst)
    return pf.min_size(t.with_boxes(m.apply(t.boxes)), min_size)


@dataclass
class MeanTeacherOptions:
    """burn_in: supervised-only steps before the teacher is copied (ACRST: 3000-10000 on COCO);
    ema_decay: teacher keep rate (0.9996); tau: pseudo-label score threshold (0.7);
    nms: class-wise NMS IoU of the teacher's detections (None: the detector's own);
    max_dets: pseudo boxes per image; lambda_unsup: weight of the unsupervised loss (4);
    unsup_regression: pseudo boxes also supervise box regression (False: Unbiased Teacher);
    strong_view: the student's photometric view (strong | color | blur | none);
    geometric: add a random scale+crop to the strong view; sup_views: both | weak | strong;
    roi_focal: focal RoI classification loss (Faster R-CNN);
    ignore_below: teacher detections scoring in [ignore_below, tau] are ignored, not background (None: off)."""

    burn_in: int = 2000
    ema_decay: float = 0.9996
    tau: float = 0.7
    nms: float | None = None
    max_dets: int = 100
    lambda_unsup: float = 4.0
    unsup_regression: bool = False
    strong_view: str = "strong"
    geometric: bool = False
    sup_views: str = "both"
    roi_focal: bool = False
    ignore_below: float | None = None


class MeanTeacher(Method):
    """Teacher-student self-training; see the module docstring.

    Args:
        detector: the student.
        options: :class:`MeanTeacherOptions`.
    """

    name = "mean_teacher"

    def __init__(self, detector: DetectorAdapter, options: MeanTeacherOptions | None = None) -> None:
        super().__init__(detector)
        self.options = o = options or MeanTeacherOptions()
        if o.burn_in < 0:
            raise MinedetError(f"method.burn_in must be >= 0, got {o.burn_in}")
        if not 0.0 <= o.ema_decay <= 1.0:
            raise MinedetError(f"method.ema_decay must be in [0, 1], got {o.ema_decay}")
        if o.ignore_below is not None and not 0.0 <= o.ignore_below <= o.tau:
            raise MinedetError(f"method.ignore_below must be in [0, tau={o.tau}], got {o.ignore_below}")
        if o.sup_views not in ("both", "weak", "strong"):
            raise MinedetError(f"method.sup_views must be both, weak or strong, got {o.sup_views!r}")
        try:
            strong = view_transform(o.strong_view)
        except ValueError as e:
            raise MinedetError(f"method.strong_view: {e}") from None
        if o.roi_focal:
            if detector.kind != "faster_rcnn":
                raise MinedetError(f"method.roi_focal applies to faster_rcnn only, not {detector.kind}")
            detector.roi_cls_loss = "focal"
        self._strong = Compose([RandomScaleCrop(), *strong.transforms]) if o.geometric else strong
        self.ema = ModelEMA(detector, o.ema_decay)
        self.steps_done = 0
        self.quality = QualityCounts()
        self._datasets: dict = {}
        self._out_dir: Path | None = None
        self._last: dict[str, Any] = {}
        self._uncertain: list[Target] | None = None

    # ------------------------------------------------------------------ wiring
    @property
    def teacher(self) -> DetectorAdapter:
        return self.ema.module

    @property
    def teacher_active(self) -> bool:
        """True once burn-in is over (the teacher has been copied from the student)."""
        return self.steps_done >= self.options.burn_in

    def _sup_view_names(self) -> list[str]:
        return {"both": ["weak", "strong"], "weak": ["weak"], "strong": ["strong"]}[self.options.sup_views]

    def streams(self) -> dict[str, dict[str, Compose]]:
        lab = {"weak": Compose([]), "strong": self._strong}
        lab = {k: lab[k] for k in self._sup_view_names()}
        return {"labelled": lab, "unlabelled": {"weak": Compose([]), "strong": self._strong}}

    def bind(self, datasets: dict, out_dir: str | Path | None = None) -> None:
        self._datasets = datasets
        self._out_dir = None if out_dir is None else Path(out_dir)

    # ------------------------------------------------------------------ named steps
    @torch.no_grad()
    def pseudo_labels(self, weak_views: list) -> list[Target]:
        """The teacher's pseudo-labels on the unlabelled weak views (boxes in the weak frame):
        score > tau, class-wise NMS, at most ``max_dets``; flagged ``pseudo`` and
        ``regress=unsup_regression``."""
        o = self.options
        self.teacher.eval()
        dets = self.teacher.predict(self.images(weak_views), score_thresh=self.score_floor(o.tau), nms_thresh=o.nms,
                                    detections_per_img=o.max_dets)
        dets = [d.detach() for d in dets]
        self._uncertain = self.uncertain(dets)
        keep = pf.compose(lambda t: pf.by_score(t, o.tau), *([lambda t: pf.nms(t, o.nms)] if o.nms is not None else []))
        return [pf.as_pseudo(keep(d), regress=o.unsup_regression) for d in dets]

    def score_floor(self, thresh: float) -> float:
        """The score down to which the teacher must report detections: ``thresh``, or
        ``ignore_below`` when that is lower."""
        o = self.options
        return thresh if o.ignore_below is None else min(thresh, o.ignore_below)

    def uncertain(self, dets: list[Target]) -> list[Target] | None:
        """The teacher's detections scoring in ``[ignore_below, tau]`` as ignored boxes (``weight=0``,
        no regression), or None when ``ignore_below`` is off."""
        o = self.options
        if o.ignore_below is None:
            return None
        return [pf.as_pseudo(d.select((d.scores >= o.ignore_below) & (d.scores <= o.tau)), regress=False)
                .with_flags(weight=0.0) for d in dets]

    def with_uncertain(self, pseudo: list[Target]) -> list[Target]:
        """``pseudo`` plus this step's ignored boxes (same weak-view frame), for the student's targets;
        the pseudo-labels proper (quality, CropBank) never include them."""
        if self._uncertain is None:
            return pseudo
        return [Target.cat([p, u]) for p, u in zip(pseudo, self._uncertain)]

    def supervised_loss(self, out, targets: list[Target]) -> dict[str, Tensor]:
        return prefixed(self.detector.loss(out, targets), "sup")

    def unsupervised_loss(self, out, targets: list[Target]) -> dict[str, Tensor]:
        losses = self.detector.loss(out, targets)
        if not self.options.unsup_regression:
            losses = drop_regression(losses, self.detector.kind)
        return prefixed(losses, "unsup", self.options.lambda_unsup)

    def sup_targets(self, views: list) -> list[Target]:
        """The targets of the labelled views (ACRST overrides this for pasted pseudo crops)."""
        return self.targets(views)

    def observe(self, batch: dict, pseudo: list[Target]) -> None:
        """Called with each step's pseudo-labels (weak-view frame); ACRST fills its pseudo bank."""

    def unsup_targets(self, batch: dict, pseudo: list[Target]) -> list[Target]:
        """Pseudo-labels carried from each weak view into its strong view (ACRST overrides this
        to paste CropBank instances)."""
        views = batch["unlabelled"]["views"]
        return [carry(p, w.map, s.map) for p, w, s in zip(pseudo, views["weak"], views["strong"])]

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: dict) -> dict[str, Tensor]:
        lab = batch["labelled"]["views"]
        sup_views = [v for name in self._sup_view_names() for v in lab[name]]
        if not self.teacher_active:
            out = self.detector.forward_heads(self.images(sup_views))
            self._last = {}
            return self.supervised_loss(out, self.sup_targets(sup_views))

        unl = batch["unlabelled"]["views"]
        pseudo = self.pseudo_labels(unl["weak"])
        self._measure(batch, pseudo)
        self.observe(batch, pseudo)
        targets_u = self.unsup_targets(batch, self.with_uncertain(pseudo))
        n = len(sup_views)
        out = self.detector.forward_heads(self.images(sup_views) + self.images(unl["strong"]))
        losses = self.supervised_loss(out.take(slice(0, n)), self.sup_targets(sup_views))
        losses.update(self.unsupervised_loss(out.take(slice(n, None)), targets_u))
        self._last = {"pseudo": pseudo, "unsup_targets": targets_u}
        return losses

    def after_step(self, step: int) -> None:
        """``step`` optimiser steps are done: copy the teacher at the end of burn-in, EMA after."""
        self.steps_done = step
        if step == self.options.burn_in:
            self.ema.copy_from(self.detector)
        elif step > self.options.burn_in:
            self.ema.update(self.detector)

    # ------------------------------------------------------------------ measurement
    def _measure(self, batch: dict, pseudo: list[Target]) -> None:
        self.metrics["pseudo/boxes_per_image"] = sum(len(p) for p in pseudo) / max(1, len(pseudo))
        ds = self._datasets.get("unlabelled")
        if ds is None or getattr(ds, "hidden", None) is None:
            return
        q = QualityCounts()
        ids = batch["unlabelled"]["image_id"]
        for image_id, p, v in zip(ids, pseudo, batch["unlabelled"]["views"]["weak"]):
            hidden = ds.hidden_target(image_id)
            hidden = hidden.with_boxes(v.map.apply(hidden.boxes))  # file frame -> weak-view frame
            q.add(p.to("cpu"), hidden)
            self.quality.add(p.to("cpu"), hidden)
        self.metrics.update(q.as_dict(prefix="quality/"))

    # ------------------------------------------------------------------ evaluation / state
    def eval_models(self) -> dict[str, DetectorAdapter]:
        if not self.teacher_active:
            return {"student": self.detector}
        return {"teacher": self.teacher, "student": self.detector}

    def extra_state(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state.get("steps_done", 0))
