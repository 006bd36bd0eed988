"""The self-training template: teacher detections -> one pseudo-label rule -> student targets -> losses.

Mean Teacher (Unbiased Teacher; ACRST Eq. 1-5), STAC and ACRST are configurations of
:class:`SelfTraining` (the structure follows MMDetection's ``SemiBaseDetector``: ``loss`` ->
``get_pseudo_instances`` -> ``loss_by_pseudo_instances``). A subclass names where the teacher's
detections come from (:meth:`SelfTraining.pseudo_labels`: an EMA teacher online, or a table the
teacher filled once); everything after that is shared:

1. the teacher's detections pass one :class:`~minedet.pseudo.semantics.PseudoRule` built from the
   options (score > ``tau``, class-wise NMS, optional extra stages; an optional ignored band);
2. they are carried from the frame they were made in into each unlabelled image's *strong* view
   (:func:`~minedet.pseudo.semantics.carry`, exact under flip / scale / crop);
3. ``L = L_sup + lambda_unsup * L_unsup`` with the student's losses on the labelled views and on
   the strong views. Which pseudo boxes regress is said by their ``regress`` flag alone.

ACRST's parts plug in as one component, :class:`~minedet.methods.acrst.Rebalancer` (CropBank,
FBR paste declared in the strong views, AFFR, the multi-label stage, selective supervision).
Each step leaves a :class:`StepRecord` in :attr:`SelfTraining.last_step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from minedet.data.transforms import BoxMap, Compose, RandomScaleCrop, view_transform
from minedet.errors import MinedetError
from minedet.methods.base import Method, check_share, detectors_own, prefixed
from minedet.models.detector import DetectorAdapter
from minedet.pseudo.quality import QualityCounts
from minedet.pseudo.semantics import ClassThresholds, PseudoLabels, PseudoRule, against_hidden, carry
from minedet.structures import Target


@dataclass
class SelfTrainingOptions:
    """tau: pseudo-label score threshold; nms: class-wise NMS IoU of the teacher's detections (None:
    the detector's own); max_dets: pseudo boxes per image; lambda_unsup: weight of the unlabelled loss;
    unsup_regression: pseudo boxes also supervise box regression; strong_view: the student's photometric
    view (strong | color | blur | none); geometric: add a random scale+crop to the strong view;
    ignore_below: teacher detections scoring in [ignore_below, tau] are ignored, not background (None: off);
    adaptive: per-class thresholds from the scores the teacher gives the labelled boxes (their
    adaptive_quantile, EMA, clamped to [0.3, 0.9]) instead of one tau (beyond the papers; off);
    dispute: a pseudo box that a teacher detection of another class contests (IoU >= 0.5, scoring at least dispute x
    its score) is ignored, not taught (beyond the papers; off);
    paper: the papers' rule (:data:`PAPER_SETTINGS`: no ignored band, no adaptive thresholds, ACRST's Eq. 7 alone)."""

    tau: float = 0.7
    nms: float | None = detectors_own()
    max_dets: int = 100
    lambda_unsup: float = 4.0
    unsup_regression: bool = False
    strong_view: str = "strong"
    geometric: bool = False
    ignore_below: float | None = None
    adaptive: bool = False
    adaptive_quantile: float = 0.5
    dispute: float | None = None
    paper: bool = False

    def __post_init__(self) -> None:
        if self.paper:  # the papers' pseudo-label rule: every option beyond them off
            for k, v in PAPER_SETTINGS.items():
                if hasattr(self, k):
                    setattr(self, k, v)


#: what ``method.paper=true`` sets on a self-training method (Mean Teacher, STAC, ACRST, mixed) where it has
#: the option: the papers' rule, every detection below tau taught as background, and ACRST's Eq. 7 alone
#: (an instance under a paste keeps its label until it is hidden)
PAPER_SETTINGS = {"ignore_below": None, "adaptive": False, "occlusion_ignore": None, "dispute": None}


@dataclass(frozen=True)
class StepRecord:
    """What one self-training step did, per unlabelled image.

    Attributes:
        labels: the pseudo-labels (frame of the view the teacher saw).
        unsup_targets: what the student was taught on its strong views (strong-view frame).
    """

    labels: PseudoLabels
    unsup_targets: list[Target]


class SelfTraining(Method):
    """The template (see the module docstring). Subclasses implement :meth:`pseudo_labels` and
    :meth:`teacher_ready`, and name their labelled views in :meth:`sup_view_names`.

    Args:
        detector: the student.
        options: a :class:`SelfTrainingOptions` (or a subclass).
        rebalancer: ACRST's parts, or None.
    """

    def __init__(self, detector: DetectorAdapter, options: SelfTrainingOptions, *, rebalancer=None) -> None:
        super().__init__(detector)
        self.options = o = options
        if o.ignore_below is not None and not 0.0 <= o.ignore_below <= o.tau:
            raise MinedetError(f"method.ignore_below must be in [0, tau={o.tau}], got {o.ignore_below} "
                               "(lower it, set it to null, or method.paper=true for the papers' rule)")
        check_share("dispute", o.dispute)
        try:
            strong = view_transform(o.strong_view)
        except ValueError as e:
            raise MinedetError(f"method.strong_view: {e}") from None
        self.rb = rebalancer
        self.strong = Compose([RandomScaleCrop(), *strong.transforms]) if o.geometric else strong
        ss = bool(self.rb is not None and self.rb.o.selective_supervision)
        # Eq. 10: with selective supervision only pasted crops regress on unlabelled images
        self.pasted_regress = ss or o.unsup_regression
        stages = (self.rb.stage_two,) if self.rb is not None else ()
        thresholds = ClassThresholds(detector.num_classes, o.tau, o.adaptive_quantile) if o.adaptive else None
        self.rule = PseudoRule(o.tau, o.nms, regress=o.unsup_regression and not ss, ignore_below=o.ignore_below,
                               stages=stages, thresholds=thresholds, dispute=o.dispute)
        self.quality = QualityCounts()
        self.last_step: StepRecord | None = None
        self.datasets: dict = {}
        self._out_dir: Path | None = None

    # ------------------------------------------------------------------ wiring
    def sup_view_names(self) -> list[str]:
        return ["strong"]

    def streams(self) -> dict[str, dict[str, Compose]]:
        """Labelled views :meth:`sup_view_names`; unlabelled: the teacher's views and the student's
        strong view. With ACRST's FBR the paste step leads the strong views it applies to."""
        pasted = self.rb.with_paste(self.strong) if self.rb is not None else self.strong
        paste_lab = self.rb is not None and self.rb.o.paste_on == "both"
        lab = {"weak": Compose([]), "strong": pasted if paste_lab else self.strong}
        unl = {name: Compose([]) for name in self.teacher_views()}
        return {"labelled": {k: lab[k] for k in self.sup_view_names()}, "unlabelled": {**unl, "strong": pasted}}

    def teacher_views(self) -> tuple[str, ...]:
        """The unlabelled views the teacher needs at step time (besides the student's strong view)."""
        return ()

    def bind(self, datasets: dict, out_dir: str | Path | None = None) -> None:
        self.datasets = datasets
        self._out_dir = None if out_dir is None else Path(out_dir)
        if self.rb is not None:
            self.rb.bind(datasets.get("labelled"), datasets.get("unlabelled"), self._out_dir, self.metrics)

    def prestages(self) -> list:
        """ACRST's parts may need the SSMLL classifier trained first (:meth:`Rebalancer.prestages`)."""
        return self.rb.prestages() if self.rb is not None else []

    # ------------------------------------------------------------------ named steps
    def teacher_ready(self) -> bool:
        raise NotImplementedError  # abstract

    def pseudo_labels(self, batch: dict) -> tuple[PseudoLabels, list[BoxMap]]:
        """This step's pseudo-labels of the unlabelled images and the map of the frame they are in."""
        raise NotImplementedError  # abstract

    def sup_targets(self, views: list) -> list[Target]:
        """Targets of the labelled views (with ACRST, pasted *pseudo* crops regress only as configured)."""
        if self.rb is not None:
            return self.rb.sup_targets(views, self.pasted_regress)
        return self.targets(views)

    def pseudo_streams(self, batch: dict) -> list[str]:
        """The streams whose images the teacher labels this step, in batch order (``unlabelled``)."""
        return ["unlabelled"]

    def pseudo_views(self, batch: dict, view: str) -> list:
        """View ``view`` of every image the teacher labels, streams concatenated in :meth:`pseudo_streams` order."""
        return [v for s in self.pseudo_streams(batch) for v in batch[s].views[view]]

    def stream_loss(self, stream: str) -> tuple[str, float]:
        """Loss prefix and weight of a pseudo-labelled stream: ``unsup`` at ``lambda_unsup``."""
        return "unsup", self.options.lambda_unsup

    def unsup_targets(self, batch: dict, labels: PseudoLabels, maps: list[BoxMap]) -> list[Target]:
        """Pseudo-labels (confident and ignored) carried into each strong view; with ACRST, minus the
        boxes hidden by a paste, plus the pasted instances."""
        strong = self.pseudo_views(batch, "strong")
        carried = [carry(t, m, v.map).to(v.image.device) for t, m, v in zip(labels.targets(), maps, strong)]
        if self.rb is None:
            return carried
        return [self.rb.with_pastes(t, v, regress_pasted=self.pasted_regress) for t, v in zip(carried, strong)]

    def supervised_step(self, batch: dict) -> dict[str, Tensor]:
        views = self.sup_views(batch)
        out = self.detector.forward_heads(self.images(views))
        return prefixed(self.detector.loss(out, self.sup_targets(views)), "sup")

    def sup_views(self, batch: dict) -> list:
        lab = batch["labelled"].views
        return [v for name in self.sup_view_names() for v in lab[name]]

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: dict) -> dict[str, Tensor]:
        if not self.teacher_ready():
            self.last_step = None
            return self.supervised_step(batch)
        labels, maps = self.pseudo_labels(batch)
        self.observe(batch, labels, maps)
        targets_u = self.unsup_targets(batch, labels, maps)
        sup_views = self.sup_views(batch)
        n = len(sup_views)
        out = self.detector.forward_heads(self.images(sup_views) + self.images(self.pseudo_views(batch, "strong")))
        losses = prefixed(self.detector.loss(out.take(slice(0, n)), self.sup_targets(sup_views)), "sup") if n else {}
        j = 0
        for stream in self.pseudo_streams(batch):  # one loss per stream, each with its own weight
            k = len(batch[stream])
            prefix, weight = self.stream_loss(stream)
            losses.update(prefixed(self.detector.loss(out.take(slice(n + j, n + j + k)), targets_u[j:j + k]), prefix, weight))
            j += k
        self.last_step = StepRecord(labels, targets_u)
        return losses

    # ------------------------------------------------------------------ measurement
    def observe(self, batch: dict, labels: PseudoLabels, maps: list[BoxMap]) -> None:
        """After each step's labelling: quality against the hidden truth (``quality/*``); with ACRST,
        the pseudo bank and Table 10's variants."""
        pairs = [(s, int(i)) for s in self.pseudo_streams(batch) for i in batch[s].image_ids]
        streams, ids = [s for s, _ in pairs], [i for _, i in pairs]
        q = self.measure(ids, labels.confident, maps, streams)
        if q is not None:
            self.metrics.update(q.as_dict(prefix="quality/"))
        if labels.disputed is not None:
            self.metrics["pseudo/disputed_per_image"] = sum(len(t) for t in labels.disputed) / max(1, len(ids))
        if self.rb is not None:
            self.rb.observe(ids, labels, maps, self.datasets.get("unlabelled"), self.metrics, self.rule)

    def measure(self, image_ids: list[int], confident: list[Target], maps: list[BoxMap],
                streams: list[str] | None = None) -> QualityCounts | None:
        """Pseudo-labels per image, and their quality against the hidden truth of each image's stream
        (``unlabelled`` unless ``streams`` names them; only when every stream has one), added to the
        run's totals; returns this call's counts."""
        self.metrics["pseudo/boxes_per_image"] = sum(len(p) for p in confident) / max(1, len(confident))
        streams = streams or ["unlabelled"] * len(image_ids)
        sets = [self.datasets.get(s) for s in streams]
        if not sets or any(ds is None or getattr(ds, "hidden", None) is None for ds in sets):
            return None
        q = against_hidden(confident, [ds.hidden_target(i) for ds, i in zip(sets, image_ids)], maps)
        self.quality.merge(q)
        return q

    # ------------------------------------------------------------------ logs / state
    def log_metrics(self) -> dict[str, float]:
        m = super().log_metrics()
        if self.rb is not None:
            m.update(self.rb.log_metrics())
        return m

    def extra_state(self) -> dict[str, Any]:
        state = self.rb.state_dict() if self.rb is not None else {}
        if self.rule.thresholds is not None:
            state["thresholds"] = self.rule.thresholds.state_dict()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.rb is not None:
            self.rb.load_state_dict(state, self.metrics)
        if self.rule.thresholds is not None and "thresholds" in state:
            self.rule.thresholds.load_state_dict(state["thresholds"])
