"""Mine the boxes nobody labelled: run a detector over a labelled COCO dataset and hand back
confident detections that do not duplicate ground truth, for human review (``minedet mine``).

The filters are Co-mining's co-generation rules (Wang et al., AAAI 2021, Alg. 1), applied at test
time to one exported detector instead of a Siamese branch; 1-3 are one pseudo-label rule
(:class:`~minedet.pseudo.semantics.PseudoRule`, :func:`mine_rule`):

1. score > ``score`` (tau), class-wise NMS at ``nms`` (theta1), at most ``max_dets`` per image;
2. a box whose IoU with a ground-truth box is > ``iou_gt`` (theta2) is dropped (crowd boxes count
   as ground truth here: a box over a crowd region is not a missing instance). ``gt_match="any"``
   (default) compares with labelled boxes of **every** class: a labelled object is not missing,
   whatever class the detector gives it — measured on digits, such second-class detections on
   labelled objects were most of the false positives of the same-class rule. ``gt_match="same"``
   is Co-mining's training rule (same class only).
   A box whose IoU with a box a reviewer rejected (the top-level ``"rejected"`` list that
   ``minedet data merge-reviewed`` writes, any class) is > ``iou_gt`` is dropped too: it was reviewed;
3. boxes under 1 px wide or high (after clipping to the image and rounding to 0.01 px) are dropped;
4. optional test-time agreement (``agree="color"`` or ``"flip"``): the detector also sees an
   augmented copy of the image (colour jitter drawn from a generator seeded by ``(seed, image id)``,
   or a horizontal flip whose detections are mapped back to the original frame). A mined box is
   kept only when the augmented view has a detection **of the same class, IoU >= agree_iou, whose
   own score is also above the threshold**; when several qualify the highest-scoring one is its
   partner. The kept box's reported score is the mean of its score and its partner's. A box is
   therefore mined at threshold t when ``min(s, s_partner) > t`` (its *gate*); agreement only ever
   removes boxes (the original view's pipeline is unchanged).

Every candidate down to the lowest threshold of interest is collected in **one** pass
(:attr:`MineResult.candidates` with their gates); the result at a higher threshold is a filter of
those (:meth:`MineResult.at_threshold`). This is exact: greedy NMS and top-k keep, among the boxes
above t, the same boxes whether lower-scoring boxes were present or not.

Boxes are ``[x1, y1, x2, y2]`` in the pixels of the image file (the frame of the COCO record).
"""

from __future__ import annotations

import copy
import html
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torchvision.ops import box_iou

from minedet.data.coco import CocoData
from minedet.data.datasets import coco_target, load_image
from minedet.data.transforms import BoxMap, ColorJitter
from minedet.errors import MinedetError
from minedet.pseudo.filters import drop_known, min_size, top_k
from minedet.pseudo.quality import QualityCounts, _greedy, _overlaps
from minedet.pseudo.semantics import PseudoRule
from minedet.structures import Target

__all__ = [
    "AGREE_MODES",
    "DEFAULT_THRESHOLDS",
    "DEFAULT_SCORE",
    "MineResult",
    "MineSettings",
    "ScoreProposal",
    "augmented_view",
    "gt_target",
    "mine_dataset",
    "mine_rule",
    "nothing_mined_hint",
    "pr_against_hidden",
    "propose_score",
    "propose_score_for",
    "recall_at_precision",
    "write_gallery",
]

AGREE_MODES = ("none", "color", "flip")
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.3 + 0.1 * i, 1) for i in range(7))  # 0.3 .. 0.9
MIN_BOX_SIDE = 1.0  # px; thinner mined boxes are not reviewable
_ROUND = 2  # decimals of mined box coordinates in the written JSON (and in the returned Targets)


@dataclass(frozen=True)
class MineSettings:
    """The filter settings a :class:`MineResult` was made with (``floor``: lowest collected gate)."""

    score: float
    nms: float
    iou_gt: float
    max_dets: int
    agree: str
    agree_iou: float
    floor: float
    seed: int
    gt_match: str = "any"
    part: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class MineResult:
    """What :func:`mine_dataset` found.

    Attributes:
        completed: the COCO dict to write: the source's top-level keys, images and categories as
            they were, every original annotation unchanged (same ids, same fields, same order),
            then one annotation per mined box: new ids ``max id + 1, ...``, ``"mined": true``,
            ``"score"`` (rounded to 4 decimals), ``"iscrowd": 0``, ``"area"`` = w * h.
        mined: image id -> Target of the boxes mined at ``settings.score`` (every image is a key;
            boxes xyxy in file-image pixels, labels 0..K-1, scores = reported score, flag
            ``pseudo`` set), sorted by descending score.
        candidates: image id -> every box that passed the filters down to ``settings.floor``.
        gates: image id -> float[N] per candidate, the value compared with a threshold
            (the score, or ``min(score, partner score)`` under agreement).
        settings: the filter settings.
        class_names: class names by label.
        n_original: image id -> number of original annotations of the image.
    """

    completed: dict
    mined: dict[int, Target]
    candidates: dict[int, Target]
    gates: dict[int, torch.Tensor]
    settings: MineSettings
    class_names: list[str]
    n_original: dict[int, int] = field(default_factory=dict)

    def at_threshold(self, t: float) -> dict[int, Target]:
        """The boxes mined at threshold ``t`` (gate > t); ``t`` must be >= ``settings.floor``."""
        if t < self.settings.floor - 1e-9:
            raise MinedetError(
                f"threshold {t:g} is below the lowest collected score {self.settings.floor:g}; "
                "mine again with a lower collect_down_to"
            )
        return {iid: c.select(self.gates[iid] > t) for iid, c in self.candidates.items()}

    @property
    def n_mined(self) -> int:
        return sum(len(t) for t in self.mined.values())

    def per_class(self) -> dict[str, int]:
        """Class name -> number of mined boxes (every class listed, label order)."""
        counts = [0] * len(self.class_names)
        for t in self.mined.values():
            for k in t.labels.tolist():
                counts[k] += 1
        return dict(zip(self.class_names, counts))

    def gains(self) -> list[tuple[int, int]]:
        """(image id, mined boxes) for images that gained boxes, most first (ties by image id)."""
        g = [(iid, len(t)) for iid, t in self.mined.items() if len(t)]
        return sorted(g, key=lambda x: (-x[1], x[0]))


# --------------------------------------------------------------------------------------------------
# helpers


def _check_unit(name: str, v: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= float(v) <= 1.0):
        raise MinedetError(f"{name} must be a number in [0, 1], got {v!r}")
    return float(v)


def _check_pos_int(name: str, v: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise MinedetError(f"{name} must be an integer >= 1, got {v!r}")
    return v


def gt_target(data: CocoData, image_id: int, *, rejected: bool = False) -> Target:
    """What mining counts as known on an image: every annotation as a Target (crowd regions included: a box over
    a crowd is not a missing instance), xyxy file-image pixels; ``rejected``: the boxes a reviewer rejected
    instead (the top-level ``"rejected"`` list). :func:`~minedet.data.datasets.coco_target` of those records."""
    anns = data.rejected_by_image.get(image_id, []) if rejected else None
    return coco_target(data, image_id, anns, crowd=True)


def _view_seed(seed: int, image_id: int) -> int:
    return (int(seed) * 1_000_003 + int(image_id) * 7919 + 4242) % (2**62)


def augmented_view(image: torch.Tensor, mode: str, *, image_id: int, seed: int = 0) -> tuple[torch.Tensor, BoxMap]:
    """The agreement view of ``image`` (float[3, H, W] in [0, 1]) and the map that carries boxes
    found in it back to the original frame.

    ``"color"``: Co-mining's colour jitter (0.8, 0.8, 0.8, 0.2), always applied, factors drawn from a
    generator seeded by ``(seed, image_id)`` (the same image always gets the same view);
    ``"flip"``: horizontal flip. The input is not modified.
    """
    h, w = int(image.shape[-2]), int(image.shape[-1])
    if mode == "color":
        g = torch.Generator().manual_seed(_view_seed(seed, image_id))
        out, _, _ = ColorJitter(0.8, 0.8, 0.8, 0.2, p=1.0)(image, Target.empty(image_id), g)
        return out, BoxMap(size=(h, w))
    if mode == "flip":
        return image.flip(-1), BoxMap(-1.0, 1.0, float(w), 0.0, (h, w))  # its own inverse
    raise MinedetError(f"agree must be one of {', '.join(AGREE_MODES)}, got {mode!r}")


def _round_clip(t: Target, w: int, h: int) -> Target:
    """Clip boxes to the W x H image and round to 0.01 px (so the JSON and the Target agree)."""
    if len(t) == 0:
        return t
    b = t.boxes.detach().cpu().double()
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    b = torch.round(b * 10**_ROUND) / 10**_ROUND
    return t.with_boxes(b.float())


def _agreement(t: Target, other: Target, iou: float) -> tuple[Target, torch.Tensor, torch.Tensor]:
    """(kept boxes, their gates min(s, p), their reported scores (s + p) / 2) for boxes of ``t``
    that have a same-class partner in ``other`` with IoU >= ``iou`` (partner = highest score)."""
    if len(t) == 0 or len(other) == 0:
        e = torch.zeros(0)
        return t.select(torch.zeros(len(t), dtype=torch.bool)), e, e
    m = box_iou(t.boxes.float(), other.boxes.float())
    ok = (m >= iou) & (t.labels[:, None] == other.labels[None, :])
    ps = torch.where(ok, other.scores[None, :].expand_as(m), torch.full_like(m, -1.0)).max(1).values
    keep = ok.any(1)
    s = t.scores[keep]
    p = ps[keep]
    kept = t.select(keep)
    return kept, torch.minimum(s, p), (s + p) / 2


# --------------------------------------------------------------------------------------------------
# mining


def mine_dataset(
    detector,
    data: CocoData,
    image_root: str | os.PathLike,
    *,
    score: float = 0.6,
    nms: float = 0.5,
    iou_gt: float = 0.4,
    max_dets: int = 100,
    agree: str = "none",
    agree_iou: float = 0.5,
    gt_match: str = "any",
    part: float | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = False,
    collect_down_to: float | None = None,
    seed: int = 0,
    source: Mapping | None = None,
    folds: Mapping[int, int] | None = None,
    detections: Mapping[int, Mapping[str, Any]] | None = None,
) -> MineResult:
    """Run ``detector`` over every image of ``data`` and mine the boxes its labels miss.

    Args:
        detector: a :class:`~minedet.models.detector.DetectorAdapter` over ``data``'s classes (label
            ``i`` = ``data.class_names[i]``); moved to ``device``, run in eval mode (mode restored).
        data: the labelled dataset (its normalised boxes are the ground truth the filter compares with).
        image_root: folder the ``file_name`` entries are relative to.
        score, nms, iou_gt, max_dets: the co-generation filter (module docstring).
        gt_match: ``"any"`` (drop boxes on a labelled box of any class) or ``"same"`` (same class only).
        part: also drop a box with at least this share of its own area on labelled boxes (any class:
            a shifted or partial box on a labelled object); None: off.
        agree: ``"none"``, ``"color"`` or ``"flip"`` test-time agreement; ``agree_iou`` its IoU.
        batch_size: images per forward pass.
        progress: a tqdm bar on stderr.
        collect_down_to: also collect candidates down to this threshold (e.g. the lowest threshold
            of a precision-recall sweep); the floor is ``min(score, collect_down_to)``.
        seed: seeds the colour view of each image (with its image id).
        source: the COCO dict as read from the file, whose annotations are copied untouched into
            ``completed`` (default ``data.raw``, i.e. the normalised records). Not mutated.
        folds: held-out mining (:mod:`minedet.data.folds`): image id -> fold, with ``detector`` a
            sequence of detectors, one per fold; each image is mined by its fold's detector (the one
            trained without that fold). None: one detector mines every image.
        detections: image id -> the detections the same detector (its fold's) made on that image, decoded as this call
            decodes them but down to a score at most its floor (:func:`calibration_detections` gives them, each with
            its ``image_id``): those images are not predicted again; the others are.

    Returns:
        :class:`MineResult` (``completed`` dict, ``mined`` per image, candidates and gates).

    Raises:
        MinedetError: bad settings, a detector for other classes, a missing or unreadable image, an
            image whose size differs from its record.
    """
    settings = _settings(score, nms, iou_gt, max_dets, agree, agree_iou, gt_match, collect_down_to, seed, part)
    batch_size = _check_pos_int("batch_size", batch_size)
    names = list(data.class_names)
    detectors = _fold_detectors(detector, folds, data)
    for d in detectors:
        _check_detector(d, names, data)
    root = Path(image_root)
    if not root.is_dir():
        raise MinedetError("image folder not found", file=str(root))
    candidates, gates = _collect(detectors, folds, data, root, settings, batch_size=batch_size, device=device,
                                 progress=progress, known=detections or {})
    n_original = {int(im["id"]): 0 for im in data.images}
    src = data.raw if source is None else source
    for a in src.get("annotations", []):
        if isinstance(a, Mapping) and a.get("image_id") in n_original:
            n_original[a["image_id"]] += 1
    result = MineResult({}, {}, candidates, gates, settings, names, n_original)
    mined = result.at_threshold(settings.score)
    completed = _completed(src, data, mined)
    return MineResult(completed, mined, candidates, gates, settings, names, n_original)


def _settings(score: float, nms: float, iou_gt: float, max_dets: int, agree: str, agree_iou: float, gt_match: str,
              collect_down_to: float | None, seed: int, part: float | None = None) -> MineSettings:
    """Check the filter settings of :func:`mine_dataset` (one MinedetError per bad value)."""
    score = _check_unit("score", score)
    iou_gt = _check_unit("iou_gt", iou_gt)
    nms, max_dets, agree, agree_iou = _check_decoding(nms, max_dets, agree, agree_iou)
    if gt_match not in ("any", "same"):
        raise MinedetError(f"gt_match must be any or same, got {gt_match!r}")
    floor = score if collect_down_to is None else min(score, _check_unit("collect_down_to", collect_down_to))
    if part is not None and _check_unit("part", part) == 0.0:
        raise MinedetError("part must be in (0, 1], got 0 (null turns it off)")
    part = None if part is None else float(part)
    return MineSettings(score, nms, iou_gt, max_dets, agree, agree_iou, floor, int(seed), gt_match, part)


def _check_decoding(nms: float, max_dets: int, agree: str, agree_iou: float) -> tuple[float, int, str, float]:
    """Check how detections are decoded and agreed (what :func:`mine_dataset` and :func:`calibration_detections`
    share); the values, normalised."""
    if agree not in AGREE_MODES:
        raise MinedetError(f"agree must be one of {', '.join(AGREE_MODES)}, got {agree!r}")
    return _check_unit("nms", nms), _check_pos_int("max_dets", max_dets), agree, _check_unit("agree_iou", agree_iou)


def _check_detector(detector, names: list[str], data: CocoData) -> None:
    """The detector must be over ``data``'s classes (same names when it knows them, same count)."""
    spec = getattr(detector, "spec", None)
    model_names = list(getattr(spec, "class_names", []) or [])
    if model_names and model_names != names:
        raise MinedetError(f"the model was trained on classes {model_names} but the data has {names}", file=str(data.path))
    if getattr(detector, "num_classes", len(names)) != len(names):
        raise MinedetError(
            f"the model has {detector.num_classes} classes but the data has {len(names)}", file=str(data.path)
        )


def _fold_detectors(detector, folds: Mapping[int, int] | None, data: CocoData) -> list:
    """The detectors by fold (one without folds); every image's fold must have a detector."""
    if folds is None:
        return [detector]
    detectors = list(detector) if isinstance(detector, Sequence) else []
    if not detectors:
        raise MinedetError("mining with folds needs one detector per fold (a list)")
    for rec in data.images:
        f = folds.get(int(rec["id"]))
        if not isinstance(f, int) or not 0 <= f < len(detectors):
            raise MinedetError(f"image id {rec['id']} has fold {f!r}, but there are {len(detectors)} detectors",
                               file=str(data.path))
    return detectors


def mine_rule(data: CocoData, settings: MineSettings) -> PseudoRule:
    """The filters of ``minedet mine`` (module docstring, 1-3) as the one pseudo-label rule over an image's detections
    (boxes xyxy in the file image's pixels): confident = scoring above ``settings.floor``, class-wise NMS at
    ``settings.nms``; then, in this order, at most ``settings.max_dets`` boxes, clipped to the image and rounded to
    0.01 px, at least :data:`MIN_BOX_SIDE` wide and high, and none the image's labelled boxes (crowd regions
    included) or its rejected boxes account for (IoU > ``settings.iou_gt``). No ignored band: a box is a candidate
    or nothing; the mined boxes are the candidates whose gate is above ``settings.score``."""

    def at_most(t: Target, image_id: int) -> Target:
        return top_k(t, settings.max_dets)

    def reviewable(t: Target, image_id: int) -> Target:
        rec = data.image(image_id)
        return min_size(_round_clip(t, int(rec["width"]), int(rec["height"])), MIN_BOX_SIDE)

    def unknown(t: Target, image_id: int) -> Target:  # a reviewer's rejected boxes are never offered again
        return drop_known(t, gt_target(data, image_id), settings.iou_gt, same_class=settings.gt_match == "same",
                          part=settings.part, rejected=gt_target(data, image_id, rejected=True),
                          rejected_iou=settings.iou_gt)

    return PseudoRule(tau=settings.floor, nms=settings.nms, regress=True, stages=(at_most, reviewable, unknown))


def _collect(detectors: list, folds: Mapping[int, int] | None, data: CocoData, root: Path, settings: MineSettings, *,
             batch_size: int, device: str | torch.device, progress: bool,
             known: Mapping[int, Mapping[str, Any]]) -> tuple[dict[int, Target], dict[int, torch.Tensor]]:
    """Run each fold's detector over its images in batches (one detector: every image; an image with ``known``
    detections is not predicted again); (candidates, gates) per image id, down to ``settings.floor`` (see
    :class:`MineResult`). Train/eval modes are restored."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(data.images), desc="mine", unit="img", leave=False, file=sys.stderr)
    candidates: dict[int, Target] = {}
    gates: dict[int, torch.Tensor] = {}
    rule = mine_rule(data, settings)
    try:
        for f, detector in enumerate(detectors):
            images = [r for r in data.images if folds is None or folds[int(r["id"])] == f]
            _collect_one(detector, images, data, root, settings, rule, candidates, gates, batch_size=batch_size,
                         device=device, bar=bar, known=known)
    finally:
        if bar is not None:
            bar.close()
    return candidates, gates


def _collect_one(detector, images: list[dict], data: CocoData, root: Path, settings: MineSettings, rule: PseudoRule,
                 candidates: dict[int, Target], gates: dict[int, torch.Tensor], *, batch_size: int,
                 device: str | torch.device, bar, known: Mapping[int, Mapping[str, Any]]) -> None:
    """One detector over ``images`` (those with ``known`` detections read, not predicted): its detections through
    ``rule`` (:func:`mine_rule`) and the agreement, if any; fills ``candidates`` (best first) and ``gates`` (see
    :func:`_collect`)."""
    decode_kw = dict(score_thresh=settings.floor, nms_thresh=settings.nms, detections_per_img=settings.max_dets)
    dev = torch.device(device)
    was = detector.training
    detector.to(dev).eval()
    try:
        for start in range(0, len(images), batch_size):
            recs = images[start : start + batch_size]
            ids = [int(r["id"]) for r in recs]
            missing = any(iid not in known for iid in ids)
            imgs = [_load(data, root, r) for r in recs] if missing or settings.agree != "none" else []
            with torch.no_grad():
                fresh = iter(detector.predict([im.to(dev) for im, iid in zip(imgs, ids) if iid not in known], **decode_kw)
                             if missing else [])
                others = _agreement_views(detector, imgs, recs, settings.agree, settings.seed, dev, decode_kw)
            dets = [_as_detections(known[iid]) if iid in known else next(fresh) for iid in ids]
            on_cpu = [Target(d.boxes.detach().cpu().float(), d.labels.detach().cpu(), d.scores.detach().cpu().float(),
                             image_id=iid) for d, iid in zip(dets, ids)]
            found = rule(on_cpu, ids).confident
            for k, iid in enumerate(ids):
                t, gate = _gated(found[k], settings, None if others is None else others[k])
                order = torch.argsort(t.scores, descending=True, stable=True) if len(t) else torch.zeros(0, dtype=torch.long)
                candidates[iid] = t.select(order)
                gates[iid] = gate[order].clone()
            if bar is not None:
                bar.update(len(recs))
    finally:
        detector.train(was)


def _as_detections(d: Mapping[str, Any]) -> Target:
    """A detections dict (``boxes``, ``labels``, ``scores``) as a :class:`Target`."""
    return Target(torch.as_tensor(d["boxes"], dtype=torch.float32).reshape(-1, 4),
                  torch.as_tensor(d["labels"], dtype=torch.long).reshape(-1),
                  torch.as_tensor(d["scores"], dtype=torch.float32).reshape(-1))


def _agreement_views(detector, imgs: list[torch.Tensor], recs: list[dict], agree: str, seed: int, dev: torch.device,
                     decode_kw: dict) -> list[Target] | None:
    """Detections on the ``agree`` views, mapped back to the original frame (None without agreement)."""
    if agree == "none":
        return None
    views = [augmented_view(im, agree, image_id=int(r["id"]), seed=seed) for im, r in zip(imgs, recs)]
    raw = detector.predict([v.to(dev) for v, _ in views], **decode_kw)
    return [Target(m.apply(o.boxes.cpu().float()), o.labels.cpu(), o.scores.cpu()) for o, (_, m) in zip(raw, views)]


def _gated(t: Target, settings: MineSettings, other: Target | None) -> tuple[Target, torch.Tensor]:
    """(candidates, their gates) of one image's boxes the rule kept: with an agreement view (``other``), the boxes
    it agrees with, reporting the mean score of the pair and gated by the lower; else every box, gated by its score."""
    if other is not None:
        kept, gate, reported = _agreement(t, other, settings.agree_iou)
        return replace(kept, scores=reported), gate
    return t, (t.scores if t.scores is not None else torch.zeros(0))


def _load(data: CocoData, root: Path, rec: dict) -> torch.Tensor:
    where = f"image id={rec['id']}"
    path = root / str(rec["file_name"]).replace("\\", "/")
    if not path.is_file():
        raise MinedetError(f"image file {str(path)!r} not found", file=str(data.path), record=where)
    img = load_image(path, root=root, file=str(data.path), record=where)
    h, w = int(img.shape[-2]), int(img.shape[-1])
    if (w, h) != (int(rec["width"]), int(rec["height"])):
        raise MinedetError(
            f"image file {str(path)!r} is {w}x{h} but the record says {rec['width']}x{rec['height']}",
            file=str(data.path),
            record=where,
        )
    return img


def _completed(source: Mapping, data: CocoData, mined: Mapping[int, Target]) -> dict:
    """The source dict with one new annotation per mined box (see :class:`MineResult`)."""
    out = copy.deepcopy(dict(source))
    anns = out.get("annotations", [])
    ids = [a["id"] for a in anns if isinstance(a, Mapping) and isinstance(a.get("id"), int) and not isinstance(a.get("id"), bool)]
    next_id = max(ids, default=0) + 1
    new = []
    for rec in data.images:
        iid = int(rec["id"])
        t = mined.get(iid)
        if t is None or len(t) == 0:
            continue
        scores = t.scores.tolist() if t.scores is not None else [1.0] * len(t)
        for box, label, s in zip(t.boxes.tolist(), t.labels.tolist(), scores):
            x1, y1, x2, y2 = (round(float(v), _ROUND) for v in box)
            w, h = round(x2 - x1, _ROUND), round(y2 - y1, _ROUND)
            new.append({
                "id": next_id,
                "image_id": iid,
                "category_id": data.cat_id_of(int(label)),
                "bbox": [x1, y1, w, h],
                "area": round(w * h, 4),
                "iscrowd": 0,
                "mined": True,
                "score": round(float(s), 4),
            })
            next_id += 1
    out["annotations"] = list(anns) + new
    return out


# --------------------------------------------------------------------------------------------------
# measurement against the hidden truth


def pr_against_hidden(
    mined: MineResult | Mapping[int, Target],
    hidden: CocoData,
    data: CocoData,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    iou: float = 0.5,
) -> list[dict[str, float]]:
    """Precision and recall of mined boxes against the hidden truth at each threshold.

    A mined box is correct when it matches a not-yet-matched hidden box of the same class with
    IoU >= ``iou`` (greedy by descending score, :func:`minedet.pseudo.quality.match`). Precision =
    correct / mined boxes, recall = matched hidden boxes / hidden boxes (non-crowd, on ``data``'s
    images); an undefined ratio is NaN.

    Args:
        mined: a :class:`MineResult` (thresholds act on its gates, so they must be >= its floor) or
            image id -> Target (thresholds act on the Target's scores; no scores = 1.0).
        hidden: the erased annotations (``OUT.hidden.json`` of ``minedet data sparsify``).
        data: the labelled dataset that was mined (its images are the ones measured).
        thresholds: the thresholds t; a box counts at t when its gate/score is > t.

    Returns:
        one dict per threshold: ``threshold, n_mined, tp, n_hidden, precision, recall, miou``.

    Raises:
        MinedetError: the hidden truth has other categories, or boxes on images ``data`` lacks.
    """
    if [(c["id"], c["name"]) for c in hidden.categories] != [(c["id"], c["name"]) for c in data.categories]:
        raise MinedetError(
            f"the hidden truth has categories {hidden.class_names} but the data has {data.class_names}", file=str(hidden.path)
        )
    ids = [int(im["id"]) for im in data.images]
    known = set(ids)
    for iid, anns in hidden.anns_by_image.items():
        if anns and iid not in known:
            raise MinedetError(
                "the hidden truth has boxes on an image the data does not have", file=str(hidden.path), record=f"image id={iid}"
            )
    if isinstance(mined, MineResult):
        boxes, gates = mined.candidates, mined.gates
        for t in thresholds:
            if t < mined.settings.floor - 1e-9:
                raise MinedetError(
                    f"threshold {t:g} is below the lowest collected score {mined.settings.floor:g}"
                )
    else:
        boxes = dict(mined)
        gates = {k: (v.scores if v.scores is not None else torch.ones(len(v))) for k, v in boxes.items()}
    truth = {iid: coco_target(hidden, iid) for iid in ids}
    rows = []
    for t in thresholds:
        q = QualityCounts()
        for iid in ids:
            m = boxes.get(iid)
            m = Target.empty(iid) if m is None else m.select(gates[iid].cpu() > t)
            q.add(m.to("cpu"), truth[iid], iou)
        rows.append({
            "threshold": float(t),
            "n_mined": q.n_pseudo,
            "tp": q.tp,
            "n_hidden": q.n_hidden,
            "precision": q.precision,
            "recall": q.recall,
            "miou": q.miou,
        })
    return rows


def recall_at_precision(rows: Sequence[Mapping[str, float]], min_precision: float = 0.9) -> dict[str, float] | None:
    """The best recall over thresholds whose precision is >= ``min_precision`` (the benchmark's
    target metric), as ``{"recall", "precision", "threshold", "min_precision"}``; None if no
    threshold reaches that precision. Ties go to the higher precision, then the lower threshold."""
    ok = [r for r in rows if _finite(r["precision"]) and r["precision"] >= min_precision and _finite(r["recall"])]
    if not ok:
        return None
    best = max(ok, key=lambda r: (r["recall"], r["precision"], -r["threshold"]))
    return {"recall": best["recall"], "precision": best["precision"], "threshold": best["threshold"],
            "min_precision": float(min_precision)}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# --------------------------------------------------------------------------------------------------
# the mining score, proposed from the model itself

DEFAULT_SCORE = 0.6  # the score when neither --score nor a proposal is there (Co-mining's tau)


@dataclass(frozen=True)
class ScoreProposal:
    """What :func:`propose_score` found.

    Attributes:
        score: the proposed threshold (mine boxes scoring above it), or None when the detections cannot support one.
        target_precision: the precision asked for.
        precision: the calibrated precision of detections on labelled boxes at the proposed score (NaN without one).
        precision_all: the share of all detections above the score that match a labelled box: a lower bound of their
            precision, since a detection of an unlabelled object counts as wrong (NaN without a score).
        n_region: detections that lie on a labelled box (see :func:`propose_score`); n_images: images they came from.
        curve: the calibration, low score to high: ``{"score", "precision", "n"}`` per step (``precision`` holds from
            ``score`` up to the next step's; non-decreasing).
        reason: one line saying why (printed by ``minedet mine``).
    """

    score: float | None
    target_precision: float
    precision: float
    precision_all: float
    n_region: int
    n_images: int
    curve: list[dict[str, float]]
    reason: str


def propose_score(detections: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]], *,
                  target_precision: float = 0.7, match_iou: float = 0.5, min_support: int = 20,
                  complete: bool = False) -> ScoreProposal:
    """The lowest score at which the model's detections are right ``target_precision`` of the time, measured where
    the labels can tell: on the labelled boxes, without any hidden truth.

    On sparse labels a detection that matches no labelled box may be a missing object, so precision against the
    labels is only a lower bound (reported as ``precision_all``). The truth is known where a detection lies on a
    labelled box (its centre inside one, or matching one): it is right when it matches a labelled box of its class
    with IoU >= ``match_iou`` (greedy by descending score, one detection per box), wrong otherwise (a duplicate, a
    shifted box, the wrong class). The calibration curve P(right | score) of those detections is fitted non-decreasing
    (isotonic regression, pool adjacent violators); the proposal is just below the lowest score whose fitted
    precision reaches ``target_precision``, rounded down to 0.01. Calibrate on images the model did not train on
    (held-out folds): on its own training images it has learnt the labelled boxes and looks better than it is.

    Args:
        detections: one dict per image: ``"boxes"`` (float[N, 4], ``[x1, y1, x2, y2]`` in image pixels),
            ``"scores"`` (float[N]), ``"labels"`` (int[N]); tensors, arrays or lists (torchvision's output format).
        targets: the labelled boxes of the same images, same order: ``"boxes"`` (float[M, 4], xyxy image pixels) and
            ``"labels"`` (int[M]), crowd boxes left out.
        target_precision: the precision asked of the detections at the proposed score, in (0, 1].
        match_iou: IoU at which a detection matches a labelled box.
        min_support: fewer detections on labelled boxes than this, in all or above the proposed score, propose
            nothing (``score`` None).
        complete: the targets are complete (a val set labelled in full): every detection is judged, one that matches
            no box counting as wrong, so the calibration covers detections on the background too (shadows, look-alikes),
            which a sparse set cannot judge.

    Returns:
        :class:`ScoreProposal`.
    """
    if isinstance(target_precision, bool) or not 0.0 < float(target_precision) <= 1.0:
        raise MinedetError(f"target precision must be in (0, 1], got {target_precision!r}")
    if len(detections) != len(targets):
        raise MinedetError(f"propose_score needs one target per image: {len(detections)} detections, {len(targets)} targets")
    per_image = [_on_labels(d, t, match_iou, complete) for d, t in zip(detections, targets)]
    scores = torch.cat([torch.zeros(0)] + [s for s, _, _ in per_image])
    right = torch.cat([torch.zeros(0, dtype=torch.bool)] + [m for _, m, _ in per_image])
    region = torch.cat([torch.zeros(0, dtype=torch.bool)] + [r for _, _, r in per_image])
    n_images = sum(1 for _, _, r in per_image if bool(r.any()))
    order = torch.argsort(scores[region], stable=True)
    s, fitted = scores[region][order], _isotonic(right[region][order].float())
    curve = [{"score": float(s[i]), "precision": float(fitted[i]), "n": int(n)} for i, n in _steps(fitted)]
    nan = float("nan")
    where = "on the complete set's images" if complete else "on labelled boxes"
    if len(s) < min_support:
        why = (f"only {len(s)} detections of the model lie {where} (at least {min_support} calibrate a score): "
               "label more boxes or train longer")
        return ScoreProposal(None, float(target_precision), nan, nan, len(s), n_images, curve, why)
    reach = torch.nonzero(fitted >= float(target_precision) - 1e-9).flatten()
    if len(reach) and len(s) - int(reach[0]) < min_support:
        why = (f"only {len(s) - int(reach[0])} detections {where} score where they are right "
               f"{float(target_precision):.0%} of the time (above {float(s[reach[0]]):.2f}; at least {min_support} "
               "calibrate a score): train longer, or lower --target-precision")
        return ScoreProposal(None, float(target_precision), nan, nan, len(s), n_images, curve, why)
    if not len(reach):
        why = (f"the model's detections {where} are right at most {float(fitted.max()):.0%} of the time "
               f"(above {curve[-1]['score']:.2f}), never {float(target_precision):.0%}: train longer"
               + (", or expect most mined boxes to be wrong" if complete else ""))
        return ScoreProposal(None, float(target_precision), nan, nan, len(s), n_images, curve, why)
    j = int(reach[0])
    score = _round_below(float(s[j]), float(s[j - 1]) if j else 0.0)
    above = scores > score
    lower = float(right[above].float().mean()) if bool(above.any()) else nan
    if complete:
        why = (f"of the {len(s)} detections on the complete set's {len(per_image)} images, those scoring above "
               f"{score:.2f} match a labelled box {float(fitted[j]):.0%} of the time or more (target "
               f"{float(target_precision):.0%}, IoU >= {match_iou:g})")
        return ScoreProposal(score, float(target_precision), float(fitted[j]), float(fitted[j]), len(s), n_images,
                             curve, why)
    why = (f"of the {len(s)} detections on labelled boxes ({n_images} images), those scoring above {score:.2f} match "
           f"their box {float(fitted[j]):.0%} of the time or more (target {float(target_precision):.0%}, IoU >= "
           f"{match_iou:g}); against the sparse labels {lower:.0%} of all detections above it match (a lower bound: "
           "unlabelled objects count as misses)")
    return ScoreProposal(score, float(target_precision), float(fitted[j]), lower, len(s), n_images, curve, why)


def _on_labels(det: Mapping[str, Any], target: Mapping[str, Any], match_iou: float, complete: bool = False):
    """One image's (scores float[N], right bool[N], judged bool[N]) of :func:`propose_score`: a detection is judged
    when it lies on a labelled box, or always when the labels are ``complete``."""
    boxes = torch.as_tensor(det["boxes"], dtype=torch.float32).reshape(-1, 4)
    d = Target(boxes, torch.as_tensor(det["labels"], dtype=torch.int64).reshape(-1),
               torch.as_tensor(det["scores"], dtype=torch.float32).reshape(-1))
    gt = Target(torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4),
                torch.as_tensor(target["labels"], dtype=torch.int64).reshape(-1))
    on, same = _overlaps(d, gt)
    right, _ = _greedy(d, on, same, match_iou)
    if complete:  # judged unless its centre lies in a crowd region (where the labels say nothing)
        crowd = torch.as_tensor(target.get("crowd", torch.zeros(0, 4)), dtype=torch.float32).reshape(-1, 4)
        return d.scores, right, right | ~_centre_inside(boxes, crowd)
    if len(gt) == 0:
        return d.scores, right, right
    return d.scores, right, right | _centre_inside(boxes, gt.boxes)


def _crowd_boxes(data: CocoData, image_id: int) -> torch.Tensor:
    """float[K, 4]: the crowd regions of an image, xyxy."""
    crowd = [a for a in data.anns_by_image.get(image_id, []) if a.get("iscrowd")]
    return coco_target(data, image_id, anns=crowd, crowd=True).boxes.reshape(-1, 4)


def _centre_inside(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """bool[N]: the centre of each box lies in one of ``regions`` (float[K, 4], xyxy)."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    g = regions
    inside = (cx[:, None] >= g[None, :, 0]) & (cx[:, None] <= g[None, :, 2]) & \
             (cy[:, None] >= g[None, :, 1]) & (cy[:, None] <= g[None, :, 3])
    return inside.any(1)


def _round_below(hi: float, lo: float) -> float:
    """A round threshold ``t`` with ``lo <= t < hi``: the largest multiple of 0.01 below ``hi``, else of 0.0001, else ``lo``."""
    for step in (100, 10000):
        t = math.floor(hi * step) / step
        t = t - 1 / step if t >= hi else t
        if t >= lo:
            return round(t, 4)
    return lo


def _isotonic(y: torch.Tensor) -> torch.Tensor:
    """The non-decreasing least-squares fit of ``y`` (float[N], in order): pool adjacent violators."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in y.tolist():
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, n2 = blocks.pop()
            m1, n1 = blocks[-1]
            blocks[-1] = [(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2]
    return torch.tensor([m for m, n in blocks for _ in range(int(n))], dtype=torch.float32)


def _steps(fitted: torch.Tensor) -> list[tuple[int, int]]:
    """(first index, length) of each run of equal values of ``fitted``."""
    values, out = fitted.tolist(), []
    for i, v in enumerate(values):
        if out and values[out[-1][0]] == v:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


def calibration_detections(detector, data: CocoData, image_root: str | os.PathLike, *,
                           folds: Mapping[int, int] | None = None, nms: float = 0.5, max_dets: int = 100,
                           floor: float = 0.05, batch_size: int = 8, device: str | torch.device = "cpu",
                           complete: bool = False, agree: str = "none", agree_iou: float = 0.5,
                           seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The detections and labels :func:`propose_score` and :func:`precision_recall` read: ``detector``'s detections
    (with ``folds``: one detector per fold, each on the images it did not train on) on the images of ``data`` that
    hold labelled boxes (with ``complete``, a set labelled in full such as a val set: every image), decoded down to
    ``floor`` with class-wise NMS at ``nms``, at most ``max_dets`` per image (as :func:`mine_dataset` decodes), each
    with its ``image_id`` (without agreement, :func:`mine_dataset` can take them instead of predicting again); and per
    image its labelled boxes (crowd boxes left out, given apart as ``"crowd"``).

    With ``agree`` (``"color"`` or ``"flip"``, ``agree_iou``, ``seed``: as :func:`mine_dataset` takes them) a
    detection is kept only where the augmented view agrees with it, its score being its gate ``min(score, partner
    score)``: the number mining compares with its threshold, so a score proposed from these holds for mining with
    the same agreement."""
    nms, max_dets, agree, agree_iou = _check_decoding(nms, max_dets, agree, agree_iou)
    floor = _check_unit("floor", floor)
    detectors = _fold_detectors(detector, folds, data)
    for d in detectors:
        _check_detector(d, list(data.class_names), data)
    root, dev = Path(image_root), torch.device(device)
    labelled = list(data.images) if complete else [
        r for r in data.images if any(not a.get("iscrowd") for a in data.anns_by_image.get(int(r["id"]), []))]
    dets: list[dict] = []
    targets: list[dict] = []
    for f, det in enumerate(detectors):
        recs = [r for r in labelled if folds is None or folds[int(r["id"])] == f]
        was = det.training
        det.to(dev).eval()
        try:
            for start in range(0, len(recs), batch_size):
                batch = recs[start : start + batch_size]
                imgs = [_load(data, root, r) for r in batch]
                decode_kw = dict(score_thresh=floor, nms_thresh=nms, detections_per_img=max_dets)
                with torch.no_grad():
                    out = det.predict([im.to(dev) for im in imgs], **decode_kw)
                    others = _agreement_views(det, imgs, batch, agree, seed, dev, decode_kw)
                for k, (r, o) in enumerate(zip(batch, out)):
                    t = Target(o.boxes.detach().cpu().float(), o.labels.detach().cpu(), o.scores.detach().cpu().float())
                    if others is not None:
                        kept, gate, _ = _agreement(t, others[k], agree_iou)
                        t = replace(kept, scores=gate)
                    dets.append({"boxes": t.boxes, "scores": t.scores, "labels": t.labels, "image_id": int(r["id"])})
                    gt = coco_target(data, int(r["id"]))  # crowd regions left out (given apart)
                    targets.append({"boxes": gt.boxes, "labels": gt.labels, "crowd": _crowd_boxes(data, int(r["id"]))})
        finally:
            det.train(was)
    return dets, targets


def propose_score_for(detector, data: CocoData, image_root: str | os.PathLike, *, target_precision: float = 0.7,
                      complete: bool = False, **detect) -> ScoreProposal:
    """:func:`propose_score` of ``detector`` over ``data`` (:func:`calibration_detections`, which ``detect``'s
    options reach: ``folds``, ``nms``, ``max_dets``, ``floor``, ``batch_size``, ``device``)."""
    dets, targets = calibration_detections(detector, data, image_root, complete=complete, **detect)
    return propose_score(dets, targets, target_precision=target_precision, complete=complete)


def precision_recall(detections: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]],
                     thresholds: Sequence[float], *, match_iou: float = 0.5) -> list[dict[str, float]]:
    """A detector's precision and recall on a set labelled in full, at each score threshold: every detection is
    judged (one whose centre lies in a ``"crowd"`` region aside), right when it matches a labelled box of its class
    with IoU >= ``match_iou`` (greedy by descending score, one detection per box). What mining can show at best: a
    model whose detections are right P of the time on complete images will not mine boxes right more often.

    Args:
        detections, targets: as :func:`propose_score` takes them (:func:`calibration_detections` with ``complete``).
        thresholds: the thresholds t; a detection counts at t when its score is > t.

    Returns:
        one dict per threshold: ``threshold, n, tp, n_boxes, precision, recall`` (an undefined ratio is NaN).
    """
    if len(detections) != len(targets):
        raise MinedetError(f"precision_recall needs one target per image: {len(detections)} detections, "
                           f"{len(targets)} targets")
    per_image = [_on_labels(d, t, match_iou, complete=True) for d, t in zip(detections, targets)]
    scores = torch.cat([torch.zeros(0)] + [s[j] for s, _, j in per_image])
    right = torch.cat([torch.zeros(0, dtype=torch.bool)] + [m[j] for _, m, j in per_image])
    n_boxes = sum(len(torch.as_tensor(t["boxes"]).reshape(-1, 4)) for t in targets)
    nan = float("nan")
    rows = []
    for t in thresholds:
        above = scores > float(t)
        n, tp = int(above.sum()), int(right[above].sum())
        rows.append({"threshold": float(t), "n": n, "tp": tp, "n_boxes": n_boxes,
                     "precision": tp / n if n else nan, "recall": tp / n_boxes if n_boxes else nan})
    return rows


def nothing_mined_hint(result: MineResult) -> str:
    """One line for a :class:`MineResult` that mined nothing: the best candidate it collected below its score and a
    ``--score`` that mines it, or, with no candidate down to its floor, train longer."""
    gates = torch.cat([torch.zeros(0)] + [g.detach().float().cpu() for g in result.gates.values()])
    s = result.settings
    if not len(gates):
        return (f"nothing mined: no detection off the labelled boxes scored above {s.floor:g}; train longer (or check "
                "that the model was trained for these images)")
    best = float(gates.max())
    t = math.floor(best * 20) / 20
    t = round(t - 0.05 if t >= best else t, 2)
    return (f"nothing mined: no detection off the labelled boxes scored above {s.score:g} (the best scored {best:.2f}); "
            f"try --score {t:g}, or train longer")


# --------------------------------------------------------------------------------------------------
# review gallery

GREEN = (40, 200, 40)
RED = (255, 40, 40)


def write_gallery(
    result: MineResult,
    data: CocoData,
    image_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    max_images: int = 24,
    extra_html: str = "",
) -> list[dict]:
    """Render the images that gained most (original boxes green, mined boxes red with class and
    score) as ``out_dir/NNN_image<ID>.png`` and a static ``out_dir/index.html`` listing them.

    Returns the listed entries (rank, image_id, file_name, png, original, mined), most gained first.
    ``extra_html`` (already-escaped HTML) is appended to the page (e.g. the summary tables).
    """
    from minedet.viz import BoxGroup, draw_boxes, save_png

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MinedetError("gallery path exists and is not a folder", file=str(out))
    root = Path(image_root)
    names = result.class_names
    entries = []
    for rank, (iid, gain) in enumerate(result.gains()[: max(0, int(max_images))], start=1):
        rec = data.image(iid)
        img = _load(data, root, rec)
        gt = gt_target(data, iid)
        m = result.mined[iid]
        groups = [  # labelled boxes last, so their outlines stay visible over the mined ones
            BoxGroup(m.boxes, [names[k] for k in m.labels.tolist()], m.scores, RED, 1),
            BoxGroup(gt.boxes, [names[k] for k in gt.labels.tolist()], None, GREEN, 1),
        ]
        png = f"{rank:03d}_image{iid}.png"
        save_png(draw_boxes(img, groups), out / png)
        entries.append({"rank": rank, "image_id": iid, "file_name": str(rec["file_name"]), "png": png,
                        "original": result.n_original.get(iid, len(gt)), "mined": gain})
    _write_index(out / "index.html", result, entries, extra_html)
    return entries


def _write_index(path: Path, result: MineResult, entries: list[dict], extra_html: str) -> None:
    """Fill the page template ``minedet/templates/gallery.html`` (``string.Template`` fields) and write it."""
    from importlib.resources import files
    from string import Template

    from minedet.io import write_text_atomic

    e = html.escape
    s = result.settings
    rows = "\n".join(
        f"<tr><td>{x['rank']}</td><td>{x['image_id']}</td><td>{e(x['file_name'])}</td>"
        f"<td>{x['original']}</td><td>{x['mined']}</td>"
        f"<td><a href=\"{e(x['png'])}\"><img src=\"{e(x['png'])}\" width=\"256\" alt=\"image {x['image_id']}\"></a></td></tr>"
        for x in entries
    )
    template = Template((files("minedet") / "templates" / "gallery.html").read_text(encoding="utf-8"))
    page = template.substitute(
        n_mined=result.n_mined, n_gained=len(result.gains()), n_images=len(result.mined), score=f"{s.score:g}",
        nms=f"{s.nms:g}", max_dets=s.max_dets, iou_gt=f"{s.iou_gt:g}", gt_match="the same" if s.gt_match == "same" else "any",
        agree=e(s.agree), green=GREEN, red=RED, n_entries=len(entries), rows=rows, extra_html=extra_html,
    )
    write_text_atomic(path, page)
