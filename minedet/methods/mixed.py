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

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from minedet.data.transforms import BoxMap, Compose
from minedet.errors import MinedetError
from minedet.methods.base import prefixed
from minedet.methods.mean_teacher import MeanTeacher, MeanTeacherOptions
from minedet.models.detector import DetectorAdapter
from minedet.pseudo import filters as pf
from minedet.pseudo.semantics import PseudoLabels, known_background
from minedet.structures import Target


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
    """See the module docstring."""

    name = "mixed"
    optional_streams = frozenset({"labelled", "unlabelled"})

    def __init__(self, detector: DetectorAdapter, options: MixedOptions | None = None) -> None:
        o = options or MixedOptions()
        if not 0.0 <= o.iou_gt <= 1.0:
            raise MinedetError(f"method.iou_gt must be in [0, 1], got {o.iou_gt}")
        if o.contain is not None and not 0.0 < o.contain <= 1.0:
            raise MinedetError(f"method.contain must be in (0, 1] or null, got {o.contain}")
        if o.lambda_sparse < 0:
            raise MinedetError(f"method.lambda_sparse must be >= 0, got {o.lambda_sparse}")
        super().__init__(detector, o)
        self.options: MixedOptions = o

    # ------------------------------------------------------------------ wiring
    def streams(self) -> dict[str, dict[str, Compose]]:
        s = super().streams()
        return {"labelled": s["labelled"], "sparse": {"weak": Compose([]), "strong": self.strong},
                "unlabelled": s["unlabelled"]}

    def bind(self, datasets: dict, out_dir=None) -> None:
        if "labelled" not in datasets and "sparse" not in datasets:
            raise MinedetError("the mixed method needs labelled images: complete (data.train) or sparse ones")
        super().bind(datasets, out_dir)

    def pseudo_streams(self, batch: dict) -> list[str]:
        return [s for s in ("sparse", "unlabelled") if s in batch]

    def stream_loss(self, stream: str) -> tuple[str, float]:
        return ("sparse", self.options.lambda_sparse) if stream == "sparse" else super().stream_loss(stream)

    def sup_views(self, batch: dict) -> list:
        return super().sup_views(batch) if "labelled" in batch else []

    def known_views(self, batch: dict) -> list:
        """Views with true boxes in the teacher's frame: the labelled and the sparse weak views."""
        lab = super().known_views(batch) if "labelled" in batch else []
        return lab + (batch["sparse"].views["weak"] if "sparse" in batch else [])

    # ------------------------------------------------------------------ the steps
    def supervised_step(self, batch: dict) -> dict[str, Tensor]:
        """Burn-in: the labelled views, and the sparse strong views with their labelled boxes."""
        views = self.sup_views(batch)
        use = "sparse" in batch and (self.options.sparse_burn_in or not views)
        sparse = batch["sparse"].views["strong"] if use else []
        out = self.detector.forward_heads(self.images(views) + self.images(sparse))
        n = len(views)
        losses = prefixed(self.detector.loss(out.take(slice(0, n)), self.sup_targets(views)), "sup") if n else {}
        if sparse:
            losses.update(prefixed(self.detector.loss(out.take(slice(n, None)), self.targets(sparse)), "sparse",
                                   self.options.lambda_sparse))
        return losses

    @torch.no_grad()
    def pseudo_labels(self, batch: dict) -> tuple[PseudoLabels, list[BoxMap]]:
        """Mean Teacher's pseudo-labels of the sparse and unlabelled images, minus what a labelled box
        already covers (both the confident and the ignored ones)."""
        labels, maps = super().pseudo_labels(batch)
        known = self.targets(self.pseudo_views(batch, "weak"))  # empty on unlabelled images
        rejected = [r for s in self.pseudo_streams(batch) for r in known_background(
            self.datasets.get(s), batch[s].image_ids, [v.map for v in batch[s].views["weak"]])]
        confident = [self.unknown(t, k, r) for t, k, r in zip(labels.confident, known, rejected)]
        ignored = None if labels.ignored is None else [self.unknown(t, k, r) for t, k, r in zip(labels.ignored, known, rejected)]
        return replace(labels, confident=confident, ignored=ignored), maps

    def unknown(self, t: Target, known: Target, rejected: Target) -> Target:
        """The boxes of ``t`` no labelled box of ``known`` accounts for and no rejected box forbids."""
        o = self.options
        return pf.drop_known(t, known, o.iou_gt, same_class=False, contain=o.contain, rejected=rejected,
                             rejected_iou=o.rejected_iou)

    def unsup_targets(self, batch: dict, labels: PseudoLabels, maps: list[BoxMap]) -> list[Target]:
        """The template's carried pseudo-labels, after each sparse image's labelled boxes (true targets)."""
        carried = super().unsup_targets(batch, labels, maps)
        strong = self.pseudo_views(batch, "strong")
        return [Target.cat([v.target, c]) if len(v.target) else c for v, c in zip(strong, carried)]
