"""STAC (Sohn et al., 2020, "A Simple Semi-Supervised Learning Framework for Object Detection").

STAC is offline self-training: (1) train a detector on the labelled images; (2) run it **once**
over the unlabelled images and keep detections with score > 0.9 (after NMS) as pseudo-labels;
(3) train a detector on labelled + pseudo-labelled images with strong augmentation (colour,
geometric, cutout), ``L = L_sup + lambda_u * L_unsup`` with classification *and* regression terms
on pseudo boxes.

In minedet's one training loop step (1) is a separate run and steps (2)-(3) are this method
(the full recipe on digits is in ``minedet/configs/digits_stac.yaml``)::

    minedet train digits_retinanet --out runs/sup data.train=LABELLED.json ...
    minedet train digits_stac method.teacher=runs/sup/model.pt

(``method.teacher`` is the exported ``model.pt`` of the supervised run, required; the data
section is the same as Mean Teacher's: ``data.unlabelled``, optionally ``data.hidden``.)

:meth:`Stac.bind` runs the teacher over the whole unlabelled dataset once (no flip, no views:
boxes in file-image pixels), keeps the pseudo-labels in memory keyed by image id and then drops
the teacher. Each training step maps an image's stored pseudo-labels into its strong view through
the view's ``BoxMap`` (the map from the file image to the view). On resume the pseudo-labels are
derived again from the same teacher file (deterministic), so checkpoints do not carry them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from minedet.data.datasets import DetectionDataset
from minedet.data.transforms import BoxMap, Compose, RandomScaleCrop, view_transform
from minedet.errors import MinedetError
from minedet.methods.base import Method, prefixed
from minedet.methods.mean_teacher import carry, drop_regression
from minedet.models.detector import DetectorAdapter
from minedet.pseudo import filters as pf
from minedet.pseudo.quality import QualityCounts
from minedet.structures import Target


@dataclass
class StacOptions:
    """teacher: path to the exported model.pt of a supervised run (required);
    tau: pseudo-label score threshold (0.9); nms: class-wise NMS IoU (None: the teacher's own);
    max_dets: pseudo boxes per image; lambda_unsup: weight of the unlabelled loss (STAC: 2);
    unsup_regression: pseudo boxes supervise box regression too (STAC: yes);
    strong_view: photometric strong view; geometric: add random scale+crop (STAC: yes);
    label_batch_size: images per teacher forward when pseudo-labelling."""

    teacher: str = ""
    tau: float = 0.9
    nms: float | None = None
    max_dets: int = 100
    lambda_unsup: float = 2.0
    unsup_regression: bool = True
    strong_view: str = "strong"
    geometric: bool = True
    label_batch_size: int = 8


class Stac(Method):
    """Supervised + fixed pseudo-labels under strong augmentation.

    Args:
        detector: the student (trained from its initial weights).
        options: :class:`StacOptions`.
        teacher: a detector to pseudo-label with instead of loading ``options.teacher``
            (tests, library use).
    """

    name = "stac"

    def __init__(self, detector: DetectorAdapter, options: StacOptions | None = None, *,
                 teacher: DetectorAdapter | None = None) -> None:
        super().__init__(detector)
        self.options = o = options or StacOptions()
        if teacher is None:
            if not o.teacher:
                raise MinedetError("method stac needs method.teacher=PATH/model.pt (the exported model of a "
                                   "supervised run: minedet train ... --out RUN, then method.teacher=RUN/model.pt)")
            if not Path(o.teacher).is_file():
                raise MinedetError("teacher model file not found (method.teacher)", file=o.teacher)
        try:
            strong = view_transform(o.strong_view)
        except ValueError as e:
            raise MinedetError(f"method.strong_view: {e}") from None
        self._strong = Compose([RandomScaleCrop(), *strong.transforms]) if o.geometric else strong
        self._given = (teacher,)  # a tuple: not registered as a submodule (not part of the state)
        self.pseudo: dict[int, Target] = {}
        self.quality = QualityCounts()
        self.labelled_once = False

    def streams(self) -> dict[str, dict[str, Compose]]:
        return {"labelled": {"strong": self._strong}, "unlabelled": {"strong": self._strong}}

    # ------------------------------------------------------------------ pseudo-labelling, once
    def _load_teacher(self) -> DetectorAdapter:
        if self._given[0] is not None:
            return self._given[0]
        from minedet.engine.checkpoint import load_model

        det, _ = load_model(self.options.teacher)
        if det.num_classes != self.detector.num_classes:
            raise MinedetError(f"teacher has {det.num_classes} classes, the training data has "
                               f"{self.detector.num_classes}", file=self.options.teacher)
        names_t = list(getattr(det.spec, "class_names", []) or [])
        names_s = list(getattr(self.detector.spec, "class_names", []) or [])
        if names_t and names_s and names_t != names_s:
            raise MinedetError("teacher was trained on other class names than the training data",
                               file=self.options.teacher)
        return det

    @staticmethod
    def _labelling_info():
        """Where to pseudo-label: the GPU this process uses if there is one; sharded under DDP."""
        import torch.distributed as dist

        from minedet.engine.trainer import DistInfo

        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        if dist.is_available() and dist.is_initialized():
            return DistInfo(dist.get_rank(), dist.get_world_size(), device.index or 0, device)
        return DistInfo(device=device)

    @torch.no_grad()
    def detect(self, dataset: DetectionDataset, score_thresh: float) -> list[tuple[int, Target]]:
        """The teacher's detections (score > ``score_thresh``) on every image of ``dataset``, boxes
        xyxy in file-image pixels, as ``(image id, Target)`` pairs."""
        from minedet.engine.inference import predict_dataset

        o = self.options
        plain = DetectionDataset(dataset.data, dataset.image_root, views={"o": Compose([])}, seed=dataset.seed,
                                 with_targets=False, skip_bad_images=dataset.skip_bad_images)
        teacher = self._load_teacher()
        info = self._labelling_info()
        was_device = next(teacher.parameters()).device
        teacher.to(info.device)
        dets = predict_dataset(teacher, plain, batch_size=o.label_batch_size, info=info,
                               score_thresh=score_thresh, nms_thresh=o.nms, detections_per_img=o.max_dets)
        teacher.to(was_device)
        return [(int(i), t) for i, t in dets]

    def label(self, dataset: DetectionDataset) -> dict[int, Target]:
        """Pseudo-labels for every image of ``dataset`` (boxes xyxy in file-image pixels), keyed by
        image id: teacher detections with score > tau after class-wise NMS, at most ``max_dets``."""
        o = self.options
        keep = pf.compose(lambda t: pf.by_score(t, o.tau), *([lambda t: pf.nms(t, o.nms)] if o.nms is not None else []))
        return {i: pf.as_pseudo(keep(t), regress=o.unsup_regression) for i, t in self.detect(dataset, o.tau)}

    def bind(self, datasets: dict, out_dir: str | Path | None = None) -> None:
        ds = datasets.get("unlabelled")
        if ds is None:
            raise MinedetError("method stac needs data.unlabelled (a COCO JSON of unlabelled images)")
        self.pseudo = self.label(ds)
        self.labelled_once = True
        self._given = (None,)  # the teacher is not needed any more
        n = sum(len(t) for t in self.pseudo.values())
        self.metrics["pseudo/boxes_per_image"] = n / max(1, len(self.pseudo))
        if getattr(ds, "hidden", None) is not None:
            for image_id, t in self.pseudo.items():
                self.quality.add(t, ds.hidden_target(image_id))
            self.metrics.update(self.quality.as_dict(prefix="quality/"))

    # ------------------------------------------------------------------ the step
    def unsup_targets(self, batch: dict) -> list[Target]:
        """The stored pseudo-labels of each unlabelled image, mapped into its strong view."""
        u = batch["unlabelled"]
        identity = BoxMap()
        out = []
        for image_id, v in zip(u["image_id"], u["views"]["strong"]):
            t = self.pseudo.get(int(image_id))
            if t is None:
                t = pf.as_pseudo(Target.empty(int(image_id)), regress=self.options.unsup_regression)
            out.append(carry(t, identity, v.map).to(v.image.device))
        return out

    def training_step(self, batch: dict) -> dict[str, Tensor]:
        if not self.labelled_once:
            raise RuntimeError("Stac.bind(datasets) must run before training (it makes the pseudo-labels)")
        lab = batch["labelled"]["views"]["strong"]
        unl = batch["unlabelled"]["views"]["strong"]
        targets_u = self.unsup_targets(batch)
        n = len(lab)
        out = self.detector.forward_heads(self.images(lab) + self.images(unl))
        losses = prefixed(self.detector.loss(out.take(slice(0, n)), self.sup_targets(lab)), "sup")
        losses.update(self.unsupervised_loss(out.take(slice(n, None)), targets_u))
        return losses

    def sup_targets(self, views: list) -> list[Target]:
        return self.targets(views)

    def unsupervised_loss(self, out, targets: list[Target]) -> dict[str, Tensor]:
        unsup = self.detector.loss(out, targets)
        if not self.options.unsup_regression:
            unsup = drop_regression(unsup, self.detector.kind)
        return prefixed(unsup, "unsup", self.options.lambda_unsup)
