"""ACRST: Adaptive Class-Rebalancing Self-Training (Zhang, Pan & Wang, AAAI 2022).

Mean Teacher (:class:`~minedet.methods.mean_teacher.MeanTeacher`, Eq. 1-5) plus four parts, each
with its own switch so the paper's ablations (Tables 4-7, 10) run from one config each:

* **CropBank** (``fbr``): a *labelled* bank of ground-truth instances (fixed) and a *pseudo* bank
  holding the latest two-stage-filtered pseudo-labels of every unlabelled image seen (records:
  image ref, box in file pixels, class, score — never pixels; ~15 bytes per instance). Every
  ``refresh_every`` steps the bank (``bank``: labelled / pseudo / both) is published as a snapshot
  that the data pipeline reads (``minedet.data.cropbank.publish`` / ``SnapshotReader``).
* **FBR** (Eq. 6-7): the strong view of each training image (``paste_on``: unlabelled or both
  streams) gets ``N ~ U{n_min..n_max}`` crops from the snapshot pasted in by
  :class:`minedet.data.paste.Paste`, inside the DataLoader — it costs no training-step time.
  Instances hidden by a paste are removed (rule in ``minedet.data.paste``); the teacher's
  pseudo-labels, made on the weak view at step time, are carried into the strong view and the same
  rule removes those under a paste.
* **AFFR** (Eq. 8-9): Pseudo Recall ``PR_k`` = sum of the teacher's detection scores > ``pr_thresh``
  (0.1) per class over the last refresh window (summed over DDP ranks); crops are drawn by class
  with ``mu_k ∝ (1/PR_k)^beta`` (``beta`` 0.6; ``affr=False`` is beta 0 = uniform FBR).
* **Two-stage filtering** (``two_stage``): an image-level multi-label classifier (SSMLL,
  :mod:`minedet.models.multilabel`, trained by its own Mean Teacher in a pre-stage of the run and
  saved as ``multilabel.pt``) gives each unlabelled image a probability per class; pseudo-boxes
  pass stage one by score (``tau``) and stage two when their class's probability is >= ``tau_ml``
  (0.2). With hidden truth, the precision/recall of single-stage, two-stage filtering and
  two-stage mining (score >= tau *or* image-level positive >= ``mining_pos``) are logged side by
  side (Table 10), and the classifier's image-level label quality once (Table 9).
* **Selective supervision** (``selective_supervision``, Eq. 10): on unlabelled images only pasted
  CropBank instances supervise box regression; all pseudo-labels supervise classification. Off:
  no regression from unlabelled images (Eq. 5), and pasted *pseudo* crops do not regress anywhere.

``stac_acrst`` (Table 7) adds the same parts to STAC: the teacher labels the unlabelled images
once (score > ``pr_thresh`` for Pseudo Recall, then the two stages), those labels fill the pseudo
bank, and crops are pasted into STAC's strong views. Both are configurations of the self-training
template (:mod:`minedet.methods.self_training`) holding one :class:`AcrstPart`, which implements every part
through the template's :class:`~minedet.methods.self_training.Part` protocol: the paste step of the strong views, the
veto as a rule stage, the occlusion and selective-supervision targets, the bank and AFFR after each step, its state.

Choices the paper leaves open (documented, tested): pastes start at step 0 from the labelled bank
(uniform classes until the teacher has produced a Pseudo Recall); classes with no detection get a
finite AFFR probability (``class_probabilities``); under DDP each rank keeps the pseudo bank of the
images it sees and PR is summed over ranks. The SSMLL classifier is a pre-stage of the run
(:meth:`AcrstPart.prestages`): the one training loop trains it before the detector, with the run's
DDP, AMP, checkpoints and resume, unless ``multilabel_checkpoint`` names a trained one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from minedet.data.cropbank import BankChannel, CropBank, class_probabilities, pseudo_recall, union
from minedet.data.paste import Paste, remove_occluded
from minedet.data.transforms import Compose
from minedet.engine.dist import labelling_info
from minedet.errors import MinedetError
from minedet.io import write_text_atomic
from minedet.methods.base import PreStage
from minedet.methods.mean_teacher import MeanTeacher, MeanTeacherOptions
from minedet.methods.self_training import Group, Mined, Part, StepRecord
from minedet.methods.stac import Stac, StacOptions
from minedet.models.detector import DetectorAdapter
from minedet.pseudo import filters as pf
from minedet.pseudo.quality import QualityCounts
from minedet.structures import Target

BANKS = ("labelled", "pseudo", "both")


@dataclass
class AcrstParts:
    """ACRST's switches (shared by ``acrst`` and ``stac_acrst``):

    fbr: paste CropBank crops into strong views (FBR); affr: class-adaptive sampling (AFFR);
    beta: AFFR exponent (Eq. 9); pr_thresh: score threshold of Pseudo Recall (Eq. 8);
    bank: labelled | pseudo | both; n_min / n_max: crops per image (Table 5);
    paste_on: unlabelled | both (which streams' strong views get pastes);
    refresh_every: steps between pseudo-bank / AFFR refreshes (acrst);
    crop_scale / crop_flip / crop_color: crop augmentation; occlusion: covered share that removes
    an instance; occlusion_ignore: covered share from which an instance is ignored instead (beyond the
    paper, 0.5 by default: ``weight=0``, its label names pixels that are mostly the crop's; null or
    ``paper=true``: every instance covered below ``occlusion`` keeps its label, Eq. 7 alone);
    two_stage: the multi-label veto (stage two); tau_ml: its threshold;
    mining_pos: image-level positive threshold of Table 10's "two-stage mining" (logged only);
    multilabel: SSMLL training options (``MultiLabelOptions`` fields);
    multilabel_checkpoint: a trained classifier (``multilabel.pt``) to use instead of training one;
    selective_supervision: Eq. 10."""

    fbr: bool = True
    affr: bool = True
    beta: float = 0.6
    pr_thresh: float = 0.1
    bank: str = "both"
    n_min: int = 0
    n_max: int = 10
    paste_on: str = "both"
    refresh_every: int = 50
    crop_scale: list = field(default_factory=lambda: [0.8, 1.2])
    crop_flip: float = 0.0
    crop_color: float = 0.2
    occlusion: float = 0.9
    occlusion_ignore: float | None = 0.5  # beyond the paper (docs/benchmarks.md, semi_occlusion)
    two_stage: bool = True
    tau_ml: float = 0.2
    mining_pos: float = 0.7
    multilabel: dict = field(default_factory=dict)
    multilabel_checkpoint: str = ""
    selective_supervision: bool = True

    def check(self) -> None:
        if self.bank not in BANKS:
            raise MinedetError(f"method.bank must be one of {', '.join(BANKS)}, got {self.bank!r}")
        if self.paste_on not in ("unlabelled", "both"):
            raise MinedetError(f"method.paste_on must be unlabelled or both, got {self.paste_on!r}")
        if not 0 <= self.n_min <= self.n_max:
            raise MinedetError(f"method.n_min / n_max must satisfy 0 <= n_min <= n_max, got {self.n_min} / {self.n_max}")
        if self.beta < 0:
            raise MinedetError(f"method.beta must be >= 0, got {self.beta}")
        if self.occlusion_ignore is not None and not 0 <= self.occlusion_ignore <= self.occlusion:
            raise MinedetError(f"method.occlusion_ignore ({AcrstParts.occlusion_ignore} by default) must be in "
                               f"[0, occlusion={self.occlusion}] or null, got {self.occlusion_ignore}: lower it to "
                               f"method.occlusion or below, or set it to null")
        if self.refresh_every < 1:
            raise MinedetError(f"method.refresh_every must be >= 1, got {self.refresh_every}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1]:
            raise MinedetError(f"method.crop_scale must be [lo, hi] with 0 < lo <= hi, got {self.crop_scale}")
        from minedet.options import from_dict
        from minedet.models.multilabel import MultiLabelOptions

        from_dict(MultiLabelOptions, dict(self.multilabel), where="method.multilabel")  # a typo fails now, not after burn-in


@dataclass
class AcrstOptions(AcrstParts, MeanTeacherOptions):
    """Mean Teacher's options (:class:`MeanTeacherOptions`, the ignored band included: measured better for
    ACRST too on long-tailed digits, docs/benchmarks.md) plus ACRST's (:class:`AcrstParts`)."""


@dataclass
class StacAcrstOptions(AcrstParts, StacOptions):
    """STAC's options (:class:`StacOptions`) plus ACRST's (:class:`AcrstParts`); Table 7."""


class AcrstPart(Part):
    """CropBank + FBR + AFFR + the two-stage filter + selective supervision: ACRST's parts on the self-training
    template (not a module: its state travels in ``extra_state``).

    Args:
        options: the switches and the template's options (``tau``, ``nms``, ``unsup_regression``).
        num_classes: K. classifier: an SSMLL classifier to use for stage two instead of training or loading one.
        refresh_after: with an online teacher, the burn-in after which the bank and AFFR are refreshed every
            ``refresh_every`` steps; None (STAC): once, after the one labelling pass.
    """

    def __init__(self, options: AcrstParts, num_classes: int, classifier=None, *, refresh_after: int | None) -> None:
        options.check()
        self.o = o = options
        self.k = num_classes
        self.classifier = classifier
        self.refresh_after = refresh_after
        self.floor = o.pr_thresh
        self.labelled_bank = CropBank(num_classes)
        self.pseudo_bank = CropBank(num_classes)
        self.pr_window = torch.zeros(num_classes, dtype=torch.float64)  # Eq. 8, summed since the last refresh
        self.pr_last = torch.zeros(num_classes, dtype=torch.float64)
        self.class_probs = torch.full((num_classes,), 1.0 / num_classes)
        self.version = 0
        self.image_probs: dict[int, Tensor] = {}
        self.index_of: dict[int, int] = {}
        self.multilabel_quality: dict | None = None
        self.data: tuple = (None, None)  # (labelled, unlabelled) datasets, from bind
        self.out_dir: Path | None = None
        self.metrics: dict[str, float] = {}
        self.bound = False
        self.variants = {"single": QualityCounts(), "two_stage": QualityCounts(), "mining": QualityCounts()}
        # Eq. 10: with selective supervision only pasted crops regress on unlabelled images
        self.pasted_regress = o.selective_supervision or o.unsup_regression
        self.channel = BankChannel()
        self.paste = Paste(self.channel, [[], []], n_range=(o.n_min, o.n_max), scale=tuple(o.crop_scale),
                           flip=o.crop_flip, color=o.crop_color, occlusion=o.occlusion,
                           occlusion_ignore=o.occlusion_ignore) if o.fbr else None

    @property
    def beta(self) -> float:
        return self.o.beta if self.o.affr else 0.0

    # ------------------------------------------------------------------ wiring
    def student_view(self, stream: str, view: Compose) -> Compose:
        """The strong view led by the FBR paste step: on unlabelled images, and labelled ones with ``paste_on=both``."""
        pasted = stream == "unlabelled" or (stream == "labelled" and self.o.paste_on == "both")
        return Compose([self.paste, *view.transforms]) if self.paste is not None and pasted else view

    def bind(self, datasets: dict, out_dir: Path | None) -> None:
        """Labelled bank from the labelled ground truth; the paste step's source images; the first snapshot (in the
        run's folder, ``cropbank.pt``, where DataLoader workers read it); a given or named (``multilabel_checkpoint``)
        classifier's probabilities on the unlabelled images."""
        o = self.o
        lab, unl = datasets.get("labelled"), datasets.get("unlabelled")
        if lab is None or unl is None:
            raise MinedetError("ACRST needs labelled and unlabelled data (data.train and data.unlabelled)")
        if lab.data.num_classes != self.k:
            raise MinedetError(f"the detector has {self.k} classes, the labelled data {lab.data.num_classes}",
                               file=str(lab.data.path))
        self.index_of = {image_id: i for i, image_id in enumerate(unl.ids)}
        self.labelled_bank = CropBank.from_targets(self.k, 0, ((i, lab.target(image_id)) for i, image_id in enumerate(lab.ids)))
        self.data, self.out_dir = (lab, unl), out_dir
        if self.paste is not None:
            if out_dir is not None:
                self.channel.open(Path(out_dir) / _bank_file())
            self.paste.set_sources([[lab.image_root / im["file_name"] for im in lab.data.images],
                                    [unl.image_root / im["file_name"] for im in unl.data.images]])
            self.publish()
        if o.two_stage and self.classifier is None and o.multilabel_checkpoint:
            from minedet.models.multilabel import load_multilabel

            self.classifier = load_multilabel(o.multilabel_checkpoint)
        if o.two_stage and self.classifier is not None:
            self.use_classifier(self.classifier)
        self.bound = True

    @property
    def needs_classifier(self) -> bool:
        """Stage two waits for its classifier (a pre-stage trains it)."""
        return self.o.two_stage and self.classifier is None

    def prestages(self) -> list[PreStage]:
        """The SSMLL classifier's Mean Teacher training (``method.multilabel``), when stage two needs
        a classifier and none was given or named."""
        if not self.needs_classifier:
            return []
        from dataclasses import asdict

        from minedet.options import from_dict
        from minedet.models.multilabel import (MultiLabelBatches, MultiLabelMeanTeacher, MultiLabelOptions, load_multilabel,
                                               new_classifier, save_multilabel)

        lab, unl = self.data
        mo = from_dict(MultiLabelOptions, dict(self.o.multilabel), where="method.multilabel")

        def batches(start: int, rank: int, world: int):
            return MultiLabelBatches(lab, unl, self.k, mo, rank=rank, world=world)(start)

        return [PreStage("multilabel", MultiLabelMeanTeacher(new_classifier(self.k, mo), mo), batches, mo.steps, mo.lr,
                         mo.seed, result=lambda m: m.result(), save=save_multilabel, load=load_multilabel,
                         use=self.use_classifier,
                         meta={"multilabel": asdict(mo), "classes": self.k, "labelled": len(lab), "unlabelled": len(unl)})]

    def use_classifier(self, clf) -> None:
        """Stage two's classifier: its probabilities on every unlabelled image (sharded over DDP
        ranks) and, with hidden truth, its image-level label quality (Table 9)."""
        from minedet.models.multilabel import image_labels, negative_label_quality

        o = self.o
        if getattr(clf, "num_classes", self.k) != self.k:
            raise MinedetError(f"the multi-label classifier has {clf.num_classes} classes, the detector {self.k}",
                               file=o.multilabel_checkpoint or None)
        self.classifier = clf
        unl = self.data[1]
        self.image_probs = {int(i): v.float().cpu() for i, v in _gather_probs(clf, unl, labelling_info().device).items()}
        if getattr(unl, "hidden", None) is not None:
            truth = {i: image_labels(unl.hidden_target(i), self.k) for i in self.image_probs}
            self.multilabel_quality = negative_label_quality(self.image_probs, truth, o.tau_ml)
            for name, v in self.multilabel_quality.items():
                if isinstance(v, (int, float)) and v == v:
                    self.metrics[f"multilabel/{name}"] = float(v)
            if self.out_dir is not None:
                write_text_atomic(self.out_dir / "multilabel_quality.json", json.dumps(self.multilabel_quality, indent=2))

    # ------------------------------------------------------------------ CropBank / AFFR
    def banks(self) -> list[CropBank]:
        return {"labelled": [self.labelled_bank], "pseudo": [self.pseudo_bank],
                "both": [self.labelled_bank, self.pseudo_bank]}[self.o.bank]

    def add_detections(self, dets: Sequence[Target]) -> None:
        """Accumulate Pseudo Recall (Eq. 8) from the teacher's detections."""
        self.pr_window += pseudo_recall(list(dets), self.k, self.o.pr_thresh).double().cpu()

    def refresh(self) -> None:
        """End of a window: PR summed over ranks (Eq. 8) -> mu (Eq. 9); publish the bank."""
        import torch.distributed as dist

        pr = self.pr_window.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(pr)
        if pr.sum() > 0:
            self.pr_last = pr
            self.class_probs = class_probabilities(pr, self.beta).float()
        self.pr_window.zero_()
        if self.o.fbr:
            self.publish()

    def publish(self) -> None:
        bank = union(*self.banks())
        self.version += 1
        self.channel.publish(bank.snapshot(self.class_probs, self.version))
        self.metrics.update({"bank/labelled": len(self.labelled_bank), "bank/pseudo": len(self.pseudo_bank),
                             "bank/bytes": bank.nbytes()})

    def set_pseudo(self, image_id: int, target_file_frame: Target) -> None:
        """The latest pseudo-labels of an unlabelled image (boxes in file pixels) replace its records."""
        index = self.index_of.get(int(image_id))
        if index is not None:
            self.pseudo_bank.set_image(1, index, target_file_frame.detach().to("cpu"))

    # ------------------------------------------------------------------ two-stage filtering
    def probs(self, image_id: int) -> Tensor:
        p = self.image_probs.get(int(image_id))
        return torch.ones(self.k) if p is None else p  # an image never scored is not vetoed

    def stage_two(self, t: Target, image_id: int) -> Target:
        return pf.multilabel_veto(t, self.probs(image_id), self.o.tau_ml) if self.o.two_stage else t

    def stages(self) -> tuple:
        return (self.stage_two,)

    # ------------------------------------------------------------------ targets
    def targets(self, group: Group, t: Target, view) -> Target:
        """Labelled images: pasted *pseudo* crops regress only with selective supervision (or
        ``unsup_regression``). Pseudo-labelled images: the carried pseudo-labels minus those hidden under a paste
        (Eq. 7), regressing only without selective supervision (Eq. 10), then the pasted instances (pseudo)."""
        pasted = t.flag("pasted")
        if group.source is None:
            if self.pasted_regress:
                return t
            return t.with_flags(regress=t.flag("regress") & ~(pasted & t.flag("pseudo")))
        carried, crops = t.select(~pasted), t.select(pasted)
        if self.o.selective_supervision:
            carried = carried.with_flags(regress=torch.zeros(len(carried), dtype=torch.bool, device=carried.boxes.device))
        if len(crops):
            carried = remove_occluded(carried, crops.boxes.to(carried.boxes.device), self.o.occlusion, self.o.occlusion_ignore)
        crops = crops.with_flags(pseudo=True, regress=self.pasted_regress)
        dev = view.image.device
        return Target.cat([carried.to(dev), crops.to(dev)])

    # ------------------------------------------------------------------ after each step
    def after_step(self, step: int, records: Sequence[StepRecord], metrics: dict) -> None:
        """Each fresh labelling: Pseudo Recall, the pseudo bank, Table 10's variants; then, at the end of a refresh
        window (or after STAC's one labelling pass), AFFR's probabilities and a new snapshot."""
        fresh = [m for rec in records for m in rec.mined if m.fresh]
        for m in fresh:
            self.add_detections(m.raw)
            self.observe(m)
        if self.refresh_after is None:
            if fresh:
                self.refresh()
        elif step > self.refresh_after and (step - self.refresh_after) % self.o.refresh_every == 0:
            self.refresh()

    def observe(self, m: Mined) -> None:
        """The pseudo bank keeps each image's latest pseudo-labels (file pixels); with hidden truth, Table 10's
        single-stage / two-stage / two-stage-mining pseudo-labels are scored side by side (cumulative)."""
        labels = m.labels
        for image_id, p, mp in zip(m.image_ids, labels.confident, m.maps):
            self.set_pseudo(int(image_id), p.with_boxes(mp.inverse().apply(p.boxes)))
        unl = self.data[1]
        if unl is None or getattr(unl, "hidden", None) is None:
            return
        for image_id, d, mp in zip(m.image_ids, labels.detections, m.maps):
            hidden = unl.hidden_target(int(image_id))
            hidden = hidden.with_boxes(mp.apply(hidden.boxes))
            probs = self.probs(int(image_id))
            d = d.to("cpu")
            s1 = pf.by_score(d, self.o.tau)
            if self.o.nms is not None:
                s1 = pf.nms(s1, self.o.nms)
            self.variants["single"].add(s1, hidden)
            self.variants["two_stage"].add(pf.multilabel_veto(s1, probs, self.o.tau_ml), hidden)
            positive = (d.scores >= self.o.tau) | (probs[d.labels] >= self.o.mining_pos) if len(d) else torch.zeros(0, dtype=torch.bool)
            self.variants["mining"].add(d.select(positive), hidden)  # Table 10 "two-stage mining"
        for name, q in self.variants.items():
            self.metrics.update(q.as_dict(prefix=f"quality_{name}/"))

    def log_metrics(self) -> dict[str, float]:
        """AFFR's current class probabilities (``affr/mu_k``) and what changed since the last log (bank sizes,
        Table 10's counts, the classifier's quality)."""
        m, self.metrics = self.metrics, {}
        return {**m, **{f"affr/mu_{k}": v for k, v in enumerate(self.class_probs.tolist())}}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"pseudo_bank": self.pseudo_bank.state_dict(), "pr_window": self.pr_window, "pr_last": self.pr_last,
                "class_probs": self.class_probs, "version": self.version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "pseudo_bank" not in state:
            return
        self.pseudo_bank.load_state_dict(state["pseudo_bank"])
        self.pr_window = state["pr_window"].clone()
        self.pr_last = state["pr_last"].clone()
        self.class_probs = state["class_probs"].clone()
        self.version = int(state["version"]) - 1
        if self.o.fbr and self.bound:
            self.publish()


def _bank_file() -> str:
    """The snapshot's file in the run's folder: one per DDP rank (each rank banks the images it sees)."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return "cropbank.pt" if rank == 0 else f"cropbank.rank{rank}.pt"


def _gather_probs(clf, unl, device) -> dict[int, Tensor]:
    """Image-level probabilities of every unlabelled image; sharded over DDP ranks and gathered."""
    import torch.distributed as dist

    from minedet.models.multilabel import image_probabilities

    if not (dist.is_available() and dist.is_initialized()):
        return image_probabilities(clf, unl, device=device)
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = image_probabilities(clf, unl, device=device, rank=rank, world=world)
    parts: list = [None] * world
    dist.all_gather_object(parts, {k: v.cpu() for k, v in mine.items()})
    return {k: v for p in parts for k, v in p.items()}


class Acrst(MeanTeacher):
    """Mean Teacher + CropBank / FBR / AFFR + two-stage filtering + selective supervision: the
    template with an EMA teacher and ACRST's parts (:class:`AcrstPart`).

    Args:
        detector: the student.
        options: :class:`AcrstOptions`.
        classifier: an SSMLL classifier to use for stage two (tests, library use) instead of
            training or loading one.
    """

    name = "acrst"

    def __init__(self, detector: DetectorAdapter, options: AcrstOptions | None = None, *, classifier=None) -> None:
        o = options or AcrstOptions()
        self.acrst = AcrstPart(o, detector.num_classes, classifier, refresh_after=o.burn_in)
        super().__init__(detector, o, parts=(self.acrst,))
        self.options: AcrstOptions = o


class StacAcrst(Stac):
    """STAC + ACRST (the paper's Table 7): the once-only pseudo-labels pass the two stages and fill
    the pseudo bank; AFFR's class probabilities come from that one labelling pass; crops are pasted
    into STAC's strong views. With selective supervision only pasted crops regress on unlabelled
    images; without it STAC's own rule (``unsup_regression``) applies to every pseudo box.

    Args:
        detector, options (:class:`StacAcrstOptions`), teacher: as :class:`Stac`.
        classifier: as :class:`Acrst`.
    """

    name = "stac_acrst"

    def __init__(self, detector: DetectorAdapter, options: StacAcrstOptions | None = None, *, teacher=None,
                 classifier=None) -> None:
        o = options or StacAcrstOptions()
        self.acrst = AcrstPart(o, detector.num_classes, classifier, refresh_after=None)
        super().__init__(detector, o, teacher=teacher, parts=(self.acrst,))
        self.options: StacAcrstOptions = o

    def labels_wait(self) -> bool:
        """The one labelling pass waits for stage two's classifier when a pre-stage trains it."""
        return self.acrst.needs_classifier

    def prestages(self) -> list[PreStage]:
        """The classifier's pre-stage; the one labelling pass follows it (stage two vetoes with it)."""
        return [replace(st, use=lambda clf, use=st.use: (use(clf), self.label_once())) for st in super().prestages()]
