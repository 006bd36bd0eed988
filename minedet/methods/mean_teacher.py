"""Mean Teacher for semi-supervised detection, as in Unbiased Teacher (Liu et al., ICLR 2021) and
the base of ACRST (Zhang et al., AAAI 2022, Eq. 1-5): the online-teacher configuration of
:class:`~minedet.methods.self_training.SelfTraining`.

Each step sees a labelled and an unlabelled batch (1:1 by default):

1. **Burn-in** (the first ``burn_in`` steps): supervised loss only; the teacher is not used.
   After step ``burn_in`` (``after_step(burn_in)``) the teacher becomes an exact copy of the
   student, then follows it by EMA after every step (``minedet.models.ema.BurnInTeacher``, the classifier's too:
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
  background. On long-tailed digits it lifts Mean Teacher above supervised training at 2 and 5 %
  labelled and far above the papers' rule at 10 %, where it still stays below supervised training
  (docs/findings.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from minedet.errors import MinedetError
from minedet.methods.self_training import (Group, KnownFilter, Mined, SelfTraining, SelfTrainingOptions, StepInput,
                                           TeacherSource, split_labels)
from minedet.models.detector import DetectorAdapter
from minedet.models.ema import BurnInTeacher


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


class EmaTeacher(TeacherSource):
    """The online teacher: a frozen copy of the student made at the end of burn-in, then its exponential moving
    average (``teacher = decay * teacher + (1 - decay) * student`` after every step). It labels the *weak* view of
    every image of the groups that learn from ``teacher``; with adaptive thresholds it also reports what it makes
    of the labelled boxes of the step (the labelled and sparse weak views).

    The teacher exists from construction so that a checkpoint has the same keys before and after burn-in."""

    timing_key = "time/teacher"

    def __init__(self, detector: DetectorAdapter, burn_in: int, decay: float, nms: float | None, max_dets: int) -> None:
        super().__init__()
        self.ema = BurnInTeacher(detector, decay, burn_in)
        self.nms, self.max_dets = nms, max_dets

    @property
    def teacher(self) -> DetectorAdapter:
        return self.ema.module

    def ready(self, steps_done: int) -> bool:
        """True once burn-in is over (the teacher has been copied from the student)."""
        return steps_done >= self.ema.burn_in

    @torch.no_grad()
    def mine(self, inp: StepInput) -> list[Mined]:
        streams = [g.stream for g in inp.learners("teacher")]
        weak = {s: inp.batch[s].views["weak"] for s in streams}
        images = [v.image for s in streams for v in weak[s]]
        self.teacher.eval()
        dets = self.teacher.predict(images, score_thresh=inp.floor, nms_thresh=self.nms, detections_per_img=self.max_dets)
        if inp.rule.thresholds is not None:  # what the teacher makes of the labelled boxes now
            known = known_views(inp.batch)
            seen = self.teacher.predict([v.image for v in known], score_thresh=inp.rule.thresholds.lo, nms_thresh=self.nms,
                                        detections_per_img=self.max_dets)
            inp.rule.thresholds.observe(seen, [v.target for v in known])
        mined, j = [], 0
        for s in streams:
            views = weak[s]
            raw = [d.detach() for d in dets[j:j + len(views)]]
            j += len(views)
            known = [v.target for v in views]  # true boxes of a sparse image; none on an unlabelled one
            ids = [v.target.image_id for v in views]
            _, labels = split_labels(inp, raw, known, inp.rejected(s, views), ids)
            mined.append(Mined("teacher", s, tuple(int(i) for i in ids), [v.map for v in views], known, raw, labels))
        return mined

    def after_step(self, step: int, student: DetectorAdapter) -> None:
        """Copy the student at the end of burn-in, follow it by EMA after."""
        self.ema.follow(step, student)

    def eval_models(self) -> dict[str, DetectorAdapter]:
        """The teacher first once burn-in is over (the exported model, as in Unbiased Teacher's evaluation)."""
        return {"teacher": self.teacher} if self.ema.ready else {}

    def extra_state(self) -> dict[str, Any]:
        return self.ema.extra_state()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.ema.load_extra_state(state)


def known_views(batch: dict) -> list:
    """Views whose boxes are true labels, in the teacher's frame: the labelled weak views (strong when the run has
    no weak labelled view) and the sparse weak views."""
    out = []
    if "labelled" in batch:
        lab = batch["labelled"].views
        out += lab["weak"] if "weak" in lab else lab["strong"]
    if "sparse" in batch:
        out += batch["sparse"].views["weak"]
    return out


class MeanTeacher(SelfTraining):
    """Teacher-student self-training with an EMA teacher; see the module docstring.

    Args:
        detector: the student.
        options: :class:`MeanTeacherOptions`.
        parts: ACRST's parts (:class:`~minedet.methods.acrst.AcrstPart`), none by default.
        keep: the known filter (the mixed method's; default: reviewer-rejected boxes only).
    """

    name = "mean_teacher"

    def __init__(self, detector: DetectorAdapter, options: MeanTeacherOptions | None = None, *, parts=(),
                 keep: KnownFilter | None = None) -> None:
        o = options or MeanTeacherOptions()
        if o.burn_in < 0:
            raise MinedetError(f"method.burn_in must be >= 0, got {o.burn_in}")
        if not 0.0 <= o.ema_decay <= 1.0:
            raise MinedetError(f"method.ema_decay must be in [0, 1], got {o.ema_decay}")
        if o.sup_views not in ("both", "weak", "strong"):
            raise MinedetError(f"method.sup_views must be both, weak or strong, got {o.sup_views!r}")
        super().__init__(detector, o, EmaTeacher(detector, o.burn_in, o.ema_decay, o.nms, o.max_dets), parts=parts,
                         keep=keep)
        self.options: MeanTeacherOptions = o

    @property
    def teacher(self) -> DetectorAdapter:
        return self.source.teacher

    def sup_view_names(self) -> tuple[str, ...]:
        return {"both": ("weak", "strong"), "weak": ("weak",), "strong": ("strong",)}[self.options.sup_views]

    def streams(self) -> dict:
        """Labelled: the supervised views; unlabelled: the teacher's weak view and the student's strong view (led by
        ACRST's paste step where its parts declare one)."""
        from minedet.data.transforms import Compose

        lab = {"weak": Compose([]), "strong": self.student_view("labelled")}
        return {"labelled": {k: lab[k] for k in self.sup_view_names()},
                "unlabelled": {"weak": Compose([]), "strong": self.student_view("unlabelled")}}

    def groups(self, batch: dict) -> tuple[Group, ...]:
        """Burn-in: the labelled views alone. After: and the unlabelled strong views, taught the teacher's labels."""
        sup = Group("labelled", self.sup_view_names(), "sup")
        if not self.source.ready(self.steps_done):
            return (sup,)
        return sup, Group("unlabelled", ("strong",), "unsup", self.options.lambda_unsup, source="teacher")

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
