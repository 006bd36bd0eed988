"""Mean Teacher for semi-supervised detection, as in Unbiased Teacher (Liu et al., ICLR 2021) and
the base of ACRST (Zhang et al., AAAI 2022, Eq. 1-5): the online-teacher configuration of
:class:`~minedet.methods.self_training.SelfTraining`.

Each step sees a labelled and an unlabelled batch (1:1 by default):

1. **Burn-in** (the first ``burn_in`` steps): supervised loss only; the teacher is not used.
   After step ``burn_in`` (``after_step(burn_in)``) the teacher becomes an exact copy of the
   student, then follows it by EMA after every step (``minedet.models.ema.ModelEMA``:
   ``teacher = decay * teacher + (1 - decay) * student``).
2. **Mutual learning**: the teacher (eval mode, no gradients) predicts on the unlabelled *weak*
   view; the template's pseudo-label rule and box transport make the student's targets on the
   *strong* view. ``L = L_sup + lambda_unsup * L_unsup`` (Eq. 3).

Choices (documented, tested):

* Supervised loss on **both** labelled views (weak and strong, one loss over the 2B images), as
  Unbiased Teacher's trainer does in burn-in and after; ``sup_views`` = ``weak`` / ``strong`` picks one.
* ``unsup_regression=False`` (Unbiased Teacher, ACRST Eq. 5): pseudo boxes carry ``regress=False``,
  so they add no box-regression gradient (FCOS centerness included).
* The teacher exists from construction (a frozen copy of the initial student) so that a checkpoint
  has the same keys before and after burn-in (exact resume). Until burn-in ends it is not used and
  :meth:`eval_models` returns only the student; afterwards ``{"teacher", "student"}`` with the
  teacher first: the exported model is the teacher, as in Unbiased Teacher's evaluation.
* Unbiased Teacher's focal RoI classification loss (Faster R-CNN) is a detector option:
  ``model.extra.roi_cls_loss=focal``.
* ``ignore_below`` (0.3 by default, beyond the papers; ``paper=true`` turns it off): the teacher's
  detections scoring in ``[ignore_below, tau]`` are ignored boxes (``weight=0``) instead of
  background. On long-tailed digits it lifts Mean Teacher above supervised training at 2, 5 and
  10 % labelled, where the papers' rule falls below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from minedet.data.transforms import BoxMap
from minedet.models.ema import ModelEMA
from minedet.errors import MinedetError
from minedet.methods.self_training import SelfTraining, SelfTrainingOptions
from minedet.models.detector import DetectorAdapter
from minedet.pseudo.semantics import PseudoLabels


@dataclass
class MeanTeacherOptions(SelfTrainingOptions):
    """:class:`SelfTrainingOptions` (tau 0.7, lambda_unsup 4, no regression from pseudo boxes) plus
    burn_in: supervised-only steps before the teacher is copied (ACRST: 3000-10000 on COCO);
    ema_decay: teacher keep rate (0.9996); sup_views: both | weak | strong."""

    burn_in: int = 2000
    ema_decay: float = 0.9996
    sup_views: str = "both"
    # beyond the papers, measured better on long-tailed digits at 2, 5 and 10 % labelled (docs/benchmarks.md);
    # method.paper=true restores the papers' rule (every detection below tau is background)
    ignore_below: float | None = 0.3


class MeanTeacher(SelfTraining):
    """Teacher-student self-training with an EMA teacher; see the module docstring.

    Args:
        detector: the student.
        options: :class:`MeanTeacherOptions`.
        rebalancer: ACRST's parts (:class:`~minedet.methods.acrst.Rebalancer`), or None.
    """

    name = "mean_teacher"

    def __init__(self, detector: DetectorAdapter, options: MeanTeacherOptions | None = None, *, rebalancer=None) -> None:
        o = options or MeanTeacherOptions()
        if o.burn_in < 0:
            raise MinedetError(f"method.burn_in must be >= 0, got {o.burn_in}")
        if not 0.0 <= o.ema_decay <= 1.0:
            raise MinedetError(f"method.ema_decay must be in [0, 1], got {o.ema_decay}")
        if o.sup_views not in ("both", "weak", "strong"):
            raise MinedetError(f"method.sup_views must be both, weak or strong, got {o.sup_views!r}")
        super().__init__(detector, o, rebalancer=rebalancer)
        self.options: MeanTeacherOptions = o
        self.ema = ModelEMA(detector, o.ema_decay)
        self.steps_done = 0

    @property
    def teacher(self) -> DetectorAdapter:
        return self.ema.module

    def teacher_ready(self) -> bool:
        """True once burn-in is over (the teacher has been copied from the student)."""
        return self.steps_done >= self.options.burn_in

    def sup_view_names(self) -> list[str]:
        return {"both": ["weak", "strong"], "weak": ["weak"], "strong": ["strong"]}[self.options.sup_views]

    def teacher_views(self) -> tuple[str, ...]:
        return ("weak",)

    @torch.no_grad()
    def pseudo_labels(self, batch: dict) -> tuple[PseudoLabels, list[BoxMap]]:
        """The teacher's detections on the unlabelled weak views (score >= the rule's floor, or ACRST's
        Pseudo Recall threshold when lower), split by the rule; boxes in the weak-view frame."""
        o = self.options
        weak = self.pseudo_views(batch, "weak")
        floor = self.rule.floor if self.rb is None else min(self.rule.floor, self.rb.o.pr_thresh)
        self.teacher.eval()
        dets = self.teacher.predict(self.images(weak), score_thresh=floor, nms_thresh=o.nms, detections_per_img=o.max_dets)
        ids = [v.target.image_id for v in weak]
        maps = [v.map for v in weak]
        if self.rb is not None:
            self.rb.add_detections([d.detach() for d in dets])  # Pseudo Recall (Eq. 8) counts scores > pr_thresh
        if self.rule.thresholds is not None:  # what the teacher makes of the labelled boxes now
            views = self.known_views(batch)
            seen = self.teacher.predict(self.images(views), score_thresh=self.rule.thresholds.lo, nms_thresh=o.nms,
                                        detections_per_img=o.max_dets)
            self.rule.thresholds.observe(seen, self.targets(views))
            for k, v in enumerate(self.rule.thresholds.values().tolist()):
                self.metrics[f"pseudo/tau_{k}"] = v
        return self.rule(dets, ids), maps

    def known_views(self, batch: dict) -> list:
        """Views whose boxes are true labels, in the teacher's frame (the labelled weak views)."""
        lab = batch["labelled"].views
        return lab["weak"] if "weak" in lab else lab["strong"]

    def after_step(self, step: int) -> None:
        """``step`` optimiser steps are done: copy the teacher at the end of burn-in, EMA after;
        ACRST refreshes its bank and class probabilities every ``refresh_every`` steps."""
        self.steps_done = step
        if step == self.options.burn_in:
            self.ema.copy_from(self.detector)
        elif step > self.options.burn_in:
            self.ema.update(self.detector)
        if self.rb is not None and step > self.options.burn_in and (step - self.options.burn_in) % self.rb.o.refresh_every == 0:
            self.rb.refresh(self.metrics)

    def schedule_warnings(self, max_steps: int) -> list[str]:
        """Burn-in that leaves no mutual learning, or a teacher whose EMA horizon (``1 / (1 - ema_decay)``
        steps) is longer than the steps after burn-in: the exported teacher would stay near its burn-in copy."""
        o, after = self.options, max_steps - self.options.burn_in
        if after <= 0:
            return [f"method.burn_in={o.burn_in} >= train.max_steps={max_steps}: the run never leaves burn-in, so "
                    "no unlabelled image is used and the teacher is never trained; lower method.burn_in"]
        horizon = math.inf if o.ema_decay >= 1.0 else 1.0 / (1.0 - o.ema_decay)
        if horizon > after:
            share = 1.0 - o.ema_decay ** after
            return [f"method.ema_decay={o.ema_decay} averages the student over about {horizon:.0f} steps but only {after} "
                    f"follow burn-in: the exported teacher ends {100 * share:.0f} % student, {100 - 100 * share:.0f} % its "
                    f"burn-in copy; for this schedule try method.ema_decay={1.0 - 4.0 / after:.4g} (a horizon of a quarter "
                    "of the steps after burn-in)"]
        return []

    def eval_models(self) -> dict[str, DetectorAdapter]:
        if not self.teacher_ready():
            return {"student": self.detector}
        return {"teacher": self.teacher, "student": self.detector}

    def extra_state(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done, **super().extra_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state.get("steps_done", 0))
        super().load_extra_state(state)
