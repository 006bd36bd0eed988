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
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from minedet.data.transforms import Compose, view_transform
from minedet.errors import MinedetError
from minedet.methods.base import Method, check_share, detectors_own, prefixed
from minedet.models.detector import DetectorAdapter
from minedet.pseudo import filters as pf
from minedet.pseudo.quality import QualityCounts
from minedet.pseudo.semantics import ClassThresholds, PseudoLabels, PseudoRule, against_hidden, carry, known_background
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
    class) by IoU > rejected_iou is neither mined nor ignored: that region stays background (None: off)."""

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
    paper: bool = False

    def __post_init__(self) -> None:
        if self.paper:  # the release's behaviour: every option beyond the paper off
            for k, v in PAPER_SETTINGS.items():
                setattr(self, k, v)


#: what ``method.paper=true`` sets: the Co-mining release's behaviour (the guards beyond the paper off)
PAPER_SETTINGS = {"pseudo_regress": True, "ignore_below": None, "contain": None, "part": None, "cap_ratio": None,
                  "mine_after": 0, "adaptive": False, "dispute": None}


#: the drift warning looks at the mined boxes of this many steps at a time
DRIFT_WINDOW = 50
#: the precision proxy: of the confident detections (score > tau, before the cap) of a window, the share the
#: labelled boxes account for. A detector that finds what it was taught puts a good share of its confident
#: detections on the labelled objects (a quarter on digits `extreme`, where one object in four is labelled);
#: below this share, it proposes about ten new objects for every labelled one it finds
PROXY_FLOOR = 0.1
#: ... over at least this many confident detections in the window (fewer is noise)
PROXY_MIN = 20
#: below this many passes over the training images, a plain run on twice the batch (about a two-view step's
#: compute) trained the better detector in every measured table (digits, 2.4 to 3.6 passes: RetinaNet, FCOS and
#: Faster R-CNN); at about 14 passes and beyond the second view paid (docs/findings.md, Sparse labels)
FEW_PASSES = 4.0


class CoMining(Method):
    name = "co_mining"
    # sparse labels train best on BRL's loss (on digits `hard`, `extreme` and the nuclei image; docs/benchmarks.md)
    own_data_model = {"retinanet": {"model.extra.cls_loss": "brl"}}

    def __init__(self, detector: DetectorAdapter, options: CoMiningOptions | None = None) -> None:
        super().__init__(detector)
        self.options = o = options or CoMiningOptions()
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
        self._part = detector.mining_part if o.part == "auto" else o.part
        check_share("contain", o.contain)
        check_share("part", self._part, o.part, ", auto (the detector's)")
        check_share("dispute", o.dispute)
        if o.cap_ratio is not None and o.cap_ratio <= 0:
            raise MinedetError(f"method.cap_ratio must be > 0, got {o.cap_ratio}")
        self._view = view_transform(o.view)
        self._nms = detector.mining_nms if o.nms is None else o.nms
        self.cap: int | None = None  # mined boxes per image at most (cap_ratio, set in bind from the labels)
        thresholds = ClassThresholds(detector.num_classes, o.tau, o.adaptive_quantile) if o.adaptive else None
        regress = detector.mining_regress if o.pseudo_regress is None else o.pseudo_regress
        self.rule = PseudoRule(o.tau, regress=regress, ignore_below=ignore_below,
                               stages=(self._capped,) if o.cap_ratio is not None else (), thresholds=thresholds,
                               dispute=o.dispute)
        self.steps_done = 0
        self.warned: set[str] = set()  # the drift warnings given so far ("cap", "proxy"): each at most once
        self._drift = [0, 0]  # images through the cap, images it cut, since the last drift check
        self._proxy = [0, 0]  # confident detections on labelled boxes, off them, since the last drift check
        self.last_mined: dict[str, list[Target]] = {}  # each branch's mined boxes of the last step (its own frame)
        self.last_labels: dict[str, PseudoLabels] = {}  # the same with the ignored band
        self.quality = {"o": QualityCounts(), "a": QualityCounts()}
        self.datasets: dict = {}
        self._out_dir: Path | None = None

    # ------------------------------------------------------------------ wiring
    def streams(self) -> dict[str, dict[str, Compose]]:
        views = {"o": Compose([])}
        if self.options.siamese:
            views["a"] = self._view
        return {"labelled": views}

    def bind(self, datasets: dict, out_dir: str | Path | None = None) -> None:
        self.datasets = datasets
        self._out_dir = None if out_dir is None else Path(out_dir)
        ds = datasets.get("labelled")
        if self.options.cap_ratio is not None and ds is not None:
            density = sum(len(ds.target(i)) for i in ds.ids) / max(1, len(ds.ids))
            self.cap = max(1, math.ceil(self.options.cap_ratio * density))

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

    def _capped(self, t: Target, image_id: int) -> Target:
        if self.cap is None:
            return t
        self._drift[0] += 1
        if len(t) <= self.cap:
            return t
        self._drift[1] += 1
        self.metrics["pseudo/capped"] = self.metrics.get("pseudo/capped", 0.0) + len(t) - self.cap
        return pf.top_k(t, self.cap)

    def _check_drift(self, step: int) -> None:
        """Warn (each once) at the end of a :data:`DRIFT_WINDOW`-step window when the cap cut most images'
        mined boxes (one image over the cap is noise: a sparse image may hide many objects; most of them is a
        mining loop), or when the precision proxy fell below :data:`PROXY_FLOOR` (the cap hides how many boxes
        the detector would mine; the proxy does not, and it needs no hidden truth, so it also watches
        ``method.paper=true`` runs)."""
        (seen, cut), self._drift = self._drift, [0, 0]
        (on, off), self._proxy = self._proxy, [0, 0]
        if seen and 2 * cut > seen and "cap" not in self.warned:
            self.warned.add("cap")
            print(f"minedet: warning: co-mining hit its cap of {self.cap} mined boxes per image (method.cap_ratio x "
                  f"the labelled boxes per image) on {cut} of {seen} images in the {DRIFT_WINDOW} steps to step {step}: "
                  "the mining may be feeding on itself; watch pseudo/o_boxes_per_image and pseudo/capped", file=sys.stderr)
        if on + off >= PROXY_MIN and on < PROXY_FLOOR * (on + off) and "proxy" not in self.warned:
            self.warned.add("proxy")
            print(f"minedet: warning: only {on} of the {on + off} confident co-mining detections (score > tau) in the "
                  f"{DRIFT_WINDOW} steps to step {step} lie on labelled boxes: the detector proposes about "
                  f"{off / max(on, 1):.0f} new objects for every labelled one it finds. Unless fewer than one object in "
                  f"{round(1 / PROXY_FLOOR)} is labelled, the mining is feeding on itself; watch pseudo/on_labels "
                  "(raise method.tau, or keep method.cap_ratio on)", file=sys.stderr)

    # ------------------------------------------------------------------ co-generation
    @property
    def mining(self) -> bool:
        """Past the warm-up (``mine_after`` steps): mined and ignored boxes reach the loss."""
        return self.steps_done >= self.options.mine_after

    @torch.no_grad()
    def co_generate(self, parts: dict, views: dict, rejected: dict[str, list[Target]] | None = None,
                    tally: list[int] | None = None) -> dict[str, PseudoLabels]:
        """Co-generation: each branch's pseudo-labels P^g from its decoded head outputs (``parts``, same forward) on
        its views, split by the one pseudo-label rule (confident; ignored with ``ignore_below``); with
        ``method.dispute``, the other branch's candidates (carried into this branch's frame) may contest them."""
        kept = {name: self.candidates(out, [v.target for v in views[name]], None if rejected is None else rejected[name],
                                      tally) for name, out in parts.items()}
        labels = {}
        for name, own in kept.items():
            others = [src for src in kept if src != name]
            contest = None if self.rule.dispute is None or not others else [
                Target.cat([carry(kept[src][i], views[src][i].map, views[name][i].map) for src in others])
                for i in range(len(own))]
            labels[name] = self.rule(own, [v.target.image_id for v in views[name]], contest)
        return labels

    @torch.no_grad()
    def candidates(self, out, gts: list[Target], rejected: list[Target] | None = None,
                   tally: list[int] | None = None) -> list[Target]:
        """One branch's detections from decoded head outputs (same forward; down to the rule's floor), minus boxes
        on the GT (and on boxes a reviewer rejected): what the pseudo-label rule splits (none in the warm-up).
        ``tally``: [on, off] gains the confident detections (score > tau) the labelled (or rejected) boxes account
        for and those they do not, before the warm-up and the cap (the precision proxy)."""
        o = self.options
        dets = self.detector.decode(out, score_thresh=self.rule.floor, nms_thresh=self._nms, topk_candidates=o.topk,
                                    detections_per_img=o.max_dets, score_rule=self.detector.mining_score_rule)
        if self.rule.thresholds is not None:  # what the model makes of the labelled boxes now
            self.rule.thresholds.observe(dets, gts)
            for k, v in enumerate(self.rule.thresholds.values().tolist()):
                self.metrics[f"pseudo/tau_{k}"] = v
        kept = []
        for d, gt, rej in zip(dets, gts, rejected or [None] * len(gts)):
            kept.append(pf.drop_known(d.detach(), gt, o.iou_gt, same_class=o.gt_match == "same", contain=o.contain,
                                      part=self._part, rejected=rej, rejected_iou=o.rejected_iou))
            if tally is not None:
                n, m = int(self.rule.above(d).sum()), int(self.rule.above(kept[-1]).sum())
                tally[0] += n - m
                tally[1] += m
        if not self.mining:  # warm-up: nothing mined, nothing ignored
            kept = [d.select(torch.zeros(len(d), dtype=torch.bool, device=d.boxes.device)) for d in kept]
        return kept

    def training_step(self, batch: dict) -> dict[str, Tensor]:
        o = self.options
        views = batch["labelled"].views
        vo = views["o"]
        b = len(vo)
        branches = ["o", "a"] if o.siamese else ["o"]
        images = [v.image for name in branches for v in views[name]]
        out = self.detector.forward_heads(images)
        parts = {name: out.take(slice(i * b, (i + 1) * b)) for i, name in enumerate(branches)}
        gts = {name: [v.target for v in views[name]] for name in branches}

        labels: dict[str, PseudoLabels] = {}
        if o.cogeneration:
            t0 = time.perf_counter()
            ds, ids = self.datasets.get("labelled"), batch["labelled"].image_ids
            tally = [0, 0]
            rejected = {name: known_background(ds, ids, [v.map for v in views[name]]) for name in branches}
            labels = self.co_generate(parts, views, rejected, tally)
            if self.mining and sum(tally):  # the precision proxy, once mining is on
                self.metrics["pseudo/on_labels"] = tally[0] / sum(tally)
                self._proxy = [a + b for a, b in zip(self._proxy, tally)]
            if o.dispute is not None and self.mining:
                moved = sum(len(t) for lab in labels.values() for t in lab.disputed)
                self.metrics["pseudo/disputed_per_image"] = moved / (len(branches) * b)
            self.metrics["time/cogeneration"] = time.perf_counter() - t0  # seconds per step (the issue's <= 5 % target)
        mined = {name: lab.confident for name, lab in labels.items()}
        if o.cogeneration:
            self._measure(batch, views, mined)

        losses: dict[str, Tensor] = {}
        for name in branches:
            # complementary supervision: each branch learns from the *other* branch's mined boxes
            source = "a" if (o.siamese and name == "o") else "o" if o.siamese else name
            targets = gts[name]
            if o.cogeneration:
                targets = [
                    Target.cat([gt, carry(p, views[source][i].map, views[name][i].map)])
                    for i, (gt, p) in enumerate(zip(gts[name], labels[source].targets()))
                ]
            losses.update(prefixed(self.detector.loss(parts[name], targets), name))
        self.last_mined, self.last_labels = mined, labels
        return losses

    # ------------------------------------------------------------------ measurement
    def _measure(self, batch: dict, views: dict, mined: dict[str, list[Target]]) -> None:
        ds = self.datasets.get("labelled")
        names = list(ds.data.class_names) if ds is not None else None
        for k, targets in mined.items():
            self.metrics[f"pseudo/{k}_boxes_per_image"] = sum(len(t) for t in targets) / max(1, len(targets))
            labels = torch.cat([t.labels.cpu() for t in targets]) if targets else torch.zeros(0, dtype=torch.long)
            for c, count in zip(*torch.unique(labels, return_counts=True)):
                # per-class counts of this step's mined boxes (TensorBoard: train/pseudo/o_class/<name>)
                c = int(c)
                self.metrics[f"pseudo/{k}_class/{names[c] if names and c < len(names) else c}"] = float(count)
        if ds is None or ds.hidden is None:
            return
        hidden = [ds.hidden_target(i) for i in batch["labelled"].image_ids]
        for name, targets in mined.items():
            q = against_hidden(targets, hidden, [v.map for v in views[name]], [v.target for v in views[name]])
            self.quality[name].merge(q)
            self.metrics.update(q.as_dict(prefix=f"quality/{name}_"))
            # running totals over the run (the per-step numbers are noisy); kept across a resume
            self.metrics.update(self.quality[name].as_dict(prefix=f"quality/{name}_total_"))

    def extra_state(self) -> dict:
        """The running pseudo-label quality counts, so that totals continue across a resume."""
        state = {"quality": {k: asdict(q) for k, q in self.quality.items()}, "steps_done": self.steps_done}
        if self.rule.thresholds is not None:
            state["thresholds"] = self.rule.thresholds.state_dict()
        return state

    def load_extra_state(self, state: dict) -> None:
        self.steps_done = int(state.get("steps_done", 0))
        if self.rule.thresholds is not None and "thresholds" in state:
            self.rule.thresholds.load_state_dict(state["thresholds"])
        for k, q in (state.get("quality") or {}).items():
            if k in self.quality:
                self.quality[k] = QualityCounts(**q)

    def after_step(self, step: int) -> None:
        o = self.options
        self.steps_done = step
        if o.cogeneration and step % DRIFT_WINDOW == 0:
            self._check_drift(step)
        if o.render_every and step % o.render_every == 0 and self._out_dir is not None:
            self.render(step)

    @torch.no_grad()
    def render(self, step: int) -> Path | None:
        """Fig. 3: each branch's mined boxes on the first ``render_images`` training images."""
        from minedet.viz import BoxGroup, draw_boxes, grid, save_png

        ds = self.datasets.get("labelled")
        if ds is None or not self.options.cogeneration:
            return None
        names = ds.data.class_names
        samples = [ds[i] for i in range(min(self.options.render_images, len(ds)))]
        branches = ["o", "a"] if self.options.siamese else ["o"]
        images = [s["views"][br].image.to(next(self.parameters()).device) for br in branches for s in samples]
        was = self.detector.training
        self.detector.train()
        out = self.detector.forward_heads(images)
        self.detector.train(was)
        tiles = []
        b = len(samples)
        counts = list(self._drift), self.metrics.get("pseudo/capped")  # a render is not training: the guard's counts stay
        views = {br: [s["views"][br] for s in samples] for br in branches}
        labels = self.co_generate({br: out.take(slice(j * b, (j + 1) * b)) for j, br in enumerate(branches)}, views)
        for br in branches:
            for s, gt, m in zip(samples, [v.target for v in views[br]], labels[br].confident):
                colour = (255, 40, 40) if br == "o" else (40, 90, 255)
                tiles.append(draw_boxes(s["views"][br].image, [
                    BoxGroup(gt.boxes.numpy(), None, None, color=(40, 200, 40)),
                    BoxGroup(m.boxes.cpu().numpy(), [names[int(k)] for k in m.labels], m.scores.cpu().tolist(), color=colour),
                ]))
        self._drift = counts[0]
        if counts[1] is None:
            self.metrics.pop("pseudo/capped", None)
        else:
            self.metrics["pseudo/capped"] = counts[1]
        path = self._out_dir / "renders" / f"mined_step{step:06d}.png"
        save_png(grid(tiles, b), path)
        return path

