"""Mixed supervision: completely labelled, sparsely labelled and unlabelled images in one run.

A configuration of the self-training template with up to three streams (beyond both papers):

* ``labelled``: complete labels, the supervised loss (``sup/*``), as in Mean Teacher;
* ``sparse``: the boxes present are true and stay targets; the EMA teacher's detections on the weak
  view that overlap none of them (IoU <= ``iou_gt`` with a labelled box of any class, and, with
  ``contain``, covering less than that share of one) pass the same pseudo-label rule as on
  unlabelled images (confident -> pseudo-label, uncertain band -> ignored, rest -> background). The
  student's loss on the strong view (``sparse/*``, weight ``lambda_sparse``) sees labelled ∪ pseudo;
* ``unlabelled``: pseudo-labels only (``unsup/*``, weight ``lambda_unsup``), as in Mean Teacher.

Burn-in trains on the complete images only when there are any (``sparse_burn_in=true``: on the sparse
images' labelled boxes too, which teaches their missing boxes as background). The ``labelled``
and ``unlabelled`` streams are optional (a run may hold only sparse images, or sparse and
unlabelled ones). Which image is which comes from the data (:mod:`minedet.data.mixed`).
Defaults: Mean Teacher's, with the uncertain band on (``ignore_below=0.3``).
"""

from __future__ import annotations

from dataclasses import dataclass

from minedet.data.transforms import Compose
from minedet.errors import MinedetError
from minedet.methods.mean_teacher import MeanTeacher, MeanTeacherOptions
from minedet.methods.self_training import Group, KnownFilter
from minedet.models.detector import DetectorAdapter


@dataclass
class MixedOptions(MeanTeacherOptions):
    """:class:`~minedet.methods.mean_teacher.MeanTeacherOptions` (``ignore_below=0.3``), plus
    lambda_sparse: weight of the sparse images' loss; iou_gt: a pseudo box overlapping a labelled box
    (any class) by IoU > iou_gt is dropped; contain: a pseudo box holding at least this share of a
    labelled box is dropped (None: off); rejected_iou: a pseudo box overlapping a box a reviewer rejected
    (the data's ``"rejected"`` list) by IoU > rejected_iou is dropped, so that region stays background
    (None: off); sparse_burn_in: burn-in also trains on the sparse images' labelled boxes (their unlabelled
    objects then count as background until the teacher takes over); off (the default: measured better on
    long-tailed digits, one seed, docs/benchmarks.md), burn-in sees the complete images only when there
    are any."""

    lambda_sparse: float = 1.0
    sparse_burn_in: bool = False
    iou_gt: float = 0.4
    contain: float | None = 0.8
    rejected_iou: float | None = 0.5


class Mixed(MeanTeacher):
    """See the module docstring: Mean Teacher's configuration with a sparse stream and the known filter (a teacher
    detection a sparse image's labelled box accounts for, of any class, is no new object)."""

    name = "mixed"
    optional_streams = frozenset({"labelled", "unlabelled"})
    #: your own data: a file whose images say nothing of how completely they were labelled is taken as sparse (the
    #: boxes present are true), the teacher averages about the last 100 steps, and RetinaNet trains on BRL's loss:
    #: the tree-crown benchmark's self-training on BRL's loss, which led self-training on the focal loss on dev on both
    #: protocols over three seeds (docs/findings.md, Sparse labels; the burn-in, a sixth of the steps, is proposed
    #: with the steps)
    own_data = {"*": {"data.unflagged": "sparse", "method.ema_decay": "0.99"},
                "retinanet": {"model.extra.cls_loss": "brl"}}

    def __init__(self, detector: DetectorAdapter, options: MixedOptions | None = None) -> None:
        o = options or MixedOptions()
        if not 0.0 <= o.iou_gt <= 1.0:
            raise MinedetError(f"method.iou_gt must be in [0, 1], got {o.iou_gt}")
        if o.contain is not None and not 0.0 < o.contain <= 1.0:
            raise MinedetError(f"method.contain must be in (0, 1] or null, got {o.contain}")
        if o.lambda_sparse < 0:
            raise MinedetError(f"method.lambda_sparse must be >= 0, got {o.lambda_sparse}")
        super().__init__(detector, o, keep=KnownFilter(o.iou_gt, same_class=False, contain=o.contain,
                                                       rejected_iou=o.rejected_iou))
        self.options: MixedOptions = o

    def streams(self) -> dict[str, dict[str, Compose]]:
        s = super().streams()
        return {"labelled": s["labelled"], "sparse": {"weak": Compose([]), "strong": self.strong_view()},
                "unlabelled": s["unlabelled"]}

    def bind(self, datasets: dict, out_dir=None) -> None:
        if "labelled" not in datasets and "sparse" not in datasets:
            raise MinedetError("the mixed method needs labelled images: complete (data.train) or sparse ones")
        super().bind(datasets, out_dir)

    def groups(self, batch: dict) -> tuple[Group, ...]:
        """Burn-in: the labelled views, and the sparse strong views with their labelled boxes (``sparse_burn_in``, or
        when the run has no complete image). After: the sparse and unlabelled strong views learn from the teacher
        too, the sparse ones their labelled boxes ∪ the teacher's labels."""
        o = self.options
        sup = (Group("labelled", self.sup_view_names(), "sup"),) if "labelled" in batch else ()
        if not self.source.ready(self.steps_done):
            alone = "sparse" in batch and (o.sparse_burn_in or not sup)
            return sup + ((Group("sparse", ("strong",), "sparse", o.lambda_sparse),) if alone else ())
        pseudo = [Group("sparse", ("strong",), "sparse", o.lambda_sparse, source="teacher")] if "sparse" in batch else []
        if "unlabelled" in batch:
            pseudo.append(Group("unlabelled", ("strong",), "unsup", o.lambda_unsup, source="teacher"))
        return sup + tuple(pseudo)
