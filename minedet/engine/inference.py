"""Run a detector over a dataset (sharded over DDP ranks, gathered) and score it with pycocotools."""

from __future__ import annotations

import sys
from typing import Sequence

import torch
import torch.distributed as dist

from minedet.data.datasets import DetectionDataset
from minedet.engine.evaluate import EvalReport, coco_results, evaluate_detections
from minedet.engine.dist import DistInfo
from minedet.models.detector import DetectorAdapter
from minedet.structures import Target


@torch.no_grad()
def predict_dataset(
    detector: DetectorAdapter,
    dataset: DetectionDataset,
    *,
    batch_size: int = 8,
    info: DistInfo | None = None,
    progress: bool = False,
    indices: Sequence[int] | None = None,
    **decode_kw,
) -> list[tuple[int, Target]]:
    """Detections for every image of ``dataset`` (view ``"o"``, boxes in file-image pixels).

    Under DDP each rank predicts every world-th image and the results are gathered on all ranks.
    """
    info = info or DistInfo()
    was = detector.training
    detector.eval()
    idx = list(range(len(dataset))) if indices is None else list(indices)
    mine = idx[info.rank :: info.world]
    out: list[tuple[int, Target]] = []
    bar = None
    if progress and info.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc="eval", unit="img", leave=False, file=sys.stderr)
    for start in range(0, len(mine), batch_size):
        samples = [dataset[i] for i in mine[start : start + batch_size]]
        images = [s["views"]["o"].image.to(info.device) for s in samples]
        dets = detector.predict(images, **decode_kw)
        for s, d in zip(samples, dets):
            # map back through the base transform (identity unless the dataset resizes)
            m = s["views"]["o"].map
            boxes = m.inverse(s["orig_size"]).apply(d.boxes.cpu()) if (m.sx, m.sy, m.tx, m.ty) != (1.0, 1.0, 0.0, 0.0) else d.boxes.cpu()
            out.append((s["image_id"], Target(boxes, d.labels.cpu(), d.scores.cpu(), image_id=s["image_id"])))
        if bar is not None:
            bar.update(len(samples))
    if bar is not None:
        bar.close()
    if info.world > 1:
        parts: list = [None] * info.world
        dist.all_gather_object(parts, out)
        out = [x for p in parts for x in p]
    detector.train(was)
    return out


def evaluate_detector(
    detector: DetectorAdapter,
    dataset: DetectionDataset,
    *,
    batch_size: int = 8,
    info: DistInfo | None = None,
    progress: bool = False,
) -> EvalReport:
    """pycocotools AP of ``detector`` on ``dataset`` (its COCO JSON is the ground truth)."""
    dets = predict_dataset(detector, dataset, batch_size=batch_size, info=info, progress=progress)
    data = dataset.data
    results = coco_results(dets, data.cat_ids)
    return evaluate_detections(data.raw, results, image_ids=dataset.ids, class_names=data.class_names)
