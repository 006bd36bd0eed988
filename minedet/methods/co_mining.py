"""Co-mining (Wang et al., AAAI 2021): a weight-sharing Siamese detector whose branches mine
pseudo-labels for each other on sparsely annotated data.

One batched forward computes both branches (original view ``o`` and augmented view ``a``).
Co-generation reads that same forward under ``no_grad``: per-level top-k candidates, score > tau,
class-wise NMS theta1, at most ``max_dets`` per image, then drop any pseudo box whose IoU with a
same-class ground-truth box is > theta2. Complementary supervision (Eq. 1-2):
``C_o = P^g_a ∪ Y``, ``C_a = P^g_o ∪ Y``, ``L = L_o + L_a`` (each normalised by its own number of
foreground anchors). Inference uses one branch: the exported model is the plain detector.

Options reproduce the paper's baselines and ablations (Tables 1, 2, 4):
``siamese=False, cogeneration=False`` is 'original' (use ``supervised`` for speed);
``siamese=True, cogeneration=False`` is 'joint'; ``siamese=False, cogeneration=True`` is
co-generation on a single branch (each image supervised by its own mined boxes);
``view`` = color (default) | blur | none.

A configuration of the self-training template (:mod:`minedet.methods.self_training`), Algorithm 1 in one place:
the groups are the two branches (:meth:`CoMining.groups`: branch ``o`` learns from the boxes branch ``a`` mined and
the other way round), the source is the same forward's other branch (:class:`Branches`: decode, the known filter
theta2, the rule with tau and the cap), the targets ``C = P^g ∪ Y`` and the losses are the template's. What reads
a step — the drift guard (:class:`Drift`) and Fig. 3's renders (:class:`Render`) — are hooks.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch

from minedet.data.transforms import Compose, view_transform
from minedet.errors import MinedetError
from minedet.methods.base import check_share, detectors_own
from minedet.methods.self_training import (Group, Hook, KnownFilter, Mined, SelfTraining, StepInput, StepRecord,
                                           TeacherSource)
from minedet.models.detector import DetectorAdapter
from minedet.pseudo import filters as pf
from minedet.pseudo.semantics import PseudoRule, carry
from minedet.structures import Target


@dataclass
class CoMiningOptions:
    """tau: score threshold (0.6; 0.5 on the extreme split), on the score the detector names for mining
    (FCOS: the class probability before centerness, as in the release); nms: theta1 (None: the
    detector's ``mining_nms``, the release's value);
    iou_gt: theta2 (0.4); topk: candidates per FPN level (1000; Faster R-CNN: the best RPN proposals
    the RoI head decodes, at most its test-time count); max_dets: pseudo boxes per image (100);
    view: the second branch's augmentation; siamese / cogeneration: the Table 2 switches;
    pseudo_regress: pseudo boxes also supervise box regression (Eq. 2: yes; None, the default: the detector's
    ``mining_regress``, on for RetinaNet and Faster R-CNN, off for FCOS, where it measured better; ``paper``: on);
    gt_match: which ground-truth boxes a pseudo box is dropped for overlapping (IoU > theta2): ``same``
    class (the release) or ``any`` class (not in the paper: a second-class detection on a labelled
    object is then not taught as a new object; ``minedet mine``'s default);
    render_every / render_images: Fig. 3-style renders of each branch's mined boxes.

    Beyond the paper (on by default since they measured better on digits `hard`, 3 seeds; ``paper:
    true`` turns them off, the release's behaviour): ignore_below (``auto``: the detector's
    ``mining_ignore_below``, 0.3, or no band on BRL's loss, which has its own rule for them; a number sets it,
    null turns it off): detections scoring in [ignore_below, tau] that miss the labels are ignored (weight 0),
    not taught as background;
    contain (0.8): drop a mined box holding at least this share of a labelled box's area (any class);
    part (``auto``: the detector's ``mining_part``, 0.5 on Faster R-CNN, off on RetinaNet and FCOS; a number sets it,
    null turns it off): drop a mined box with at least this share of its own area on labelled boxes (a shifted or
    partial box on a labelled object);
    cap_ratio (1.0): at most ceil(cap_ratio x the labelled boxes per image of the training set) mined
    boxes per image, the best first (a guard against a mining loop feeding on itself); mine_after (100):
    no mining before this many steps; adaptive (off): per-class thresholds from the scores the model gives the labelled
    boxes of the same forward (their ``adaptive_quantile``, EMA, clamped to [0.3, 0.9]) instead of one tau;
    dispute (off): a mined box is ignored (weight 0) rather than taught when a detection of another class, in either
    view, overlaps it (IoU >= 0.5) and scores at least ``dispute`` x its score (the detector found an object and is
    not sure which it is: on digits `extreme` most false mined boxes were a found digit named wrongly).
    rejected_iou: a detection overlapping a box a reviewer rejected (the data's ``"rejected"`` list, any
    class) by IoU > rejected_iou is neither mined nor ignored: that region stays background (None: off);
    min_val_precision (off; 0.7 where ``minedet train co_mining --train ...`` trains on the user's own data, which
    always has a val set): with a validation set, every :data:`DRIFT_WINDOW` steps from ``mine_after`` on the
    student's detections scoring above tau on :data:`CHECK_IMAGES` val images (spread evenly over the val set) are matched to their labels
    (same class, IoU >= 0.5); while the share matched is below this, mining pauses (the branches train on the labels
    alone, as in ``joint``) and resumes when a later check reaches it (:class:`ValCheck`). The val labels are taken as
    complete: a detection they miss counts as wrong."""

    tau: float = 0.6
    nms: float | None = detectors_own()
    iou_gt: float = 0.4
    topk: int = 1000
    max_dets: int = 100
    view: str = "color"
    siamese: bool = True
    cogeneration: bool = True
    pseudo_regress: bool | None = detectors_own()
    gt_match: str = "same"
    render_every: int = 0
    render_images: int = 4
    ignore_below: float | str | None = detectors_own("auto")
    contain: float | None = 0.8
    part: float | str | None = detectors_own("auto")
    cap_ratio: float | None = 1.0
    mine_after: int = 100
    adaptive: bool = False
    adaptive_quantile: float = 0.5
    rejected_iou: float | None = 0.5
    dispute: float | None = None
    min_val_precision: float | None = None
    paper: bool = False

    def __post_init__(self) -> None:
        if self.paper:  # the release's behaviour: every option beyond the paper off
            for k, v in PAPER_SETTINGS.items():
                setattr(self, k, v)


#: what ``method.paper=true`` sets: the Co-mining release's behaviour (the guards beyond the paper off)
PAPER_SETTINGS = {"pseudo_regress": True, "ignore_below": None, "contain": None, "part": None, "cap_ratio": None,
                  "mine_after": 0, "adaptive": False, "dispute": None, "min_val_precision": None}


#: the drift warning looks at the mined boxes of this many steps at a time
DRIFT_WINDOW = 50
#: the precision proxy: of the confident detections (score > tau, before the cap) of a window, the share the
#: labelled boxes account for. A detector that finds what it was taught puts a good share of its confident
#: detections on the labelled objects (a quarter on digits `extreme`, where one object in four is labelled);
#: below this share, it proposes about ten new objects for every labelled one it finds
PROXY_FLOOR = 0.1
#: ... over at least this many confident detections in the window (fewer is noise)
PROXY_MIN = 20
#: the val check (``min_val_precision``) scores the student on at most this many val images (spread over the set)
CHECK_IMAGES = 64
#: ... and matches a detection to a val box of its class at this IoU
CHECK_IOU = 0.5
#: below this many passes over the training images, a plain run on twice the batch (about a two-view step's
#: compute) trained the better detector in every measured table (digits, 2.4 to 3.6 passes: RetinaNet, FCOS and
#: Faster R-CNN); at about 14 passes and beyond the second view paid (docs/findings.md, Sparse labels)
FEW_PASSES = 4.0


class Branches(TeacherSource):
    """Co-generation: each branch's detections from the decoded head outputs of the same forward (``no_grad``;
    per-level top-k candidates, class-wise NMS theta1, down to the rule's floor), minus what its labelled boxes (and
    boxes a reviewer rejected) account for, split by the rule; with ``method.dispute`` the other branch's candidates
    (carried into this branch's frame) may contest a box. Before ``mine_after`` steps nothing is kept (a warm-up)."""

    timing_key = "time/cogeneration"

    def __init__(self, detector: DetectorAdapter, nms: float | None, topk: int, max_dets: int, mine_after: int) -> None:
        super().__init__()
        self.detectors = (detector,)  # a tuple: the student is not this module's state
        self.nms, self.topk, self.max_dets, self.mine_after = nms, topk, max_dets, mine_after
        self.steps_done = 0
        self.paused = False  # set by the val check (:class:`ValCheck`)

    @property
    def mining(self) -> bool:
        """Past the warm-up (``mine_after`` steps) and not paused by the val check: mined and ignored boxes reach
        the loss."""
        return self.steps_done >= self.mine_after and not self.paused

    @torch.no_grad()
    def mine(self, inp: StepInput) -> list[Mined]:
        detector = self.detectors[0]
        names = sorted({g.source for g in inp.groups if g.source is not None}, key=["o", "a"].index)
        views = {n: inp.batch["labelled"].views[n] for n in names}
        ids = [int(i) for i in inp.batch["labelled"].image_ids]
        raw, kept, known = {}, {}, {}
        for n in names:
            raw[n] = [d.detach() for d in detector.decode(
                inp.heads[("labelled", n)], score_thresh=inp.floor, nms_thresh=self.nms, topk_candidates=self.topk,
                detections_per_img=self.max_dets, score_rule=detector.mining_score_rule)]
            known[n] = [v.target for v in views[n]]
            if inp.rule.thresholds is not None and inp.learn:  # what the model makes of the labelled boxes now
                inp.rule.thresholds.observe(raw[n], known[n])
            kept[n] = [inp.keep(d, k, r) for d, k, r in zip(raw[n], known[n], inp.rejected("labelled", views[n]))]
            if not self.mining:
                kept[n] = [d.select(torch.zeros(len(d), dtype=torch.bool, device=d.boxes.device)) for d in kept[n]]
        mined = []
        for n in names:
            others = [m for m in names if m != n]
            contest = None if inp.rule.dispute is None or not others else [
                Target.cat([carry(kept[m][i], views[m][i].map, views[n][i].map) for m in others]) for i in range(len(ids))]
            mined.append(Mined(n, "labelled", tuple(ids), [v.map for v in views[n]], known[n], raw[n],
                               inp.rule(kept[n], ids, contest), active=self.mining))
        return mined

    def after_step(self, step: int, student: DetectorAdapter) -> None:
        self.steps_done = step

    def extra_state(self) -> dict[str, Any]:
        return {"mining_paused": self.paused}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state.get("steps_done", 0))
        self.paused = bool(state.get("mining_paused", False))


def check_indices(n_val: int) -> list[int]:
    """The val images :class:`ValCheck` predicts: :data:`CHECK_IMAGES` of them spread evenly over the set (all of a
    smaller one)."""
    n = min(n_val, CHECK_IMAGES)
    return [i * n_val // n for i in range(n)]


class ValCheck(Hook):
    """``method.min_val_precision`` (beyond the paper): pauses the mining while the student's confident detections
    on the val images are mostly wrong, and resumes it when they are right again, without hidden truth.

    Every :data:`DRIFT_WINDOW` steps from ``mine_after`` on, the student (eval mode) predicts :data:`CHECK_IMAGES` val
    images spread evenly over the val set (all of a smaller one; files often list one scene after another); of its detections scoring above tau, the share that match a val box of their class
    (IoU >= :data:`CHECK_IOU`, greedy by score) is the precision a mined box would have if the training images were
    like the val images. Below ``min_val_precision`` the mining pauses (the branches train on the labels alone); a
    later check at or above it resumes it. With no detection above tau the state stays. Logs ``pseudo/val_precision``,
    ``pseudo/paused`` and the check's seconds, ``time/val_check``; the first pause is one warning line, a resume one note. Every process checks the same
    images with the same weights, so the ranks agree."""

    def __init__(self, method: "CoMining", min_precision: float) -> None:
        self.method, self.min_precision = (method,), min_precision
        self.val = None
        self.warned = False

    def after_step(self, step: int, records: Sequence[StepRecord], metrics: dict) -> None:
        m = self.method[0]
        if self.val is None or step % DRIFT_WINDOW or step < m.source.mine_after:
            return
        start = time.perf_counter()
        precision = self.precision(m)
        metrics["time/val_check"] = time.perf_counter() - start  # its share of the wall time, on any hardware
        if precision is None:
            return
        metrics["pseudo/val_precision"] = precision
        was, m.source.paused = m.source.paused, precision < self.min_precision
        metrics["pseudo/paused"] = float(m.source.paused)
        if m.source.paused == was:
            return
        from minedet.engine.dist import is_main_process

        if not is_main_process():
            return
        if m.source.paused and not self.warned:
            self.warned = True
            print(f"minedet: warning: co-mining paused its mining at step {step}: only {100 * precision:.0f} % of the "
                  f"student's detections above tau={m.options.tau:g} on {min(len(self.val), CHECK_IMAGES)} val images "
                  f"match a val box (method.min_val_precision={self.min_precision:g}), so most boxes it would mine are "
                  "likely wrong. It trains on the labels until a check every "
                  f"{DRIFT_WINDOW} steps reaches that precision; watch pseudo/val_precision (lower "
                  "method.min_val_precision, or null, to mine anyway)", file=sys.stderr)
        elif not m.source.paused:
            print(f"minedet: note: co-mining resumed its mining at step {step} (val precision {100 * precision:.0f} %)",
                  file=sys.stderr)

    @torch.no_grad()
    def precision(self, m: "CoMining") -> float | None:
        from minedet.engine.dist import DistInfo
        from minedet.engine.inference import predict_dataset
        from minedet.pseudo.quality import QualityCounts

        device = next(m.detector.parameters()).device
        preds = predict_dataset(m.detector, self.val, info=DistInfo(device=device), indices=check_indices(len(self.val)),
                                score_thresh=m.options.tau)
        q = QualityCounts()
        for image_id, p in preds:
            q.add(p.select(p.scores > m.options.tau), self.val.target(image_id), CHECK_IOU)
        return q.precision if q.n_pseudo else None


class Drift(Hook):
    """The guard against a mining loop that feeds on itself (beyond the paper), at the end of each
    :data:`DRIFT_WINDOW`-step window, without hidden truth: it warns (once) when the cap cut most images' mined boxes
    (one image over the cap is noise: a sparse image may hide many objects; most of them is a mining loop), or when
    the precision proxy fell below :data:`PROXY_FLOOR` (the cap hides how many boxes the detector would mine; the
    proxy does not).

    Not a rule here: shrinking the mining when the boxes offered per image grow while the proxy falls. A healthy run
    on digits `hard` (mined precision about 0.9) and a run feeding on itself on the tree crowns' partial protocol
    (about 0.3) both showed it, so it cannot tell them apart.

    Logs ``pseudo/capped`` (boxes the cap cut), ``pseudo/on_labels`` (the proxy, once mining is on) and
    ``pseudo/offered_per_image`` (confident detections off the labels per image, before the cap)."""

    def __init__(self, rule: PseudoRule, cap: Callable[[], int | None]) -> None:
        self.rule, self.cap = rule, cap
        self.warned: set[str] = set()
        self.window = [0, 0, 0, 0]  # images through the cap, images it cut, confident detections on labels, off them

    def after_step(self, step: int, records: Sequence[StepRecord], metrics: dict) -> None:
        cap = self.cap()
        for rec in records:
            tally, images = [0, 0], 0
            for m in rec.mined:
                for raw, d in zip(m.raw, m.labels.detections):
                    n = int(self.rule.above(d).sum())
                    if cap is not None:
                        self.window[0] += 1
                        if n > cap:
                            self.window[1] += 1
                            metrics["pseudo/capped"] = metrics.get("pseudo/capped", 0.0) + n - cap
                    if m.active:
                        tally[0] += int(self.rule.above(raw).sum()) - n
                        tally[1] += n
                        images += 1
            if sum(tally):
                metrics["pseudo/on_labels"] = tally[0] / sum(tally)
                metrics["pseudo/offered_per_image"] = tally[1] / images
            self.window[2] += tally[0]
            self.window[3] += tally[1]
        if step % DRIFT_WINDOW == 0:
            self.check(step, cap)

    def check(self, step: int, cap: int | None) -> None:
        (seen, cut, on, off), self.window = self.window, [0, 0, 0, 0]
        if seen and 2 * cut > seen and "cap" not in self.warned:
            self.warned.add("cap")
            print(f"minedet: warning: co-mining hit its cap of {cap} mined boxes per image (method.cap_ratio x "
                  f"the labelled boxes per image) on {cut} of {seen} images in the {DRIFT_WINDOW} steps to step {step}: "
                  "the mining may be feeding on itself; watch pseudo/o_boxes_per_image and pseudo/capped", file=sys.stderr)
        if on + off >= PROXY_MIN and on < PROXY_FLOOR * (on + off) and "proxy" not in self.warned:
            self.warned.add("proxy")
            print(f"minedet: warning: only {on} of the {on + off} confident co-mining detections (score > tau) in the "
                  f"{DRIFT_WINDOW} steps to step {step} lie on labelled boxes: the detector proposes about "
                  f"{off / max(on, 1):.0f} new objects for every labelled one it finds. Unless fewer than one object in "
                  f"{round(1 / PROXY_FLOOR)} is labelled, the mining is feeding on itself; watch pseudo/on_labels "
                  "(raise method.tau, or keep method.cap_ratio on)", file=sys.stderr)


class Render(Hook):
    """Fig. 3: every ``every`` steps, each branch's mined boxes on the first ``images`` training images (a forward
    of its own, in training mode; it changes nothing a step reads), written to ``renders/`` of the run's folder by
    the first process."""

    def __init__(self, method: "CoMining", every: int, images: int) -> None:
        self.method, self.every, self.images = (method,), every, images

    def after_step(self, step: int, records: Sequence[StepRecord], metrics: dict) -> None:
        if step % self.every == 0:
            self.render(step)

    @torch.no_grad()
    def render(self, step: int) -> Path | None:
        from minedet.engine.dist import is_main_process
        from minedet.viz import BoxGroup, draw_boxes, grid, save_png

        m = self.method[0]
        ds = m.datasets.get("labelled")
        if ds is None or m.out_dir is None or not is_main_process():
            return None
        samples = [ds[i] for i in range(min(self.images, len(ds)))]
        groups = m.groups(None)
        branches = [name for g in groups for name in g.views]
        views = {br: [s["views"][br] for s in samples] for br in branches}
        device = next(m.detector.parameters()).device
        was = m.detector.training
        m.detector.train()
        out = m.detector.forward_heads([v.image.to(device) for br in branches for v in views[br]])
        m.detector.train(was)
        b = len(samples)
        heads = {("labelled", br): out.take(slice(j * b, (j + 1) * b)) for j, br in enumerate(branches)}
        batch = {"labelled": SimpleNamespace(views=views, image_ids=[v.target.image_id for v in views["o"]])}
        mined = {x.name: x for x in m.source.mine(StepInput(batch, groups, heads, m.rule, m.keep, m.datasets, m.floor,
                                                             learn=False))}
        names = ds.data.class_names
        tiles = []
        for br in branches:
            confident = mined[br].labels.confident if br in mined else [Target.empty() for _ in samples]
            for v, p in zip(views[br], confident):
                colour = (255, 40, 40) if br == "o" else (40, 90, 255)
                tiles.append(draw_boxes(v.image, [
                    BoxGroup(v.target.boxes.numpy(), None, None, color=(40, 200, 40)),
                    BoxGroup(p.boxes.cpu().numpy(), [names[int(k)] for k in p.labels], p.scores.cpu().tolist(), color=colour),
                ]))
        path = m.out_dir / "renders" / f"mined_step{step:06d}.png"
        save_png(grid(tiles, b), path)
        return path


class CoMining(SelfTraining):
    """Co-mining as a configuration of the self-training template (the module docstring)."""

    name = "co_mining"
    # sparse labels train best on BRL's loss (on digits `hard`, `extreme` and the nuclei image); the val check stopped
    # the trees' `partial` loop feeding on itself (dev AP50 41.5 against 27.0 without it, one seed; docs/findings.md)
    own_data = {"*": {"method.min_val_precision": "0.7"}, "retinanet": {"model.extra.cls_loss": "brl"}}

    def __init__(self, detector: DetectorAdapter, options: CoMiningOptions | None = None) -> None:
        o = options or CoMiningOptions()
        if o.gt_match not in ("same", "any"):
            raise MinedetError(f"method.gt_match must be 'same' or 'any', not {o.gt_match!r}")
        ignore_below = o.ignore_below
        if ignore_below == "auto":  # the detector's band, never above tau
            ignore_below = detector.mining_ignore_below
            ignore_below = None if ignore_below is None else min(ignore_below, o.tau)
        if isinstance(ignore_below, (str, bool)):
            raise MinedetError(f"method.ignore_below must be a number in [0, tau={o.tau}], null (no band) or auto "
                               f"(the detector's), got {o.ignore_below!r}")
        if ignore_below is not None and not 0.0 <= ignore_below <= o.tau:
            raise MinedetError(f"method.ignore_below must be in [0, tau={o.tau}], got {ignore_below} "
                               "(lower it, set it to null, or method.paper=true for the release's behaviour)")
        part = detector.mining_part if o.part == "auto" else o.part
        check_share("contain", o.contain)
        check_share("part", part, o.part, ", auto (the detector's)")
        check_share("min_val_precision", o.min_val_precision)
        if o.cap_ratio is not None and o.cap_ratio <= 0:
            raise MinedetError(f"method.cap_ratio must be > 0, got {o.cap_ratio}")
        self.view = view_transform(o.view)
        self.cap: int | None = None  # mined boxes per image at most (cap_ratio, set in bind from the labels)
        source = Branches(detector, detector.mining_nms if o.nms is None else o.nms, o.topk, o.max_dets, o.mine_after)
        keep = KnownFilter(o.iou_gt, same_class=o.gt_match == "same", contain=o.contain, part=part,
                           rejected_iou=o.rejected_iou)
        regress = detector.mining_regress if o.pseudo_regress is None else o.pseudo_regress
        super().__init__(detector, o, source, keep=keep, stages=(self.capped,) if o.cap_ratio is not None else (),
                         regress=regress, ignore_below=ignore_below, nms=None)
        self.options: CoMiningOptions = o
        self.drift = Drift(self.rule, lambda: self.cap)
        self.renders = Render(self, o.render_every, o.render_images)
        self.val_check = None if o.min_val_precision is None else ValCheck(self, o.min_val_precision)

    @property
    def branches(self) -> list[str]:
        return ["o", "a"] if self.options.siamese else ["o"]

    def streams(self) -> dict[str, dict[str, Compose]]:
        views = {"o": Compose([])}
        if self.options.siamese:
            views["a"] = self.view
        return {"labelled": views}

    def groups(self, batch: dict | None) -> tuple[Group, ...]:
        """Each branch its own loss; with co-generation each learns from the boxes the other branch mined
        (complementary supervision, Eq. 1-2: ``C_o = P^g_a ∪ Y``, ``C_a = P^g_o ∪ Y``), or from its own without the
        second branch."""
        o = self.options
        other = {"o": "a", "a": "o"} if o.siamese else {"o": "o"}
        return tuple(Group("labelled", (b,), b, source=other[b] if o.cogeneration else None) for b in self.branches)

    def hooks(self) -> list[Hook]:
        extra = [self.drift] if self.options.cogeneration else []
        if self.options.cogeneration and self.val_check is not None:
            extra.append(self.val_check)
        return super().hooks() + extra + ([self.renders] if self.options.render_every else [])

    def bind(self, datasets: dict, out_dir: str | Path | None = None) -> None:
        super().bind(datasets, out_dir)
        ds = datasets.get("labelled")
        if self.options.cap_ratio is not None and ds is not None:
            density = sum(len(ds.target(i)) for i in ds.ids) / max(1, len(ds.ids))
            self.cap = max(1, math.ceil(self.options.cap_ratio * density))

    def bind_val(self, val) -> None:
        """The validation dataset (or None): what the val check (``method.min_val_precision``) scores the student on."""
        if self.val_check is not None:
            self.val_check.val = val
            if val is None and self.options.cogeneration:
                print("minedet: note: method.min_val_precision has no val set to check on (data.val): the mining is "
                      "never paused", file=sys.stderr)

    def capped(self, t: Target, image_id: int) -> Target:
        """The cap stage of the rule: at most :attr:`cap` mined boxes per image, the best first."""
        return t if self.cap is None or len(t) <= self.cap else pf.top_k(t, self.cap)

    def eval_models(self) -> dict[str, DetectorAdapter]:
        return {"student": self.detector}

    def schedule_warnings(self, max_steps: int) -> list[str]:
        o = self.options
        if o.cogeneration and o.mine_after >= max_steps:
            return [f"method.mine_after={o.mine_after} >= train.max_steps={max_steps}: nothing is ever mined, so this "
                    "run trains the Siamese detector without co-generation; lower method.mine_after"]
        return []

    def budget_notes(self, passes: dict[str, float]) -> list[str]:
        n = passes.get("labelled")
        if not self.options.siamese or n is None or n >= FEW_PASSES:
            return []
        return [f"this run goes over each training image about {n:.1f} times. At 2.4 to 3.6 passes on the benchmarks' "
                "digits, a plain run on twice the batch (the supervised method, data.batch_size doubled: about a "
                "two-view step's compute) trained a better detector than co-mining on RetinaNet, FCOS and Faster "
                "R-CNN (and than joint on RetinaNet); the second view paid from about 14 passes. Measure both on your "
                "data (docs/findings.md, Sparse labels)"]
