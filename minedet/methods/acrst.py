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
  :mod:`minedet.models.multilabel`, trained by its own Mean Teacher before detection training and
  saved as ``multilabel.pt``) gives each unlabelled image a probability per class; pseudo-boxes
  pass stage one by score (``tau``) and stage two when their class's probability is >= ``tau_ml``
  (0.2). With hidden truth, the precision/recall of single-stage, two-stage filtering and
  two-stage mining (score >= tau *or* image-level positive >= ``mining_pos``) are logged side by
  side (Table 10), and the classifier's image-level label quality once (Table 9).
* **Selective supervision** (``selective_supervision``, Eq. 10): on unlabelled images only pasted
  CropBank instances supervise box regression; all pseudo-labels supervise classification. Off:
  no regression from unlabelled images (Eq. 5), and pasted *pseudo* crops do not regress anywhere.

Choices the paper leaves open (documented, tested): pastes start at step 0 from the labelled bank
(uniform classes until the teacher has produced a Pseudo Recall); classes with no detection get a
finite AFFR probability (``class_probabilities``); under DDP each rank keeps the pseudo bank of the
images it sees, PR is summed over ranks, and every rank trains the same SSMLL classifier (same
seed) unless ``multilabel_checkpoint`` names a trained one.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from minedet.data.cropbank import CropBank, SnapshotReader, class_probabilities, publish, pseudo_recall, union
from minedet.data.paste import Paste, remove_occluded
from minedet.data.transforms import Compose
from minedet.errors import MinedetError
from minedet.io import write_text_atomic
from minedet.methods.mean_teacher import MeanTeacher, MeanTeacherOptions, carry, drop_regression
from minedet.methods.base import prefixed
from minedet.models.detector import DetectorAdapter
from minedet.pseudo import filters as pf
from minedet.pseudo.quality import QualityCounts
from minedet.structures import Target

BANKS = ("labelled", "pseudo", "both")


@dataclass
class AcrstOptions(MeanTeacherOptions):
    """Mean Teacher's options plus:

    fbr: paste CropBank crops into strong views (FBR); affr: class-adaptive sampling (AFFR);
    beta: AFFR exponent (Eq. 9); pr_thresh: score threshold of Pseudo Recall (Eq. 8);
    bank: labelled | pseudo | both; n_min / n_max: crops per image (Table 5);
    paste_on: unlabelled | both (which streams' strong views get pastes);
    refresh_every: steps between pseudo-bank / AFFR refreshes;
    crop_scale / crop_flip / crop_color: crop augmentation; occlusion: covered share that removes
    an instance; two_stage: the multi-label veto (stage two); tau_ml: its threshold;
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
    two_stage: bool = True
    tau_ml: float = 0.2
    mining_pos: float = 0.7
    multilabel: dict = field(default_factory=dict)
    multilabel_checkpoint: str = ""
    selective_supervision: bool = True


class Acrst(MeanTeacher):
    """Mean Teacher + CropBank / FBR / AFFR + two-stage filtering + selective supervision.

    Args:
        detector: the student.
        options: :class:`AcrstOptions`.
        classifier: an SSMLL classifier to use for stage two (tests, library use) instead of
            training or loading one.
    """

    name = "acrst"

    def __init__(self, detector: DetectorAdapter, options: AcrstOptions | None = None, *, classifier=None) -> None:
        o = options or AcrstOptions()
        super().__init__(detector, o)
        self.options: AcrstOptions = o
        if o.bank not in BANKS:
            raise MinedetError(f"method.bank must be one of {', '.join(BANKS)}, got {o.bank!r}")
        if o.paste_on not in ("unlabelled", "both"):
            raise MinedetError(f"method.paste_on must be unlabelled or both, got {o.paste_on!r}")
        if not 0 <= o.n_min <= o.n_max:
            raise MinedetError(f"method.n_min / n_max must satisfy 0 <= n_min <= n_max, got {o.n_min} / {o.n_max}")
        if o.beta < 0:
            raise MinedetError(f"method.beta must be >= 0, got {o.beta}")
        if o.refresh_every < 1:
            raise MinedetError(f"method.refresh_every must be >= 1, got {o.refresh_every}")
        if len(o.crop_scale) != 2 or not 0 < o.crop_scale[0] <= o.crop_scale[1]:
            raise MinedetError(f"method.crop_scale must be [lo, hi] with 0 < lo <= hi, got {o.crop_scale}")
        self._classifier = (classifier,)  # a tuple: not a submodule, not in the state
        k = detector.num_classes
        self.labelled_bank = CropBank(k)
        self.pseudo_bank = CropBank(k)
        self.pr_window = torch.zeros(k, dtype=torch.float64)  # Eq. 8, summed since the last refresh
        self.pr_last = torch.zeros(k, dtype=torch.float64)
        self.class_probs = torch.full((k,), 1.0 / k)
        self.version = 0
        self.image_probs: dict[int, Tensor] = {}
        self.variants = {"single": QualityCounts(), "two_stage": QualityCounts(), "mining": QualityCounts()}
        self._index_of: dict[int, int] = {}
        self._bank_dir: Path | None = None
        self.multilabel_quality: dict | None = None

    # ------------------------------------------------------------------ wiring
    @property
    def affr_beta(self) -> float:
        return self.options.beta if self.options.affr else 0.0

    @property
    def bank_path(self) -> Path:
        if self._bank_dir is None:
            self._bank_dir = Path(tempfile.mkdtemp(prefix="minedet-cropbank-"))
            atexit.register(shutil.rmtree, self._bank_dir, True)
        return self._bank_dir / "snapshot.pt"

    def bind(self, datasets: dict, out_dir: str | Path | None = None) -> None:
        super().bind(datasets, out_dir)
        o = self.options
        lab, unl = datasets.get("labelled"), datasets.get("unlabelled")
        if lab is None or unl is None:
            raise MinedetError("method acrst needs labelled and unlabelled data (data.train and data.unlabelled)")
        if lab.data.num_classes != self.detector.num_classes:
            raise MinedetError(f"the detector has {self.detector.num_classes} classes, the labelled data "
                               f"{lab.data.num_classes}", file=str(lab.data.path))
        self._index_of = {image_id: i for i, image_id in enumerate(unl.ids)}
        self.labelled_bank = CropBank.from_targets(self.detector.num_classes, 0,
                                                   ((i, lab.target(image_id)) for i, image_id in enumerate(lab.ids)))
        if o.fbr:
            paths = [[lab.image_root / im["file_name"] for im in lab.data.images],
                     [unl.image_root / im["file_name"] for im in unl.data.images]]
            paste = Paste(SnapshotReader(self.bank_path), paths, n_range=(o.n_min, o.n_max), scale=tuple(o.crop_scale),
                          flip=o.crop_flip, color=o.crop_color, occlusion=o.occlusion)
            for ds in ([lab, unl] if o.paste_on == "both" else [unl]):
                ds.views = {**ds.views, "strong": Compose([paste, *ds.views["strong"].transforms])}
            self.publish()
        if o.two_stage:
            self._prepare_multilabel(lab, unl)

    def _prepare_multilabel(self, lab, unl) -> None:
        from minedet.models.multilabel import (MultiLabelOptions, image_labels, image_probabilities, load_multilabel,
                                               negative_label_quality, save_multilabel, train_multilabel)
        from minedet.config import from_dict

        o = self.options
        clf = self._classifier[0]
        saved = None if self._out_dir is None else self._out_dir / "multilabel.pt"
        if clf is None and o.multilabel_checkpoint:
            clf = load_multilabel(o.multilabel_checkpoint)
        elif clf is None and saved is not None and saved.is_file():  # resumed run: the classifier is already trained
            clf = load_multilabel(saved)
        elif clf is None:
            mopts = from_dict(MultiLabelOptions, dict(o.multilabel), where="method.multilabel")
            clf = train_multilabel(lab, unl, self.detector.num_classes, mopts, progress=saved is not None, device=self._device())
            if saved is not None:
                saved.parent.mkdir(parents=True, exist_ok=True)
                save_multilabel(clf, saved)
        if getattr(clf, "num_classes", self.detector.num_classes) != self.detector.num_classes:
            raise MinedetError(f"the multi-label classifier has {clf.num_classes} classes, the detector "
                               f"{self.detector.num_classes}", file=o.multilabel_checkpoint or None)
        clf.to(self._device())
        self.image_probs = {int(k): v.float().cpu() for k, v in self._gather_probs(clf, unl).items()}
        if getattr(unl, "hidden", None) is not None:
            k = self.detector.num_classes
            truth = {i: image_labels(unl.hidden_target(i), k) for i in self.image_probs}
            self.multilabel_quality = negative_label_quality(self.image_probs, truth, o.tau_ml)
            for name, v in self.multilabel_quality.items():
                if isinstance(v, (int, float)) and v == v:
                    self.metrics[f"multilabel/{name}"] = float(v)
            if self._out_dir is not None:
                write_text_atomic(self._out_dir / "multilabel_quality.json", json.dumps(self.multilabel_quality, indent=2))

    def _device(self) -> torch.device:
        return next(self.detector.parameters()).device

    def _gather_probs(self, clf, unl) -> dict[int, Tensor]:
        from minedet.models.multilabel import image_probabilities

        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return image_probabilities(clf, unl, device=self._device())
        rank, world = dist.get_rank(), dist.get_world_size()
        mine = image_probabilities(clf, unl, device=self._device(), rank=rank, world=world)
        parts: list = [None] * world
        dist.all_gather_object(parts, {k: v.cpu() for k, v in mine.items()})
        return {k: v for p in parts for k, v in p.items()}

    # ------------------------------------------------------------------ CropBank / AFFR
    def banks(self) -> list[CropBank]:
        return {"labelled": [self.labelled_bank], "pseudo": [self.pseudo_bank],
                "both": [self.labelled_bank, self.pseudo_bank]}[self.options.bank]

    def refresh(self) -> None:
        """End of a refresh window: PR summed over ranks (Eq. 8) -> mu (Eq. 9); publish the bank."""
        pr = self.pr_window.clone()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(pr)
        if pr.sum() > 0:
            self.pr_last = pr
            self.class_probs = class_probabilities(pr, self.affr_beta).float()
        self.pr_window.zero_()
        if self.options.fbr:
            self.publish()

    def publish(self) -> None:
        bank = union(*self.banks())
        self.version += 1
        publish(bank.snapshot(self.class_probs, self.version), self.bank_path)
        self.metrics.update({"bank/labelled": len(self.labelled_bank), "bank/pseudo": len(self.pseudo_bank),
                             "bank/bytes": bank.nbytes()})

    # ------------------------------------------------------------------ two-stage filtering
    @torch.no_grad()
    def pseudo_labels(self, weak_views: list) -> list[Target]:
        """Stage one (score > tau, NMS) and, with ``two_stage``, stage two (the image-level veto),
        on the teacher's weak-view detections; records Pseudo Recall and the pseudo bank."""
        o = self.options
        self.teacher.eval()
        low = min(o.pr_thresh, o.tau)
        dets = [d.detach() for d in self.teacher.predict(self.images(weak_views), score_thresh=low, nms_thresh=o.nms,
                                                         detections_per_img=o.max_dets)]
        self.pr_window += pseudo_recall(dets, self.detector.num_classes, o.pr_thresh).double().cpu()
        stage1 = [pf.by_score(d, o.tau) for d in dets]
        if o.nms is not None:
            stage1 = [pf.nms(t, o.nms) for t in stage1]
        self._dets, self._stage1 = dets, stage1
        if not o.two_stage:
            return [pf.as_pseudo(t, regress=False) for t in stage1]
        ids = [v.target.image_id for v in weak_views]
        return [pf.as_pseudo(pf.multilabel_veto(t, self._probs(i), o.tau_ml), regress=False) for t, i in zip(stage1, ids)]

    def _probs(self, image_id: int) -> Tensor:
        p = self.image_probs.get(int(image_id))
        return torch.ones(self.detector.num_classes) if p is None else p  # an image never scored is not vetoed

    def unsup_targets(self, batch: dict, pseudo: list[Target]) -> list[Target]:
        """Pseudo-labels carried into each strong view, minus those hidden by a paste, plus the
        pasted instances (which regress under selective supervision)."""
        views = batch["unlabelled"]["views"]
        out = []
        for p, w, s in zip(pseudo, views["weak"], views["strong"]):
            carried = carry(p, w.map, s.map)
            pasted = s.target.select(s.target.flag("pasted"))
            if len(pasted):
                carried = remove_occluded(carried, pasted.boxes.to(carried.boxes.device), self.options.occlusion)
            pasted = pasted.with_flags(pseudo=True, regress=self.options.selective_supervision)
            out.append(Target.cat([carried.to(s.image.device), pasted.to(s.image.device)]))
        return out

    def _sup_targets(self, views: list) -> list[Target]:
        """Labelled targets; pasted *pseudo* crops regress only under selective supervision."""
        if self.options.selective_supervision:
            return self.targets(views)
        out = []
        for v in views:
            t = v.target
            out.append(t.with_flags(regress=t.flag("regress") & ~(t.flag("pasted") & t.flag("pseudo"))))
        return out

    def unsupervised_loss(self, out, targets: list[Target]) -> dict[str, Tensor]:
        losses = self.detector.loss(out, targets)
        if not self.options.selective_supervision:
            losses = drop_regression(losses, self.detector.kind)
        return prefixed(losses, "unsup", self.options.lambda_unsup)

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: dict) -> dict[str, Tensor]:
        lab = batch["labelled"]["views"]
        sup_views = [v for name in self._sup_view_names() for v in lab[name]]
        if not self.teacher_active:
            out = self.detector.forward_heads(self.images(sup_views))
            self._last = {}
            return self.supervised_loss(out, self._sup_targets(sup_views))
        unl = batch["unlabelled"]["views"]
        pseudo = self.pseudo_labels(unl["weak"])
        self._measure(batch, pseudo)
        self._update_pseudo_bank(batch, pseudo)
        targets_u = self.unsup_targets(batch, pseudo)
        n = len(sup_views)
        out = self.detector.forward_heads(self.images(sup_views) + self.images(unl["strong"]))
        losses = self.supervised_loss(out.take(slice(0, n)), self._sup_targets(sup_views))
        losses.update(self.unsupervised_loss(out.take(slice(n, None)), targets_u))
        self._last = {"pseudo": pseudo, "unsup_targets": targets_u}
        return losses

    def _update_pseudo_bank(self, batch: dict, pseudo: list[Target]) -> None:
        """The latest pseudo-labels of each unlabelled image, in file pixels, replace its records."""
        for image_id, p, w in zip(batch["unlabelled"]["image_id"], pseudo, batch["unlabelled"]["views"]["weak"]):
            index = self._index_of.get(int(image_id))
            if index is None:
                continue
            t = p.detach().to("cpu")
            t = t.with_boxes(w.map.inverse().apply(t.boxes))
            self.pseudo_bank.set_image(1, index, t)

    def after_step(self, step: int) -> None:
        super().after_step(step)
        if step > self.options.burn_in and (step - self.options.burn_in) % self.options.refresh_every == 0:
            self.refresh()

    # ------------------------------------------------------------------ measurement
    def _measure(self, batch: dict, pseudo: list[Target]) -> None:
        super()._measure(batch, pseudo)
        ds = self._datasets.get("unlabelled")
        if ds is None or getattr(ds, "hidden", None) is None:
            return
        o = self.options
        ids = batch["unlabelled"]["image_id"]
        for image_id, d, s1, v in zip(ids, self._dets, self._stage1, batch["unlabelled"]["views"]["weak"]):
            hidden = ds.hidden_target(image_id)
            hidden = hidden.with_boxes(v.map.apply(hidden.boxes))
            probs = self._probs(image_id)
            d, s1 = d.to("cpu"), s1.to("cpu")
            self.variants["single"].add(s1, hidden)
            self.variants["two_stage"].add(pf.multilabel_veto(s1, probs, o.tau_ml), hidden)
            if len(d):
                positive = (d.scores >= o.tau) | (probs[d.labels] >= o.mining_pos)  # Table 10 "two-stage mining"
                self.variants["mining"].add(d.select(positive), hidden)
            else:
                self.variants["mining"].add(d, hidden)
        for name, q in self.variants.items():
            self.metrics.update(q.as_dict(prefix=f"quality_{name}/"))

    def log_metrics(self) -> dict[str, float]:
        m = super().log_metrics()
        for k, v in enumerate(self.class_probs.tolist()):
            m[f"affr/mu_{k}"] = v
        return m

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "pseudo_bank": self.pseudo_bank.state_dict(), "pr_window": self.pr_window,
                "pr_last": self.pr_last, "class_probs": self.class_probs, "version": self.version}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        if "pseudo_bank" in state:
            self.pseudo_bank.load_state_dict(state["pseudo_bank"])
            self.pr_window = state["pr_window"].clone()
            self.pr_last = state["pr_last"].clone()
            self.class_probs = state["class_probs"].clone()
            self.version = int(state["version"]) - 1
            if self.options.fbr and self._index_of:
                self.publish()
