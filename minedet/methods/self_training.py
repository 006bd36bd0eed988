"""The self-training template: the student forwards, a teacher source labels, one rule splits, each group learns.

Every method that learns from boxes nobody labelled is a configuration of :class:`SelfTraining` (the structure
follows MMDetection's ``SemiBaseDetector``: ``loss`` -> ``get_pseudo_instances`` -> ``loss_by_pseudo_instances``).
One step, for every method:

1. **Groups** (:class:`Group`): the student's images that share one loss (a stream, its views, the loss prefix and
   weight) and, for a pseudo-labelled group, the name of the labels it learns from.
2. **Student forward**: one batched forward over every group's images.
3. **Teacher source** (:class:`TeacherSource`): the pseudo-labels of the step, :class:`Mined` per producer and
   stream, each in the frame it was made in. An EMA teacher on the weak views (Mean Teacher, ACRST, mixed:
   :class:`~minedet.methods.mean_teacher.EmaTeacher`), a table filled once before training (STAC:
   :class:`~minedet.methods.stac.FixedTable`), or the other branch of the same forward (Co-mining:
   :class:`~minedet.methods.co_mining.Branches`). Each source passes its detections through the same two pure
   steps: the **known filter** (:class:`KnownFilter`: a detection a labelled or rejected box accounts for is no new
   object) and the **pseudo-label rule** (:class:`~minedet.pseudo.semantics.PseudoRule`: confident / ignored /
   background, the parts' stages included).
4. **Targets**: each group's labelled boxes ∪ the labels it learns from, carried into its view
   (:func:`~minedet.pseudo.semantics.carry`, exact under flip / scale / crop); then each part's targets step.
5. **Losses**: ``{prefix/term: weight x loss}`` per group.

:meth:`SelfTraining.training_step` returns the losses and a :class:`StepRecord` and changes nothing else. What
reads a step happens after it, in the order the trainer calls :meth:`SelfTraining.after_step`: the source (the
EMA update), the parts (ACRST's CropBank and AFFR refresh), then the hooks (:class:`Hook`: pseudo-label counts,
quality against hidden truth, Co-mining's drift guard and renders), like MMEngine's and detectron2's hooks.

**Parts** (:class:`Part`) are what a configuration adds to every stage without the template knowing them: ACRST's
parts (:class:`~minedet.methods.acrst.AcrstPart`) declare the paste step of the strong views, a rule stage (the
multi-label veto), the occlusion and selective-supervision targets, the bank refresh after each step and their
state. A configuration without parts holds none: the template never asks whether one is there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from minedet.data.transforms import BoxMap, Compose, RandomScaleCrop, view_transform
from minedet.errors import MinedetError
from minedet.methods.base import Method, check_share, detectors_own, prefixed
from minedet.models.detector import DetectorAdapter
from minedet.pseudo import filters as pf
from minedet.pseudo.quality import QualityCounts
from minedet.pseudo.semantics import ClassThresholds, PseudoLabels, PseudoRule, against_hidden, carry, known_background
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


# ---------------------------------------------------------------------------------------------- what a step is
@dataclass(frozen=True)
class Group:
    """Student images that share one loss.

    Attributes:
        stream: the batch stream (``labelled``, ``unlabelled``, ``sparse``).
        views: the stream's views the student sees, one loss over all of them.
        prefix: the loss prefix (``sup``, ``unsup``, ``o``, ...). weight: the loss weight.
        source: the name of the pseudo-labels this group learns from (:attr:`Mined.name`: ``teacher``, or the
            Co-mining branch that mined them); None: labelled boxes only.
    """

    stream: str
    views: tuple[str, ...]
    prefix: str
    weight: float = 1.0
    source: str | None = None


@dataclass(frozen=True)
class Mined:
    """One producer's pseudo-labels of one stream in a step, per image, in the frame they were made in.

    Attributes:
        name: who made them (``teacher``; a Co-mining branch: ``o`` / ``a``).
        stream: the stream of the images. image_ids: their ids.
        maps: each image's view map (the frame of every box below).
        known: each image's labelled boxes in that frame (empty on unlabelled images).
        raw: the detections before the known filter (score >= the rule's floor).
        labels: after the known filter and the rule.
        fresh: made this step (False: read from a table filled before training; counted once, when it was filled).
        active: taught this step (False: Co-mining's warm-up, where ``labels`` are empty).
    """

    name: str
    stream: str
    image_ids: tuple[int, ...]
    maps: list[BoxMap]
    known: list[Target]
    raw: list[Target]
    labels: PseudoLabels
    fresh: bool = True
    active: bool = True


@dataclass(frozen=True)
class StepRecord:
    """What one training step did.

    Attributes:
        mined: every :class:`Mined` of the step. taught: per group prefix, the student's targets per image (its
            view's frame). seconds: the time the source took to make the step's pseudo-labels.
    """

    mined: tuple[Mined, ...] = ()
    taught: dict[str, list[Target]] = field(default_factory=dict)
    seconds: float = 0.0

    def of(self, name: str) -> list[Mined]:
        return [m for m in self.mined if m.name == name]

    def labels(self, name: str = "teacher") -> PseudoLabels:
        """The pseudo-labels ``name`` made this step, every stream's images in the step's order."""
        parts = [m.labels for m in self.of(name)]
        cat = lambda key: None if any(getattr(p, key) is None for p in parts) else [t for p in parts for t in getattr(p, key)]
        return PseudoLabels(cat("detections") or [], cat("confident") or [], cat("ignored"), cat("disputed"))


@dataclass(frozen=True)
class KnownFilter:
    """A detection that a labelled box accounts for is no new object (:func:`~minedet.pseudo.filters.drop_known`):
    IoU > ``iou`` with a labelled box (``same_class``: of its own class only), holding ``contain`` of a labelled box,
    with ``part`` of its own area on labelled boxes; and a detection on a box a reviewer rejected (IoU >
    ``rejected_iou``) stays background. ``iou=None``: labelled boxes filter nothing (unlabelled images)."""

    iou: float | None = None
    same_class: bool = True
    contain: float | None = None
    part: float | None = None
    rejected_iou: float | None = None

    def __call__(self, t: Target, known: Target, rejected: Target | None) -> Target:
        if self.iou is None:
            known = Target.empty(t.image_id)
        return pf.drop_known(t, known, 1.0 if self.iou is None else self.iou, same_class=self.same_class,
                             contain=self.contain, part=self.part, rejected=rejected, rejected_iou=self.rejected_iou)


@dataclass(frozen=True)
class StepInput:
    """What a source sees: the batch, the groups, the student's head outputs of each (stream, view), the rule, the
    known filter and the datasets (for rejected boxes)."""

    batch: dict
    groups: tuple[Group, ...]
    heads: dict[tuple[str, str], Any]
    rule: PseudoRule
    keep: KnownFilter
    datasets: dict
    floor: float
    learn: bool = True  # False (a render): the source changes no state (adaptive thresholds)

    def learners(self, source: str) -> list[Group]:
        return [g for g in self.groups if g.source == source]

    def rejected(self, stream: str, views: list) -> list[Target]:
        return known_background(self.datasets.get(stream), self.batch[stream].image_ids, [v.map for v in views])


class TeacherSource(torch.nn.Module):
    """Where a step's pseudo-labels come from (an ``nn.Module``: an EMA teacher's weights are state).

    ``ready()``: whether it labels this step (False: the step is supervised, e.g. Mean Teacher's burn-in).
    ``mine(step_input)``: the step's :class:`Mined`. ``after_step(step, student)``: after each optimiser step."""

    timing_key = "time/pseudo_labels"

    def ready(self, steps_done: int) -> bool:
        return True

    def mine(self, inp: StepInput) -> list[Mined]:
        raise NotImplementedError  # abstract

    def after_step(self, step: int, student: DetectorAdapter) -> None:
        """Nothing by default."""

    def eval_models(self) -> dict[str, DetectorAdapter]:
        """Detectors it holds that are worth evaluating (an EMA teacher), by role."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Nothing by default."""


class Part:
    """Something a configuration adds to every stage of the template (ACRST's parts). Every default does nothing."""

    #: the teacher reports detections down to this score at least (ACRST: Pseudo Recall's threshold)
    floor = 1.0

    def bind(self, datasets: dict, out_dir: Path | None) -> None:
        """Once before training."""

    def prestages(self) -> list:
        return []

    def student_view(self, stream: str, view: Compose) -> Compose:
        """The student's strong view of ``stream`` (ACRST: led by the paste step)."""
        return view

    def stages(self) -> tuple:
        """Extra stages of the pseudo-label rule."""
        return ()

    def targets(self, group: Group, targets: Target, view) -> Target:
        """The student's targets of one image of ``group`` (its view ``view``), changed as the part teaches."""
        return targets

    def after_step(self, step: int, records: Sequence[StepRecord], metrics: dict) -> None:
        """After each optimiser step, with the records of its forwards."""

    def log_metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing by default."""


class Hook:
    """Reads the records of each optimiser step (and writes metrics); its state travels in the checkpoint."""

    key = ""  # where its state goes in the checkpoint (empty: none)

    def after_step(self, step: int, records: Sequence[StepRecord], metrics: dict) -> None:
        raise NotImplementedError  # abstract

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing by default."""


def tag(name: str) -> str:
    """The metric infix of a producer: none for the teacher (``quality/precision``), ``o_`` for a branch."""
    return "" if name == "teacher" else f"{name}_"


class Counts(Hook):
    """Pseudo-labels per image and per class (``pseudo/[o_]boxes_per_image``, ``pseudo/[o_]class/<name>``),
    disputed boxes per image and the source's time (the step record's seconds)."""

    def __init__(self, timing_key: str) -> None:
        self.timing_key = timing_key
        self.names: list[str] | None = None

    def after_step(self, step: int, records: Sequence[StepRecord], metrics: dict) -> None:
        for rec in records:
            by_name: dict[str, list[Target]] = {}
            for m in rec.mined:
                if m.fresh:
                    by_name.setdefault(m.name, []).extend(m.labels.confident)
            for name, confident in by_name.items():
                metrics[f"pseudo/{tag(name)}boxes_per_image"] = sum(len(t) for t in confident) / max(1, len(confident))
                labels = torch.cat([t.labels.cpu() for t in confident]) if confident else torch.zeros(0, dtype=torch.long)
                for c, count in zip(*torch.unique(labels, return_counts=True)):
                    c = int(c)
                    label = self.names[c] if self.names and c < len(self.names) else c
                    metrics[f"pseudo/{tag(name)}class/{label}"] = float(count)
            disputed = [t for m in rec.mined if m.fresh and m.active and m.labels.disputed is not None
                        for t in m.labels.disputed]
            if disputed:
                metrics["pseudo/disputed_per_image"] = sum(len(t) for t in disputed) / len(disputed)
            if rec.mined and any(m.fresh for m in rec.mined):
                metrics[self.timing_key] = rec.seconds


class Quality(Hook):
    """Pseudo-label quality against the hidden truth (when every image's stream has one): this step's counts
    (``quality/[o_]precision`` ...) and the run's totals (``quality/[o_]total_...``), kept across a resume."""

    key = "quality"

    def __init__(self, datasets: dict) -> None:
        self.datasets = datasets
        self.totals: dict[str, QualityCounts] = {}

    def counts(self, name: str) -> QualityCounts:
        """The run's totals of producer ``name`` so far."""
        return self.totals.setdefault(name, QualityCounts())

    def after_step(self, step: int, records: Sequence[StepRecord], metrics: dict) -> None:
        for rec in records:
            step_counts: dict[str, QualityCounts] = {}
            for m in rec.mined:
                ds = self.datasets.get(m.stream)
                if not m.fresh or ds is None or getattr(ds, "hidden", None) is None:
                    continue
                hidden = [ds.hidden_target(int(i)) for i in m.image_ids]
                step_counts.setdefault(m.name, QualityCounts()).merge(
                    against_hidden(m.labels.confident, hidden, m.maps, m.known))
            for name, q in step_counts.items():
                self.counts(name).merge(q)
                metrics.update(q.as_dict(prefix=f"quality/{tag(name)}"))
                metrics.update(self.counts(name).as_dict(prefix=f"quality/{tag(name)}total_"))

    def state_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {k: asdict(q) for k, q in self.totals.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.totals = {k: QualityCounts(**q) for k, q in state.items()}


# ---------------------------------------------------------------------------------------------- the template
class SelfTraining(Method):
    """The template (see the module docstring). A configuration gives its options, its source and its parts, and
    names its groups (:meth:`groups`); everything else is shared.

    Args:
        detector: the student.
        options: a :class:`SelfTrainingOptions` (or a subclass).
        source: the :class:`TeacherSource`.
        parts: :class:`Part` s (ACRST's), none by default.
        keep: the :class:`KnownFilter` (default: only reviewer-rejected boxes, at IoU 0.5).
        stages: the configuration's own rule stages (run before the parts' stages).
        regress: whether pseudo-labels supervise box regression (default: ``options.unsup_regression``).
        ignore_below, nms: the rule's, when the configuration resolves them otherwise than its options say.
    """

    def __init__(self, detector: DetectorAdapter, options, source: TeacherSource, *, parts: Sequence[Part] = (),
                 keep: KnownFilter | None = None, stages: tuple = (), regress: bool | None = None,
                 ignore_below: float | None | str = "options", nms: float | None | str = "options") -> None:
        super().__init__(detector)
        self.options = o = options
        ignore_below = getattr(o, "ignore_below", None) if ignore_below == "options" else ignore_below
        nms = o.nms if nms == "options" else nms
        if ignore_below is not None and not 0.0 <= ignore_below <= o.tau:
            raise MinedetError(f"method.ignore_below must be in [0, tau={o.tau}], got {ignore_below} "
                               "(lower it, set it to null, or method.paper=true for the papers' rule)")
        check_share("dispute", o.dispute)
        if hasattr(o, "strong_view"):
            self.strong_view()  # a wrong view name fails now, not when the data is built
        self.source = source
        self.parts = tuple(parts)
        self.keep = keep or KnownFilter(rejected_iou=0.5)
        thresholds = ClassThresholds(detector.num_classes, o.tau, o.adaptive_quantile) if o.adaptive else None
        self.rule = PseudoRule(o.tau, nms, regress=o.unsup_regression if regress is None else regress,
                               ignore_below=ignore_below, stages=stages + tuple(s for p in self.parts for s in p.stages()),
                               thresholds=thresholds, dispute=o.dispute)
        self.out_dir: Path | None = None
        self.counts = Counts(source.timing_key)
        self.quality = Quality(self.datasets)
        self.steps_done = 0
        self.records: list[StepRecord] = []  # this optimiser step's records (one per forward), read in after_step
        self.last_step: StepRecord | None = None

    # ------------------------------------------------------------------ wiring
    def strong_view(self) -> Compose:
        """The student's strong view (``strong_view``, led by a random scale+crop with ``geometric``)."""
        try:
            strong = view_transform(self.options.strong_view)
        except ValueError as e:
            raise MinedetError(f"method.strong_view: {e}") from None
        return Compose([RandomScaleCrop(), *strong.transforms]) if self.options.geometric else strong

    def student_view(self, stream: str) -> Compose:
        """The strong view of ``stream`` as every part declares it."""
        view = self.strong_view()
        for p in self.parts:
            view = p.student_view(stream, view)
        return view

    def groups(self, batch: dict) -> tuple[Group, ...]:
        """The step's groups (this step: the source may not be ready)."""
        raise NotImplementedError  # abstract

    def hooks(self) -> list[Hook]:
        """What reads each step's records: counts and quality; a configuration adds its own."""
        return [self.counts, self.quality]

    def bind(self, datasets: dict, out_dir: str | Path | None = None) -> None:
        super().bind(datasets, out_dir)
        self.out_dir = None if out_dir is None else Path(out_dir)
        lab = datasets.get("labelled") or datasets.get("sparse")
        names = getattr(getattr(lab, "data", None), "class_names", None)
        self.counts.names = list(names) if names else None
        for p in self.parts:
            p.bind(datasets, self.out_dir)

    def prestages(self) -> list:
        return [st for p in self.parts for st in p.prestages()]

    @property
    def floor(self) -> float:
        """The score down to which the source reports detections (the rule's floor, or a part's below it)."""
        return min([self.rule.floor] + [p.floor for p in self.parts])

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: dict) -> tuple[dict[str, Tensor], StepRecord]:
        groups = self.groups(batch)
        views = [[v for name in g.views for v in batch[g.stream].views[name]] for g in groups]
        out = self.detector.forward_heads([v.image for vs in views for v in vs])
        heads, spans, start = {}, [], 0
        for g in groups:
            g_start = start
            for name in g.views:
                n = len(batch[g.stream].views[name])
                heads[(g.stream, name)] = out.take(slice(start, start + n))
                start += n
            spans.append(slice(g_start, start))
        mined: list[Mined] = []
        t0 = time.perf_counter()
        if any(g.source is not None for g in groups):
            mined = self.source.mine(StepInput(batch, groups, heads, self.rule, self.keep, self.datasets, self.floor))
        seconds = time.perf_counter() - t0
        losses: dict[str, Tensor] = {}
        taught: dict[str, list[Target]] = {}
        for g, vs, span in zip(groups, views, spans):
            targets = self.group_targets(g, vs, mined)
            if vs:
                ids = [i for _ in g.views for i in batch[g.stream].image_ids]
                background = self.known_background(g.stream, ids, vs)
                losses.update(prefixed(self.detector.loss(out.take(span), targets, background), g.prefix, g.weight))
            taught[g.prefix] = targets
        return losses, StepRecord(tuple(mined), taught, seconds)

    def group_targets(self, g: Group, views: list, mined: list[Mined]) -> list[Target]:
        """Each image's labelled boxes ∪ the labels ``g`` learns from (carried into its view), then the parts'.
        A pseudo-labelled group has one view, whose images are the producer's, in its order."""
        targets = [v.target for v in views]
        if g.source is not None:
            src = [m for m in mined if m.name == g.source and m.stream == g.stream]
            labels = [t for m in src for t in m.labels.targets()]
            maps = [mp for m in src for mp in m.maps]
            carried = [carry(t, mp, v.map).to(v.image.device) for t, mp, v in zip(labels, maps, views)]
            targets = [Target.cat([v.target, c]) if len(v.target) else c for v, c in zip(views, carried)]
        for p in self.parts:
            targets = [p.targets(g, t, v) for t, v in zip(targets, views)]
        return targets

    # ------------------------------------------------------------------ after the step
    def forward(self, batch: dict) -> dict[str, Tensor]:
        losses, record = self.training_step(batch)
        self.records.append(record)
        self.last_step = record
        return losses

    def after_step(self, step: int) -> None:
        """The source (EMA), the parts (bank refresh), then the hooks, each reading this step's records."""
        self.steps_done = step
        records, self.records = self.records, []
        self.source.after_step(step, self.detector)
        for p in self.parts:
            p.after_step(step, records, self.metrics)
        for h in self.hooks():
            h.after_step(step, records, self.metrics)

    def observe(self, record: StepRecord, step: int = 0) -> None:
        """Hand the parts and hooks a record made outside a training step (STAC's one labelling pass)."""
        for p in self.parts:
            p.after_step(step, [record], self.metrics)
        for h in self.hooks():
            h.after_step(step, [record], self.metrics)

    def eval_models(self) -> dict[str, DetectorAdapter]:
        return {**self.source.eval_models(), "student": self.detector}

    # ------------------------------------------------------------------ logs / state
    def log_metrics(self) -> dict[str, float]:
        m = super().log_metrics()
        if self.rule.thresholds is not None:
            m.update({f"pseudo/tau_{k}": v for k, v in enumerate(self.rule.thresholds.values().tolist())})
        for p in self.parts:
            m.update(p.log_metrics())
        return m

    def extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps_done": self.steps_done, **self.source.extra_state()}
        for p in self.parts:
            state.update(p.state_dict())
        for h in self.hooks():
            if h.key and h.state_dict():
                state[h.key] = h.state_dict()
        if self.rule.thresholds is not None:
            state["thresholds"] = self.rule.thresholds.state_dict()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state.get("steps_done", 0))
        self.source.load_extra_state(state)
        for p in self.parts:
            p.load_state_dict(state)
        for h in self.hooks():
            if h.key and h.key in state:
                h.load_state_dict(state[h.key])
        if self.rule.thresholds is not None and "thresholds" in state:
            self.rule.thresholds.load_state_dict(state["thresholds"])


def split_labels(inp: StepInput, dets: list[Target], known: list[Target], rejected: list[Target],
                 ids: list[int]) -> tuple[list[Target], PseudoLabels]:
    """The known filter then the rule over one producer's detections: (what the filter kept, the split)."""
    kept = [inp.keep(d.detach(), k, r) for d, k, r in zip(dets, known, rejected)]
    return kept, inp.rule(kept, ids)
