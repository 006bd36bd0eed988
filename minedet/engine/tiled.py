"""Tiled prediction: run a detector on the tiles of a big image and merge the detections back.

The grid, the frames and the seam rules are :mod:`minedet.data.tiles`'. Tiles go through the
detector in batches exactly as any image would (the detector's own resize applies to each tile, so
train on tiles of the same size, e.g. from ``minedet data tile``, with ``data.image_size`` = the tile
size); detections come back in tile pixels, are shifted into the big image's pixels, truncated boxes
seen whole by a neighbouring tile are dropped, and class-wise NMS removes the duplicates in the
overlaps.
"""

from __future__ import annotations

import sys

import torch

from minedet.data.tiles import Tile, check_tiling, merge_tile_detections, tile_grid
from minedet.structures import Target

__all__ = ["default_overlap", "predict_tiled"]


def default_overlap(size: int) -> int:
    """The overlap used when none is given: a quarter of the tile size."""
    return max(0, int(size) // 4)


@torch.no_grad()
def predict_tiled(
    detector,
    image: torch.Tensor,
    size: int,
    overlap: int | None = None,
    *,
    batch_size: int = 8,
    nms: float = 0.5,
    slack: float = 8.0,
    cover: float = 0.7,
    progress: bool = False,
    desc: str = "tiles",
    image_id: int = -1,
    **decode_kw,
) -> Target:
    """Detections on a big image, predicted tile by tile.

    Args:
        detector: anything with ``predict(list of float[3, h, w]) -> list[Target]`` (boxes xyxy in
            the pixels of each input image, with scores), e.g. a
            :class:`~minedet.models.detector.DetectorAdapter`; run in eval mode (mode restored).
        image: float[3, H, W] in [0, 1] (or uint8), the big image; tiles are sent to the device of
            the detector's parameters (CPU for a parameterless detector).
        size, overlap: the tile grid (:func:`~minedet.data.tiles.tile_grid`); ``overlap`` defaults
            to :func:`default_overlap`. Choose it larger than the objects.
        batch_size: tiles per forward pass.
        nms, slack, cover: the seam rules (:func:`~minedet.data.tiles.merge_tile_detections`).
        progress: a tqdm bar (tiles) on stderr.
        decode_kw: passed to ``detector.predict`` for every tile (``score_thresh``, ``nms_thresh``,
            ``detections_per_img`` — the latter per tile).

    Returns:
        a Target of boxes xyxy in **big-image** pixels, labels, scores, sorted by descending score.
    """
    overlap = default_overlap(size) if overlap is None else overlap
    size, overlap = check_tiling(size, overlap)
    if image.ndim != 3:
        raise ValueError(f"image must be [C, H, W], got {tuple(image.shape)}")
    H, W = int(image.shape[-2]), int(image.shape[-1])
    tiles = tile_grid(W, H, size, overlap, source=image_id)
    param = next(iter(detector.parameters()), None) if hasattr(detector, "parameters") else None
    device = param.device if param is not None else torch.device("cpu")
    was = getattr(detector, "training", False)
    if hasattr(detector, "eval"):
        detector.eval()
    parts: list[tuple[Tile, Target]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tiles), desc=desc, unit="tile", leave=False, file=sys.stderr)
    try:
        for start in range(0, len(tiles), batch_size):
            chunk = tiles[start:start + batch_size]
            crops = []
            for t in chunk:
                c = image[:, t.y:t.y + t.height, t.x:t.x + t.width]
                c = c.float().div(255.0) if c.dtype == torch.uint8 else c
                crops.append(c.to(device))
            dets = detector.predict(crops, **decode_kw)
            parts += [(t, d.to("cpu")) for t, d in zip(chunk, dets)]
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        if hasattr(detector, "train"):
            detector.train(was)
    return merge_tile_detections(parts, nms=nms, slack=slack, cover=cover, image_id=image_id)


def evaluate_tiled(detector, dataset, size: int, overlap: int | None = None, *, batch_size: int = 8,
                   progress: bool = False):
    """pycocotools AP of ``detector`` on the big images of ``dataset`` (a
    :class:`~minedet.data.datasets.DetectionDataset`, its COCO JSON the ground truth), each predicted tile by tile
    with :func:`predict_tiled` (score > 0.05, as the untiled evaluation) in its own pixels."""
    from minedet.engine.evaluate import coco_results, evaluate_detections

    data = dataset.data
    dets = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(dataset), desc="images", unit="image", file=sys.stderr)
    with torch.no_grad():
        for index, image_id in enumerate(dataset.ids):
            dets.append((image_id, predict_tiled(detector, dataset.load(index), size, overlap, batch_size=batch_size,
                                                 image_id=image_id, score_thresh=0.05)))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return evaluate_detections(data.raw, coco_results(dets, data.cat_ids), image_ids=dataset.ids,
                               class_names=data.class_names)
