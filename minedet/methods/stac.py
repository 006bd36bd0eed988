"""STAC (Sohn et al., 2020, "A Simple Semi-Supervised Learning Framework for Object Detection"):
the fixed-teacher configuration of :class:`~minedet.methods.self_training.SelfTraining`.

STAC is offline self-training: (1) train a detector on the labelled images; (2) run it **once**
over the unlabelled images and keep detections with score > 0.9 (after NMS) as pseudo-labels;
(3) train a detector on labelled + pseudo-labelled images with strong augmentation (colour,
geometric, cutout), ``L = L_sup + lambda_u * L_unsup`` with classification *and* regression terms
on pseudo boxes.

In minedet's one training loop step (1) is a separate run and steps (2)-(3) are this method
(the full recipe on digits is in ``minedet/configs/digits_stac.yaml``)::

    minedet train digits_retinanet --out runs/sup data.train=LABELLED.json ...
    minedet train digits_stac method.teacher=runs/sup/model.pt

:class:`Stac` loads the teacher file when it is built (:func:`load_teacher`); :meth:`Stac.bind` runs it over the whole unlabelled dataset once (no flip, no views:
boxes in file-image pixels), splits the detections by the template's rule and fills the source, a
:class:`FixedTable` keyed by image id; the teacher is dropped. Each training step carries an image's stored
pseudo-labels into its strong view. On resume the table is made again from the same teacher file
(deterministic), so checkpoints do not carry it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from minedet.data.datasets import DetectionDataset
from minedet.data.transforms import BoxMap, Compose
from minedet.engine.dist import labelling_info
from minedet.errors import MinedetError
from minedet.methods.self_training import (Group, Mined, SelfTraining, SelfTrainingOptions, StepInput, StepRecord,
                                           TeacherSource, split_labels)
from minedet.models.detector import DetectorAdapter
from minedet.pseudo import filters as pf
from minedet.pseudo.semantics import PseudoLabels
from minedet.structures import Target


@dataclass
class StacOptions(SelfTrainingOptions):
    """teacher: path to the exported model.pt of a supervised run (required); tau 0.9;
    lambda_unsup 2; pseudo boxes regress (STAC: yes); geometric strong view (STAC: yes);
    label_batch_size: images per teacher forward when pseudo-labelling."""

    teacher: str = ""
    tau: float = 0.9
    lambda_unsup: float = 2.0
    unsup_regression: bool = True
    geometric: bool = True
    label_batch_size: int = 8


def load_teacher(path: str, detector: DetectorAdapter) -> DetectorAdapter:
    """The exported supervised model STAC labels with, checked against the student's classes (one-line errors)."""
    from minedet.engine.checkpoint import load_model

    if not path:
        raise MinedetError("method stac needs method.teacher=PATH/model.pt (the exported model of a "
                           "supervised run: minedet train ... --out RUN, then method.teacher=RUN/model.pt)")
    if not Path(path).is_file():
        raise MinedetError("teacher model file not found (method.teacher)", file=path)
    det, _ = load_model(path)
    if det.num_classes != detector.num_classes:
        raise MinedetError(f"teacher has {det.num_classes} classes, the training data has {detector.num_classes}",
                           file=path)
    names_t = list(getattr(det.spec, "class_names", []) or [])
    names_s = list(getattr(detector.spec, "class_names", []) or [])
    if names_t and names_s and names_t != names_s:
        raise MinedetError("teacher was trained on other class names than the training data", file=path)
    return det


class FixedTable(TeacherSource):
    """Pseudo-labels filled once before training (file-image frame), read back per step; not counted again."""

    def __init__(self, regress: bool) -> None:
        super().__init__()
        self.regress = regress
        self.confident: dict[int, Target] = {}
        self.ignored: dict[int, Target] = {}
        self.filled = False

    def fill(self, labels: PseudoLabels) -> None:
        ids = [d.image_id for d in labels.detections]
        self.confident = dict(zip(ids, labels.confident))
        self.ignored = dict(zip(ids, labels.ignored)) if labels.ignored is not None else {}
        self.filled = True

    def ready(self, steps_done: int) -> bool:
        if not self.filled:
            raise RuntimeError("Stac.bind(datasets) must run before training (it makes the pseudo-labels)")
        return True

    def mine(self, inp: StepInput) -> list[Mined]:
        ids = [int(i) for i in inp.batch["unlabelled"].image_ids]
        empty = [pf.as_pseudo(Target.empty(i), regress=self.regress) for i in ids]
        confident = [self.confident.get(i, e) for i, e in zip(ids, empty)]
        ignored = [self.ignored.get(i, Target.empty(i)) for i in ids] if self.ignored else None
        known = [Target.empty(i) for i in ids]
        return [Mined("teacher", "unlabelled", tuple(ids), [BoxMap()] * len(ids), known, confident,
                      PseudoLabels(confident, confident, ignored), fresh=False)]


class Stac(SelfTraining):
    """Supervised + fixed pseudo-labels under strong augmentation.

    Args:
        detector: the student (trained from its initial weights).
        options: :class:`StacOptions`.
        teacher: a detector to pseudo-label with instead of loading ``options.teacher``
            (tests, library use).
        parts: ACRST's parts (Table 7: STAC + ACRST), none by default.
    """

    name = "stac"

    def __init__(self, detector: DetectorAdapter, options: StacOptions | None = None, *,
                 teacher: DetectorAdapter | None = None, parts=()) -> None:
        o = options or StacOptions()
        if o.adaptive:
            raise MinedetError("method.adaptive applies to mean_teacher, acrst and co_mining (STAC labels once, before "
                               "any labelled box is seen by its teacher)")
        super().__init__(detector, o, FixedTable(o.unsup_regression), parts=parts)
        self.options: StacOptions = o
        # loaded now, not when the data arrives: a wrong file fails before any data is read.
        # A tuple: not registered as a submodule (not part of the state); dropped after the labelling pass.
        self._given = (teacher if teacher is not None else load_teacher(o.teacher, detector),)

    def streams(self) -> dict[str, dict[str, Compose]]:
        return {"labelled": {"strong": self.student_view("labelled")},
                "unlabelled": {"strong": self.student_view("unlabelled")}}

    def groups(self, batch: dict) -> tuple[Group, ...]:
        return (Group("labelled", ("strong",), "sup"),
                Group("unlabelled", ("strong",), "unsup", self.options.lambda_unsup, source="teacher"))

    # ------------------------------------------------------------------ pseudo-labelling, once
    @torch.no_grad()
    def detect(self, dataset: DetectionDataset, score_thresh: float) -> list[tuple[int, Target]]:
        """The teacher's detections (score > ``score_thresh``) on every image of ``dataset``, boxes
        xyxy in file-image pixels, as ``(image id, Target)`` pairs."""
        from minedet.engine.inference import predict_dataset

        o = self.options
        plain = DetectionDataset(dataset.data, dataset.image_root, views={"o": Compose([])}, seed=dataset.seed,
                                 with_targets=False, skip_bad_images=dataset.skip_bad_images)
        teacher = self._given[0]
        if teacher is None:
            raise RuntimeError("STAC labels once: its teacher was dropped after the labelling pass")
        info = labelling_info()
        was_device = next(teacher.parameters()).device
        teacher.to(info.device)
        dets = predict_dataset(teacher, plain, batch_size=o.label_batch_size, info=info,
                               score_thresh=score_thresh, nms_thresh=o.nms, detections_per_img=o.max_dets)
        teacher.to(was_device)
        return [(int(i), t) for i, t in dets]

    def labels_wait(self) -> bool:
        """Whether the one labelling pass waits for a pre-stage (STAC + ACRST's classifier)."""
        return False

    def bind(self, datasets: dict, out_dir: str | Path | None = None) -> None:
        if datasets.get("unlabelled") is None:
            raise MinedetError("method stac needs data.unlabelled (a COCO JSON of unlabelled images)")
        super().bind(datasets, out_dir)
        if not self.labels_wait():
            self.label_once()

    def label_once(self) -> StepRecord:
        """The one labelling pass over the unlabelled images: the rule over the teacher's detections (file pixels),
        stored in the source and handed once to the parts and hooks (measured; banked with ACRST's parts). Run by
        :meth:`bind`, or after the pre-stage that trains stage two's classifier."""
        ds = self.datasets["unlabelled"]
        pairs = self.detect(ds, self.floor)
        ids = [i for i, _ in pairs]
        raw = [d for _, d in pairs]
        known = [Target.empty(i) for i in ids]
        inp = StepInput({}, (), {}, self.rule, self.keep, self.datasets, self.floor)
        _, labels = split_labels(inp, raw, known, [Target.empty(i) for i in ids], ids)
        self.source.fill(labels)
        self._given = (None,)  # the teacher is not needed any more
        record = StepRecord((Mined("teacher", "unlabelled", tuple(ids), [BoxMap()] * len(ids), known, raw, labels),))
        self.observe(record)
        return record
