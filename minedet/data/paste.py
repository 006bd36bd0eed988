"""Crop-paste of CropBank instances as a box-aware transform (ACRST FBR/AFFR, Eq. 6-7).

:class:`Paste` follows the :class:`~minedet.data.transforms.Transform` protocol: it takes an image
float[3, H, W] in [0, 1] and its :class:`~minedet.structures.Target` (boxes [x1, y1, x2, y2] in that
image's pixels), samples instance records from the latest published
:class:`~minedet.data.cropbank.BankSnapshot` (class-rebalanced, Eq. 9), cuts each instance out of
its file image, augments it and pastes it at a random place, and returns the mixed image with the
merged Target and an identity :class:`~minedet.data.transforms.BoxMap` (pasting moves no box).

Boxes carry no segmentation, so the paste mask (alpha in Eq. 6) is the whole crop rectangle.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from minedet.data.cropbank import SnapshotReader
from minedet.data.datasets import load_image
from minedet.data.transforms import BoxMap
from minedet.errors import MinedetError
from minedet.structures import Target


# ---------------------------------------------------------------------- occlusion
def _covered(box: np.ndarray, rects: np.ndarray) -> float:
    """Fraction of ``box`` (float64[4] xyxy) covered by the union of ``rects`` (float64[M, 4]).

    Exact for unions: the box region is cut into the cells of the grid made by every rectangle
    edge inside it, a boolean mask marks the cells under some rectangle, and their areas are summed
    (for integer rectangles the cells are blocks of whole pixels)."""
    x1, y1, x2, y2 = box
    area = (x2 - x1) * (y2 - y1)
    if not area > 0 or len(rects) == 0:
        return 0.0
    r = np.stack([np.maximum(rects[:, 0], x1), np.maximum(rects[:, 1], y1),
                  np.minimum(rects[:, 2], x2), np.minimum(rects[:, 3], y2)], 1)
    r = r[(r[:, 2] > r[:, 0]) & (r[:, 3] > r[:, 1])]
    if len(r) == 0:
        return 0.0
    xs = np.unique(np.r_[x1, x2, r[:, 0], r[:, 2]])
    ys = np.unique(np.r_[y1, y2, r[:, 1], r[:, 3]])
    mask = np.zeros((len(ys) - 1, len(xs) - 1), bool)
    ix = np.searchsorted(xs, r[:, 0::2])
    iy = np.searchsorted(ys, r[:, 1::2])
    for (a, b), (c, d) in zip(ix.tolist(), iy.tolist()):
        mask[c:d, a:b] = True
    if mask.all():
        return 1.0
    cells = np.diff(ys)[:, None] * np.diff(xs)[None, :]
    return float(cells[mask].sum() / area)


def covered_fraction(boxes: torch.Tensor, rects: torch.Tensor) -> torch.Tensor:
    """float64[N] (CPU): the fraction of each box's area covered by the union of ``rects``.

    Args:
        boxes: float[N, 4] xyxy; rects: float[M, 4] xyxy, same frame (image pixels).
    A box of zero area has coverage 0.
    """
    b = boxes.detach().cpu().double().numpy().reshape(-1, 4)
    r = rects.detach().cpu().double().numpy().reshape(-1, 4)
    return torch.tensor([_covered(x, r) for x in b], dtype=torch.float64)


def remove_occluded(target: Target, pasted: torch.Tensor, thresh: float = 0.9, ignore_from: float | None = None) -> Target:
    """``target`` without the boxes whose area is covered >= ``thresh`` by the union of ``pasted``
    (float[M, 4] xyxy rectangles pasted over the image, same frame as ``target.boxes``).
    ACRST Eq. 7: fully occluded instances are removed from the merged labels.

    ``ignore_from`` (beyond the paper; None: off): a box covered in ``[ignore_from, thresh)`` stays as an
    ignored box (``weight=0``, ``regress=False``): its label now names pixels that are mostly the
    pasted crop's, so it is taught neither as its class nor as background."""
    if len(target) == 0 or pasted.numel() == 0:
        return target
    return _occlusion_rule(target, covered_fraction(target.boxes, pasted), thresh, ignore_from)


def _occlusion_rule(target: Target, cover: torch.Tensor, thresh: float, ignore_from: float | None) -> Target:
    """Apply the occlusion rule to ``target`` given each box's covered share ``cover`` (float[N])."""
    cover = cover.to(target.boxes.device)
    if ignore_from is not None and ignore_from < thresh:
        hidden = (cover >= ignore_from) & (cover < thresh)
        if hidden.any():
            target = target.with_flags(weight=target.flag("weight").masked_fill(hidden, 0.0),
                                       regress=target.flag("regress") & ~hidden)
    return target.select(cover < thresh)


# ---------------------------------------------------------------------- the transform
def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


class Paste:
    """Paste N ~ U{n_min..n_max} CropBank instances into an image (ACRST FBR, Eq. 6-7).

    For each record drawn by ``snapshot.sample(N, g)`` (class-rebalanced, Eq. 9): the record's box
    (file pixels of its source image) is rounded to whole pixels and clipped, crops under
    ``min_size`` px are skipped; the crop is scaled by ``U[scale] * sqrt(H * W / (Hs * Ws))`` (current
    image area over source image area, so pasted objects keep the dataset's object scale after
    resizing) and shrunk to fit if larger than the image, flipped horizontally with probability
    ``flip``, its brightness and contrast jittered by factors in ``[1 - color, 1 + color]``, then
    pasted at a uniformly random position fully inside the image. The mask is the whole crop
    rectangle (boxes have no segmentation): ``x_mix = alpha * crop + (1 - alpha) * x`` (Eq. 6; the
    paper writes alpha on x_i, alpha being the binary mask of the crop).

    Labels (Eq. 7): each pasted instance is appended with its rectangle as box, its record's label,
    ``pasted=True`` and ``pseudo=(source == 1)``. Scores: if ``target.scores`` is None the merged
    target has no scores (the records' scores are dropped); otherwise pasted boxes carry their
    record's score (1.0 for ground truth).

    Occlusion rule: after all pastes, a box (original, or pasted earlier) whose area is covered
    >= ``occlusion`` by the union of the rectangles pasted *after* it is removed; with
    ``occlusion_ignore`` set, one covered in ``[occlusion_ignore, occlusion)`` is kept as an ignored
    box (:func:`remove_occluded`).

    Everything random comes from ``g``; the same generator state gives byte-identical output.
    Decoded source images are kept in an LRU cache of ``cache_images`` uint8 images (per process).

    Args:
        reader: where the current :class:`~minedet.data.cropbank.BankSnapshot` comes from.
        image_paths: per source (0 labelled, 1 unlabelled), per image index, the image file.
    """

    def __init__(self, reader: SnapshotReader, image_paths: Sequence[Sequence[str | Path]],
                 n_range: tuple[int, int] = (0, 10), scale: tuple[float, float] = (0.5, 1.5), flip: float = 0.0,
                 color: float = 0.2, occlusion: float = 0.9, min_size: float = 2.0, cache_images: int = 64,
                 occlusion_ignore: float | None = None) -> None:
        lo, hi = (int(v) for v in n_range)
        if not 0 <= lo <= hi:
            raise ValueError(f"n_range must satisfy 0 <= n_min <= n_max, got {n_range}")
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must satisfy 0 < lo <= hi, got {scale}")
        if not 0 <= flip <= 1:
            raise ValueError(f"flip must be in [0, 1], got {flip}")
        if not 0 <= color <= 1:
            raise ValueError(f"color must be in [0, 1], got {color}")
        if not 0 < occlusion <= 1:
            raise ValueError(f"occlusion must be in (0, 1], got {occlusion}")
        if cache_images < 0:
            raise ValueError(f"cache_images must be >= 0, got {cache_images}")
        self.reader = reader
        self.image_paths = [list(p) for p in image_paths]
        self.n_range = (lo, hi)
        self.scale = (float(scale[0]), float(scale[1]))
        self.flip = float(flip)
        self.color = float(color)
        if occlusion_ignore is not None and not 0 <= occlusion_ignore <= occlusion:
            raise ValueError(f"occlusion_ignore must be in [0, occlusion={occlusion}] or None, got {occlusion_ignore}")
        self.occlusion = float(occlusion)
        self.occlusion_ignore = None if occlusion_ignore is None else float(occlusion_ignore)
        self.min_size = float(min_size)
        self.cache_images = int(cache_images)
        self._cache: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self._bad: set[tuple[int, int]] = set()

    def set_sources(self, image_paths: Sequence[Sequence[str | Path]]) -> None:
        """Name the source images (per source, per image index) once the datasets exist; a run
        declares its Paste step with its views before the data is loaded."""
        self.image_paths = [list(p) for p in image_paths]
        self._cache.clear()
        self._bad.clear()

    def __getstate__(self) -> dict:  # DataLoader workers start with an empty cache
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        state["_bad"] = set()
        return state

    # ------------------------------------------------------------------ source images
    def _source_image(self, source: int, index: int) -> torch.Tensor | None:
        """uint8[3, Hs, Ws] of the file image, or None for a file that cannot be read (warned once)."""
        key = (source, index)
        img = self._cache.get(key)
        if img is not None:
            self._cache.move_to_end(key)
            return img
        if key in self._bad:
            return None
        if source >= len(self.image_paths) or index >= len(self.image_paths[source]):
            raise ValueError(f"bank record (source={source}, index={index}) names no image: "
                             f"image_paths has {[len(p) for p in self.image_paths]} images per source")
        try:
            img = load_image(Path(self.image_paths[source][index]))
        except MinedetError as e:
            self._bad.add(key)
            print(f"minedet: warning: {e}; its CropBank instances are not pasted", file=sys.stderr)
            return None
        img = img.mul_(255.0).round_().to(torch.uint8)  # exact: load_image gives k / 255
        if self.cache_images > 0:
            self._cache[key] = img
            while len(self._cache) > self.cache_images:
                self._cache.popitem(last=False)
        return img

    # ------------------------------------------------------------------ one paste
    def _paste_one(self, out: torch.Tensor, source: int, index: int, box: np.ndarray,
                   g: torch.Generator) -> tuple[int, int, int, int] | None:
        """Paste the crop of ``box`` (file pixels of image (source, index)) into ``out`` in place;
        the pasted rectangle (x1, y1, x2, y2) in ``out``'s pixels, or None if skipped."""
        img = self._source_image(source, index)
        if img is None:
            return None
        h, w = int(out.shape[-2]), int(out.shape[-1])
        hs, ws = int(img.shape[-2]), int(img.shape[-1])
        x1, x2 = (min(max(int(round(float(v))), 0), ws) for v in (box[0], box[2]))
        y1, y2 = (min(max(int(round(float(v))), 0), hs) for v in (box[1], box[3]))
        cw, ch = x2 - x1, y2 - y1
        if cw < self.min_size or ch < self.min_size:
            return None
        s = _uniform(g, *self.scale) * math.sqrt((h * w) / (hs * ws))
        do_flip = float(torch.rand((), generator=g)) < self.flip
        if self.color > 0:
            bright = _uniform(g, 1 - self.color, 1 + self.color)
            contrast = _uniform(g, 1 - self.color, 1 + self.color)
        s = min(s, h / ch, w / cw)  # shrink to fit the image
        nh, nw = min(h, max(1, round(ch * s))), min(w, max(1, round(cw * s)))
        if nh < self.min_size or nw < self.min_size:
            return None
        crop = img[:, y1:y2, x1:x2].float().div_(255.0).to(device=out.device, dtype=out.dtype)
        if (nh, nw) != (ch, cw):
            crop = F.interpolate(crop[None], size=(nh, nw), mode="bilinear", align_corners=False,
                                 antialias=True)[0].clamp_(0, 1)
        if do_flip:
            crop = crop.flip(-1)
        if self.color > 0:
            crop = TF.adjust_contrast(TF.adjust_brightness(crop, bright), contrast).clamp_(0, 1)
        y = int(torch.randint(0, h - nh + 1, (), generator=g))
        x = int(torch.randint(0, w - nw + 1, (), generator=g))
        out[:, y:y + nh, x:x + nw] = crop  # ACRST Eq. 6 with alpha = the crop rectangle
        return (x, y, x + nw, y + nh)

    # ------------------------------------------------------------------ the transform
    def __call__(self, image: torch.Tensor, target: Target, g: torch.Generator) -> tuple[torch.Tensor, Target, BoxMap]:
        """image float[3, H, W] in [0, 1], target boxes xyxy in its pixels -> (mixed image, merged
        Target, identity BoxMap). Unchanged inputs when N = 0 or no non-empty snapshot is published."""
        h, w = int(image.shape[-2]), int(image.shape[-1])
        identity = BoxMap(size=(h, w))
        lo, hi = self.n_range
        n = int(torch.randint(lo, hi + 1, (), generator=g))
        snap = self.reader.current() if n > 0 else None
        if snap is None or len(snap) == 0:
            return image, target, identity
        out = image.clone()
        rects: list[tuple[int, int, int, int]] = []
        labels: list[int] = []
        scores: list[float] = []
        pseudo: list[bool] = []
        for i in snap.sample(n, g).tolist():
            source = int(snap.source[i])
            rect = self._paste_one(out, source, int(snap.index[i]), snap.boxes[i], g)
            if rect is None:
                continue
            rects.append(rect)
            labels.append(int(snap.labels[i]))
            scores.append(float(snap.scores[i]))
            pseudo.append(source == 1)
        if not rects:
            return image, target, identity
        dev = target.boxes.device
        boxes = torch.tensor(rects, dtype=torch.float32, device=dev)
        pasted = Target(
            boxes,
            torch.tensor(labels, dtype=torch.int64, device=dev),
            None if target.scores is None else torch.tensor(scores, dtype=target.scores.dtype, device=dev),
            {"pasted": torch.ones(len(rects), dtype=torch.bool, device=dev),
             "pseudo": torch.tensor(pseudo, dtype=torch.bool, device=dev)},
            target.image_id,
        )
        # ACRST Eq. 7: merge, dropping boxes (nearly) hidden by what was pasted after them
        kept = remove_occluded(target, boxes, self.occlusion, self.occlusion_ignore)
        later = torch.cat([covered_fraction(boxes[j:j + 1], boxes[j + 1:]) for j in range(len(rects))])
        pasted = _occlusion_rule(pasted, later, self.occlusion, self.occlusion_ignore)
        return out, Target.cat([kept, pasted]), identity
